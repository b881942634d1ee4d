"""The seed prototype, reproduced: an LSTM on raw (x, y) sequences, MSE loss, Adam.

    python -m training.seed_lstm --out runs/seed_lstm.pt            # the documented default
    python -m training.seed_lstm --out /tmp/s.pt --data logs.csv --epochs 5 --seed 1

The project started from this prototype; it is kept as a named baseline so that the GRU can
be compared with where it came from. It is deliberately naive, and that is the point:

- Input: the last `obs` raw positions (x, y) of a track (sample counts, not seconds: the
  timestamps are ignored), normalised only by one global mean/std per axis computed on the
  training data and stored in the checkpoint. No velocities, no time deltas, no relative
  coordinates.
- Model: ``nn.LSTM(2, hidden, layers)``; a linear head on the last hidden state predicts the
  future (x, y) at each horizon, as absolute normalised coordinates.
- Training: MSE against the true positions ``Track.truth_at(t + h)``, Adam. Targets where the
  truth is undefined (past the track's end) or out of physical reach (a teleport ahead,
  `training.baselines.out_of_reach`) are masked out, as the evaluation leaves them out.
- Segments: a reset (`training.baselines.segment_ids`: a time gap or an impossible jump)
  restarts the window. Until `obs` samples of the current segment exist, the predictor
  holds the last position (``paths[k, i] = p[k]``); such samples are not trained on.

`--data` accepts what `training.data_specs.load_data` accepts (a CSV/ETH file or directory,
``ethucy:SPLIT[:SCENE]``, ``synthetic:N[:SEED[:SECONDS]]``), repeatable; default
``ethucy:train`` plus ``synthetic:160:1:90``. Validation is a 10 % split by user
(`training.track_ops.split_by_user`). The checkpoint (a plain dict, loadable with
``torch.load(weights_only=True)``) is written atomically; training is deterministic for a
given seed on one machine (single-threaded by default).

Use: ``pred = load_seed("runs/seed_lstm.pt")``; ``pred(t, p, horizons)`` is a path
predictor (see `training.baselines`), ``pred.many([(t, p), ...], horizons)`` batches tracks.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from server import cli
from server.core.layout import DEFAULT_HORIZONS
from server.core.model import atomic_torch_save
from training.baselines import out_of_reach, segment_ids
from training.data_specs import load_data
from training.datasets import Track
from training.track_ops import split_by_user

FORMAT = "seed-lstm"
VERSION = 1
DEFAULT_DATA: tuple[str, ...] = ("ethucy:train", "synthetic:160:1:90")
DEFAULT_EPOCHS = 12  # the documented default run (docs/performance.md has its time)


@dataclass
class SeedConfig:
    """Hyper-parameters of the seed prototype (and of its training run)."""

    obs: int = 8  # observed window, in samples (not seconds: the seed ignores timestamps)
    hidden: int = 64
    layers: int = 1
    epochs: int = DEFAULT_EPOCHS
    lr: float = 1e-3  # Adam
    batch: int = 256
    seed: int = 0
    horizons: tuple[float, ...] = DEFAULT_HORIZONS  # seconds
    val_frac: float = 0.1  # validation users (split by user)
    threads: int = 1  # torch threads while training (0: leave torch's default)

    def __post_init__(self) -> None:
        self.horizons = tuple(float(h) for h in self.horizons)

    def validate(self) -> None:
        """Raises ValueError for a config that cannot be trained."""
        if self.obs < 1 or self.hidden < 1 or self.layers < 1 or self.batch < 1:
            raise ValueError("obs, hidden, layers and batch must be >= 1")
        if self.epochs < 0 or self.threads < 0:
            raise ValueError("epochs and threads must be >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.horizons or not all(h > 0 and math.isfinite(h) for h in self.horizons):
            raise ValueError(f"horizons must be non-empty and > 0, got {self.horizons!r}")
        if not 0 <= self.val_frac < 1:
            raise ValueError(f"val_frac must be in [0, 1), got {self.val_frac!r}")


class SeedLSTM(nn.Module):
    """LSTM over (B, obs, 2) normalised positions → (B, H, 2) normalised future positions."""

    def __init__(self, hidden: int, layers: int, n_horizons: int) -> None:
        super().__init__()
        self.n_horizons = n_horizons
        self.lstm = nn.LSTM(2, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, 2 * n_horizons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1]).view(-1, self.n_horizons, 2)


# ---------------------------------------------------------------------------
# Windows
# ---------------------------------------------------------------------------


def window_ends(t: np.ndarray, p: np.ndarray, obs: int) -> np.ndarray:
    """Indices k (ascending) whose window ``k-obs+1 .. k`` lies inside k's segment.

    Every other sample is in the hold rule (fewer than `obs` samples of its segment so far).
    Causal: whether k qualifies depends on samples 0..k only. Raises ValueError on bad t/p.
    """
    seg = segment_ids(t, p)
    k = np.arange(obs - 1, seg.size)
    return k[seg[k] == seg[k - obs + 1]]


def _windows(pn: np.ndarray, ends: np.ndarray, obs: int) -> np.ndarray:
    """(M, obs, 2) windows of the normalised positions `pn` (N, 2) ending at `ends`."""
    if ends.size == 0:
        return np.zeros((0, obs, 2), np.float32)
    view = np.lib.stride_tricks.sliding_window_view(pn, obs, axis=0)  # (N-obs+1, 2, obs)
    return np.ascontiguousarray(view[ends - obs + 1].transpose(0, 2, 1), dtype=np.float32)


def _normalise(p: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((np.asarray(p, np.float64)[:, :2] - mean) / std).astype(np.float32)


def make_examples(
    tracks: Sequence[Track],
    obs: int,
    horizons: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training examples of every full window: x (M, obs, 2), y (M, H, 2), mask (M, H).

    y is the normalised truth at ``t[k] + h``; mask is False (and y 0) where that truth is
    undefined or out of physical reach.
    """
    h = np.asarray(horizons, np.float64)
    xs, ys, ms = [], [], []
    for tr in tracks:
        ends = window_ends(tr.t, tr.p, obs)
        if ends.size == 0:
            continue
        truth = tr.truth_at((tr.t[ends, None] + h[None, :]).ravel()).reshape(ends.size, h.size, 3)
        ok = np.isfinite(truth).all(axis=-1)
        with np.errstate(invalid="ignore"):
            ok &= ~out_of_reach(truth, tr.p[ends, None, :], h)
        y = np.where(ok[..., None], (truth[..., :2] - mean) / std, 0.0)
        xs.append(_windows(_normalise(tr.p, mean, std), ends, obs))
        ys.append(y.astype(np.float32))
        ms.append(ok)
    if not xs:
        return (
            np.zeros((0, obs, 2), np.float32),
            np.zeros((0, h.size, 2), np.float32),
            np.zeros((0, h.size), bool),
        )
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(ms)


