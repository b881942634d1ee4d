"""The training run's configuration: `TrainConfig`, its TOML presets and its command line.

Every field of `TrainConfig` is a flag of `python -m training.train` (`--synthetic-avatars`,
`--no-mirror`, …); a preset (`training/presets/<name>.toml`, table `[train]`) sets fields
first and flags override them.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from server.core.layout import DEFAULT_HORIZONS
from training import realmotion as RM

PRESETS = Path(__file__).parent / "presets"


@dataclass
class TrainConfig:
    out: str = "runs/model.pt"
    name: str = "gru"
    # data
    synthetic_avatars: int = 160  # simulated training avatars (0 = none)
    synthetic_duration: float = 90.0  # seconds each
    synthetic_val_avatars: int = 40  # held-out simulated avatars (other seed)
    synthetic_rooms: int = 1  # training avatars split over this many simulated worlds (rooms)
    ethucy: bool = True  # ETH/UCY train parts for training, val parts for validation
    real: list[str] = field(default_factory=lambda: list(RM.REAL_SETS))  # realmotion sets
    data: list[str] = field(default_factory=list)  # own CSV/ETH files or dirs (90/10 by user)
    noisy_copies: int = 1  # corrupted copies of every training track
    noisy_ethucy: bool = True  # also corrupt copies of the ETH/UCY tracks
    noise_max: float = 0.03  # m, position noise std drawn per copy from U(0, noise_max)
    jitter_max: float = 0.025  # s, timestamp jitter std drawn per copy from U(0, jitter_max)
    mirror: bool = True  # random y -> -y per window
    balance: bool = False  # same number of batches from every data pool per epoch
    weights: str = ""  # with balance: "synthetic=2,sdd=0.5" (share per source; others 1)
    pool_per_recording: bool = False  # one data pool per ETH/UCY recording (with balance)
    horizons: tuple[float, ...] = DEFAULT_HORIZONS
    tick: float = 0.05  # s; the server's tick: scenes are replayed (and thinned) at it
    neighbours: int = 4  # k nearest avatars as model input (0 = none)
    nb_radius: float = 8.0  # m; neighbours farther away are not seen (also the grid cell)
    nb_cell_cap: int = 8  # neighbour candidates read per grid cell
    kalman_q: float = 0.0  # the prior's q (m^2/s^3); 0 = tune on the training data
    kalman_r: float = 0.0  # the prior's r (m); 0 = tune on the training data
    window: int = 96  # steps per training window
    burn_in: int = 16  # steps without loss when a window starts mid-segment
    # model
    hidden: int = 64
    layers: int = 1
    head_hidden: int = 64
    cell: str = "gru"  # gru | lstm
    gate: bool = True  # per-horizon gate on the residual
    # optimisation
    epochs: int = 30
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 5
    clip: float = 1.0
    max_batches: int = 0  # per epoch, 0 = all
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch threads, 0 = torch's default


def load_preset(name_or_path: str) -> dict:
    """Read a TOML preset (a name under training/presets or a path). Raises FileNotFoundError."""
    p = Path(name_or_path)
    if not p.exists():
        p = PRESETS / f"{name_or_path}.toml"
    with open(p, "rb") as f:
        return tomllib.load(f).get("train", {})


def build_parser() -> argparse.ArgumentParser:
    """The `python -m training.train` parser: `--preset` and one flag per `TrainConfig` field
    (default None: a flag not given leaves the preset's or the field's default)."""
    ap = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train the avatar motion GRU; writes the best checkpoint atomically.",
    )
    ap.add_argument("--preset", help="TOML preset name (training/presets) or path")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool",):
            ap.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "data":
            ap.add_argument(flag, action="append", default=None, help="CSV/ETH file or dir")
        elif f.name == "real":
            ap.add_argument(
                flag,
                type=lambda s: [v for v in s.split(",") if v],
                default=None,
                help=f"comma-separated realmotion sets ({','.join(RM.REAL_SETS)}) or none",
            )
        elif f.name == "horizons":
            ap.add_argument(
                flag, type=lambda s: tuple(float(v) for v in s.split(",")), default=None
            )
        else:
            typ = {"int": int, "float": float, "str": str}[str(f.type)]
            ap.add_argument(flag, type=typ, default=None, help=f"default {f.default}")
    return ap


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """The configuration of a command line: the preset's fields, then the flags given.
    Exits (argparse) on a bad flag; raises FileNotFoundError for a missing preset and
    TypeError for an unknown preset field."""
    args = build_parser().parse_args(argv)
    values = load_preset(args.preset) if args.preset else {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    if "horizons" in values:
        values["horizons"] = tuple(values["horizons"])
    return TrainConfig(**values)
