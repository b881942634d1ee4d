"""The network's batched step on the device: one copy in, one GRU step, the decode, one copy out.

`NetworkStep.run` packs a tick's features, the Kalman prior and the heading into one host
buffer (one host->device copy), gathers the rows' hidden states from the pool, steps the
network, decodes its gated residual to offsets on the device (the prior's path plus the
residual rotated to the world) and copies them back once. Rows whose new hidden state or
prediction is not finite are reset (zero state, the prior's path) and counted in
`nonfinite`: on the CPU after one check of the whole batch, on CUDA always on the device
(a check would be a second host sync per tick).
"""

from __future__ import annotations

import numpy as np
import torch

from server.core import features as F
from server.core.layout import FeatureConfig
from server.core.model import LoadedModel
from server.core.slots import HiddenStatePool


def state_shape(model: LoadedModel | None) -> tuple[int, int]:
    """(layers, state size) of a model's recurrent state; CV keeps a (1, 1) placeholder."""
    if model is None:
        return 1, 1
    return model.model.cfg.layers, model.model.cfg.state_size


def check_model(model: LoadedModel) -> None:
    """Raise ValueError unless the network fits the feature pipeline it is served with."""
    cfg = model.model.cfg
    fc = model.features
    if cfg.n_features != fc.n_features or cfg.n_horizons != fc.n_horizons:
        raise ValueError(
            f"model {model.version!r}: {cfg.n_features} features / {cfg.n_horizons} horizons, "
            f"the pipeline has {fc.n_features} / {fc.n_horizons}"
        )


class NetworkStep:
    """Host buffers, horizon and scale tensors for one engine's network step."""

    def __init__(
        self, device: torch.device, horizons: np.ndarray, cfg: FeatureConfig, capacity: int
    ) -> None:
        self.device = device
        self.horizons = horizons
        self._pinned = device.type == "cuda"
        self._h = torch.tensor(horizons, dtype=torch.float32, device=device)
        self._nonfinite = 0
        self._nonfinite_dev: torch.Tensor | None = None  # CUDA: counted on the device
        self.configure(cfg, capacity)

    def configure(self, cfg: FeatureConfig, capacity: int) -> None:
        """Serve a network with feature configuration `cfg` (a model swap)."""
        self._scale = torch.tensor(cfg.scales(), dtype=torch.float32, device=self.device)
        self._nf = cfg.n_features
        self.grow(capacity)

    def grow(self, capacity: int) -> None:
        """Host buffers for batches of up to `capacity` rows."""
        # Input: features | slot index | prior dp (3) | prior v (3) | heading (2), so a
        # tick needs exactly one host->device copy (slots < 2**24 are exact in float32).
        n_out = len(self.horizons) * 3
        self._xbuf = torch.zeros(capacity, self._nf + 9, pin_memory=self._pinned)
        self._ybuf = torch.zeros(capacity, n_out, pin_memory=self._pinned)

    @torch.inference_mode()
    def run(
        self, model: LoadedModel, pool: HiddenStatePool, slots: np.ndarray, out: F.StepOutput
    ) -> np.ndarray:
        """One step of `model` for `slots` (their features in `out`), their hidden states
        in `pool` updated; returns the decoded offsets (n, H, 3) float32."""
        n, nf = len(slots), self._nf
        xb = self._xbuf[:n]
        xn = xb.numpy()
        xn[:, :nf] = out.x
        xn[:, nf] = slots
        xn[:, nf + 1 : nf + 4] = out.prior_dp
        xn[:, nf + 4 : nf + 7] = out.prior_v
        xn[:, nf + 7 : nf + 9] = out.head
        xd = xb.to(self.device, non_blocking=self._pinned)  # the one host->device copy
        x = xd[:, :nf].contiguous()  # the GRU kernel is slower on a strided input
        idx = xd[:, nf].long()
        h = pool.gather(idx)  # (L, n, hidden)
        h = h * (1.0 - x[:, F.RESET])[None, :, None]  # reset rows start from a zero state
        y, h = model.model.step(x, h)  # y (n, H, 3) gated residual, heading frame
        # Decode on the device: the prior's path plus the residual rotated to the world.
        dp, v, hd = xd[:, nf + 1 : nf + 4], xd[:, nf + 4 : nf + 7], xd[:, nf + 7 : nf + 9]
        off = F.decode_offsets(y, dp, v, hd, self._h, self._scale)
        if self.device.type == "cpu":  # one check on the whole batch; rows only on failure
            # (a NaN or inf anywhere makes the sum one; an overflow of finite values only
            # costs the row check)
            if not bool(torch.isfinite(h.sum() + off.sum())):
                h, off = self._reset_nonfinite(h, off, dp, v)
        else:  # a check would be a second host sync per tick: repair on the device always
            h, off = self._reset_nonfinite(h, off, dp, v)
        pool.scatter(idx, h)  # never stores NaN/inf
        yb = self._ybuf[:n]
        if self._pinned:
            yb.copy_(off.reshape(n, -1), non_blocking=True)  # the one device->host copy
            torch.cuda.current_stream(self.device).synchronize()
        else:
            yb.copy_(off.reshape(n, -1))
        return yb.numpy().reshape(n, -1, 3).copy()

    def _reset_nonfinite(
        self, h: torch.Tensor, off: torch.Tensor, dp: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows with a NaN/inf hidden state or prediction: zero state, the prior's path.

        The model predicts a residual over the Kalman prior, so the honest fallback is
        the prior alone (a zero residual); the prior comes from finite, bounded samples,
        but a non-finite one falls back to zero offsets. Counts the rows in
        `nonfinite`.
        """
        bad = ~(torch.isfinite(h).all(dim=2).all(dim=0) & torch.isfinite(off).flatten(1).all(1))
        h = h.masked_fill(bad[None, :, None], 0.0)
        prior = dp[:, None, :] + v[:, None, :] * self._h[None, :, None]  # (n, H, 3)
        prior = prior.masked_fill(~torch.isfinite(prior).flatten(1).all(1)[:, None, None], 0.0)
        off = torch.where(bad[:, None, None], prior, off)
        if self.device.type == "cpu":
            self._nonfinite += int(bad.sum())
        elif self._nonfinite_dev is None:
            self._nonfinite_dev = bad.sum()
        else:
            self._nonfinite_dev += bad.sum()  # read (one sync) only when asked
        return h, off

    @property
    def nonfinite(self) -> int:
        """Rows reset because their hidden state or prediction was not finite (a read on
        CUDA is one host sync)."""
        dev = 0 if self._nonfinite_dev is None else int(self._nonfinite_dev.item())
        return self._nonfinite + dev

    @nonfinite.setter
    def nonfinite(self, count: int) -> None:
        self._nonfinite, self._nonfinite_dev = count, None