# ---------------------------------------------------------------------------
# Predictor
# ---------------------------------------------------------------------------


class SeedLSTMPredictor:
    """The seed model as a path predictor: ``pred(t, p, horizons) -> (N, H, 3)``.

    Row k is the absolute position predicted at ``t[k] + horizons[i]`` from the raw (x, y) of
    samples ``k-obs+1 .. k`` (causal); z is the sample's z. Before `obs` samples of the
    current segment exist (after a reset, see `training.baselines.segment_ids`), the row
    holds ``p[k]``. `horizons` must equal the model's (ValueError otherwise).
    """

    def __init__(
        self,
        model: SeedLSTM,
        mean: Sequence[float],
        std: Sequence[float],
        config: SeedConfig,
        *,
        batch: int = 8192,
    ) -> None:
        self.model = model.eval()
        self.mean = np.asarray(mean, np.float64).reshape(2)
        self.std = np.asarray(std, np.float64).reshape(2)
        self.config = config
        self.batch = batch

    @property
    def horizons(self) -> np.ndarray:
        return np.asarray(self.config.horizons, np.float64)

    def _check_horizons(self, horizons) -> None:
        h = np.asarray(horizons, np.float64)
        if h.shape != self.horizons.shape or not np.allclose(h, self.horizons):
            raise ValueError(
                f"horizons {h.tolist()} differ from the model's {list(self.config.horizons)}"
            )

    def __call__(self, t: np.ndarray, p: np.ndarray, horizons: np.ndarray) -> np.ndarray:
        return self.many([(t, p)], horizons)[0]

    @torch.no_grad()
    def many(self, streams: Sequence[tuple[np.ndarray, np.ndarray]], horizons) -> list[np.ndarray]:
        """Paths (N_i, H, 3) float64 for each (t, p) stream, all windows in batched forwards."""
        self._check_horizons(horizons)
        obs, nh = self.config.obs, self.horizons.size
        outs, ends_all, xs = [], [], []
        for t, p in streams:
            p = np.asarray(p, np.float64)
            ends = window_ends(t, p, obs)  # validates t and p
            outs.append(np.repeat(p[:, None, :], nh, axis=1))  # hold, then overwrite x, y
            ends_all.append(ends)
            xs.append(_windows(_normalise(p, self.mean, self.std), ends, obs))
        x = np.concatenate(xs) if xs else np.zeros((0, obs, 2), np.float32)
        y = np.empty((len(x), nh, 2), np.float64)
        for a in range(0, len(x), self.batch):
            y[a : a + self.batch] = self.model(torch.from_numpy(x[a : a + self.batch])).numpy()
        y = y * self.std + self.mean
        a = 0
        for out, ends in zip(outs, ends_all, strict=True):
            out[ends, :, :2] = y[a : a + ends.size]
            a += ends.size
        return outs


