"""The `--data` specs of the evaluation and the seed LSTM, read into scenes or tracks.

A spec is a CSV/ETH file or directory, `ethucy:SPLIT[:SCENE]` (SPLIT train|val|all, SCENE
eth|hotel|univ|zara1|zara2), `real:SET[:SPLIT]` (SET juelich|soccer|sdd, SPLIT test
(default)|val|train|all: `training.realmotion`) or `synthetic:N[:SEED[:SECONDS]]`
(held-out simulated users; training uses seeds 0, 1000, …, 9000 and 10000).
"""

from __future__ import annotations

from pathlib import Path

from training import datasets as D
from training import realmotion as RM
from training.datasets import Track
from training.realmotion import Scene


def load_scenes(spec: str) -> list[Scene]:
    """Scenes for a `--data` spec (see the module docstring). Raises ValueError/FileNotFoundError."""
    if spec.startswith("synthetic"):
        from training.simulate import simulate

        parts = spec.split(":")[1:]
        n = int(parts[0]) if parts else 40
        seed = int(parts[1]) if len(parts) > 1 else 777
        dur = float(parts[2]) if len(parts) > 2 else 60.0
        if seed == 10_000 or (seed % 1000 == 0 and seed < 10_000):
            raise ValueError("seeds 0, 1000, …, 9000 and 10000 are the training/validation users")
        return [Scene(f"synthetic/{seed}", simulate(n, dur, seed=seed))]
    if spec.startswith("ethucy"):
        parts = spec.split(":")[1:]
        split = parts[0] if parts else "val"
        if len(parts) > 1:
            if parts[1] not in D.ETHUCY_SCENES:
                raise ValueError(f"unknown ETH/UCY scene {parts[1]!r}")
            stems = D.ETHUCY_SCENES[parts[1]]
        else:
            stems = [s for v in D.ETHUCY_SCENES.values() for s in v]
            if split != "all":
                stems += D.ETHUCY_TRAIN_ONLY
        return [Scene(f"ethucy/{s}", D.load_ethucy_scene_files(split, [s])) for s in stems]
    if spec.startswith("real:"):
        parts = spec.split(":")[1:]
        return RM.load_scenes(parts[0], parts[1] if len(parts) > 1 else "test")
    return [Scene(Path(spec).stem, D.load_tracks(spec))]


def load_data(spec: str) -> list[Track]:
    """All tracks of a `--data` spec (scenes flattened). Raises as `load_scenes`."""
    return [tr for sc in load_scenes(spec) for tr in sc.tracks]
