"""Training windows: tracks -> model inputs and residual targets over the prior -> windows.

The scenes are replayed through `server.core.features` exactly as the engine serves them;
the targets are the true future positions at the horizons as residuals over the Kalman
prior, normalised per horizon, masked where the future is undefined or out of reach.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from server.core import features as F
from server.core.features import FeatureConfig
from training.baselines import out_of_reach
from training.datasets import Track


@dataclass
class Windows:
    """Training windows: inputs, normalised residual targets and the loss mask."""

    x: np.ndarray  # (W, L, F) float32
    y: np.ndarray  # (W, L, H, 3) float32, 0 where masked
    m: np.ndarray  # (W, L, H) bool

    def __len__(self) -> int:
        return len(self.x)


def residuals(tracks: list[Track], fcfg: FeatureConfig, *, scene: bool = False, tick=0.05):
    """Per track: model inputs (N, F), raw residual targets in metres (N, H, 3), resets (N,).

    `scene=True` replays the tracks together as one room (`F.scene_features`: neighbours);
    otherwise each track is alone (`F.sequence_features`).
    """
    unit = dataclasses.replace(fcfg, out_scale=())
    ts, ps = [tr.t for tr in tracks], [tr.p for tr in tracks]
    sf = F.scene_features(ts, ps, unit, tick=tick) if scene else F.sequence_features(ts, ps, unit)
    h = np.asarray(fcfg.horizons)
    out = []
    for tr, x, o in zip(tracks, sf.x, sf.out, strict=True):
        truth = tr.truth_at((tr.t[:, None] + h[None, :]).ravel()).reshape(len(tr.t), len(h), 3)
        # A future beyond physical reach (a teleport ahead) is not a target: mask it.
        truth[out_of_reach(truth, o.p[:, None, :], h, fcfg.max_speed)] = np.nan
        out.append((x, F.encode_targets(truth, o, unit), o.reset))
    return out


def residual_scale(res: list[tuple]) -> tuple[float, ...]:
    """RMS horizontal residual of the CV prior per horizon (the target normalisation)."""
    r = np.concatenate([y for _, y, _ in res])[..., :2]
    rms = np.sqrt(np.nanmean((r**2).sum(-1), axis=0) / 2.0)
    return tuple(float(max(s, 1e-3)) for s in rms)


def make_windows(res: list[tuple], scale: np.ndarray, length: int, burn_in: int) -> Windows:
    """Cut each reset-delimited segment into windows of `length` steps (zero state at start)."""
    xs, ys, ms = [], [], []
    stride = max(1, length - burn_in)
    for x, y, reset in res:
        starts = [*np.flatnonzero(reset).tolist(), len(x)]
        for a, b in itertools.pairwise(starts):
            for s in range(a, max(a + 1, b - burn_in), stride):
                e = min(s + length, b)
                n = e - s
                xw = np.zeros((length, x.shape[1]), np.float32)
                yw = np.zeros((length, *y.shape[1:]), np.float32)
                mw = np.zeros((length, y.shape[1]), bool)
                xw[:n] = x[s:e]
                yn = y[s:e] / scale[None, :, None]
                valid = np.isfinite(yn).all(-1)
                if s > a:
                    valid[: min(burn_in, n)] = False
                yw[:n] = np.where(valid[..., None], yn, 0.0)
                mw[:n] = valid
                if mw.any():
                    xs.append(xw)
                    ys.append(yw)
                    ms.append(mw)
    if not xs:
        H = len(scale)
        return Windows(
            np.zeros((0, length, res[0][0].shape[1] if res else F.N_FEATURES), np.float32),
            np.zeros((0, length, H, 3), np.float32),
            np.zeros((0, length, H), bool),
        )
    return Windows(np.stack(xs), np.stack(ys), np.stack(ms))


def cv_error_by_horizon(w: Windows, scale: np.ndarray) -> np.ndarray:
    """Mean CV error (m) per horizon over a pool's supervised entries, shape (H,)."""
    d = np.sqrt(((w.y * scale[None, None, :, None]) ** 2).sum(-1))  # (W, L, H)
    return (d * w.m).sum((0, 1)) / np.maximum(w.m.sum((0, 1)), 1)