# ---------------------------------------------------------------------------
# Checkpoint
# ---------------------------------------------------------------------------


def _config_dict(cfg: SeedConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["horizons"] = list(cfg.horizons)
    return d


def save_seed(pred: SeedLSTMPredictor, path: str | Path, extra: dict | None = None) -> None:
    """Write the checkpoint dict atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "config": _config_dict(pred.config),
        "mean": pred.mean.tolist(),
        "std": pred.std.tolist(),
        "state_dict": pred.model.state_dict(),
        **(extra or {}),
    }
    atomic_torch_save(ckpt, path)


def load_seed(path: str | Path, *, batch: int = 8192) -> SeedLSTMPredictor:
    """Load a checkpoint written by `save_seed` / the CLI. Raises ValueError if it is not one."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT!r} checkpoint")
    if ckpt.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported {FORMAT} version {ckpt.get('version')!r}")
    fields = {f.name for f in dataclasses.fields(SeedConfig)}
    cfg = SeedConfig(**{k: v for k, v in ckpt["config"].items() if k in fields})
    model = SeedLSTM(cfg.hidden, cfg.layers, len(cfg.horizons))
    model.load_state_dict(ckpt["state_dict"])
    return SeedLSTMPredictor(model, ckpt["mean"], ckpt["std"], cfg, batch=batch)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def _masked_mse(pred: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    w = m.unsqueeze(-1).to(pred.dtype)
    return ((pred - y) ** 2 * w).sum() / (2.0 * w.sum()).clamp_min(1.0)


@torch.no_grad()
def _evaluate_mse(model: SeedLSTM, x, y, m, batch: int = 8192) -> float:
    total, count = 0.0, 0.0
    for a in range(0, len(x), batch):
        w = m[a : a + batch].unsqueeze(-1).float()
        total += float((((model(x[a : a + batch]) - y[a : a + batch]) ** 2) * w).sum())
        count += 2.0 * float(w.sum())
    return total / count if count else float("nan")


def load_sources(specs: Sequence[str]) -> list[Track]:
    """Concatenated tracks of `--data` specs, via `training.data_specs.load_data`."""
    return [tr for spec in specs for tr in load_data(spec)]


def train_seed(
    cfg: SeedConfig,
    tracks: Sequence[Track] | None = None,
    *,
    data: Sequence[str] = DEFAULT_DATA,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> tuple[SeedLSTMPredictor, dict]:
    """Train the seed model on `tracks` (default: loaded from the `data` specs).

    Users are split into train/validation by `split_by_user(val_frac=cfg.val_frac,
    seed=cfg.seed)`. Returns the predictor (final epoch) and a summary; writes the
    checkpoint to `out` if given. Raises ValueError if there is no training window.
    """
    cfg.validate()
    t0 = time.time()
    say = log or (lambda _s: None)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from_specs = tracks is None
    if tracks is None:
        tracks = load_sources(data)
    train_tr, val_tr, _ = split_by_user(
        list(tracks), val_frac=cfg.val_frac, test_frac=0.0, seed=cfg.seed
    )
    if not train_tr:
        raise ValueError("no training tracks")
    xy = np.concatenate([tr.p[:, :2] for tr in train_tr])
    mean = xy.mean(axis=0)
    std = np.maximum(xy.std(axis=0), 1e-3)
    h = np.asarray(cfg.horizons, np.float64)
    x, y, m = (torch.from_numpy(a) for a in make_examples(train_tr, cfg.obs, h, mean, std))
    vx, vy, vm = (torch.from_numpy(a) for a in make_examples(val_tr, cfg.obs, h, mean, std))
    if len(x) == 0:
        raise ValueError(f"no training window of {cfg.obs} samples")
    say(
        f"seed-lstm: {len(train_tr)} train / {len(val_tr)} val tracks, "
        f"{len(x)} / {len(vx)} windows, mean {np.round(mean, 3).tolist()}, "
        f"std {np.round(std, 3).tolist()}"
    )

    model = SeedLSTM(cfg.hidden, cfg.layers, h.size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.from_numpy(rng.permutation(len(x)))
        total, n = 0.0, 0
        for a in range(0, len(x), cfg.batch):
            idx = perm[a : a + cfg.batch]
            loss = _masked_mse(model(x[idx]), y[idx], m[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            n += len(idx)
        model.eval()
        val = _evaluate_mse(model, vx, vy, vm)
        history.append({"epoch": epoch, "train_mse": total / n, "val_mse": val})
        say(
            f"epoch {epoch}/{cfg.epochs}: train mse {total / n:.5f}, val mse {val:.5f} "
            f"({time.time() - t0:.1f} s)"
        )
    model.eval()
    pred = SeedLSTMPredictor(model, mean, std, cfg)
    summary = {
        "train_windows": len(x),
        "val_windows": len(vx),
        "val_mse": history[-1]["val_mse"] if history else _evaluate_mse(model, vx, vy, vm),
        "history": history,
        "seconds": round(time.time() - t0, 1),
    }
    if out is not None:
        extra = {
            "data": list(data) if from_specs else None,
            "val_mse": float(summary["val_mse"]),
            "history": history,
        }
        save_seed(pred, out, extra)
    return pred, summary


@cli.command("python -m training.seed_lstm")
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.seed_lstm",
        description="Train the seed prototype (LSTM on raw x, y; MSE; Adam) as a baseline.",
    )
    d = SeedConfig()
    ap.add_argument("--out", default="runs/seed_lstm.pt", help="checkpoint path (%(default)s)")
    ap.add_argument(
        "--data",
        action="append",
        help="a CSV/ETH file or dir, ethucy:SPLIT[:SCENE] or synthetic:N[:SEED[:S]]; "
        f"repeatable (default: {' + '.join(DEFAULT_DATA)})",
    )
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--obs", type=int, default=d.obs, help="observed samples (%(default)s)")
    ap.add_argument("--hidden", type=int, default=d.hidden)
    ap.add_argument("--layers", type=int, default=d.layers)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--threads", type=int, default=d.threads, help="0: torch's default")
    a = ap.parse_args(argv)
    cfg = SeedConfig(
        obs=a.obs,
        hidden=a.hidden,
        layers=a.layers,
        epochs=a.epochs,
        lr=a.lr,
        batch=a.batch,
        seed=a.seed,
        threads=a.threads,
    )
    data = tuple(a.data) if a.data else DEFAULT_DATA
    with cli.user_errors(ValueError, "--data", "see --help for --data"):
        _, s = train_seed(cfg, data=data, out=a.out)
    print(
        f"wrote {a.out}: val mse {s['val_mse']:.5f} (normalised units), "
        f"{s['train_windows']} train windows, {cfg.epochs} epochs, {s['seconds']} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
