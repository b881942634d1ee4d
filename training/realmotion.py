"""Real motion at stream rates (`training/data/realmotion/`), as scenes with fixed splits.

A *scene* is a set of tracks that share one clock and one space: what one server room
would hold. The model sees every scene as the engine would (`server.core.features.
scene_features`), so the neighbours it learns from are the ones it will be served.

Splits hold out whole recordings, never samples (neighbouring samples of one track are
nearly identical):

| set | what | rate | train | val | test |
|---|---|---|---|---|---|
| `juelich` | crowd runs in a corridor (PeTrack head tracking) | 16 Hz | 5 runs | `uo-070-180-180` | `uo-100-180-180`, `uo-180-180-095` |
| `soccer` | one football match, 11 outfield players (ZXY radio tracking) | 20 Hz | minutes 0-2 of every 5 | minute 3 of every 5 | minute 4 of every 5 |
| `sdd` | Stanford Drone Dataset scenes (pedestrians, cyclists) | 2.5 Hz | 22 scenes | 3 scenes | 5 scenes |

ETH/UCY (`training.datasets.load_ethucy_scene_files`) keeps its own train/val parts.
The data's provenance and licences (SDD: CC BY-NC-SA 3.0) are in that directory's README.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training import datasets as D
from training.datasets import Track
from training.track_ops import base_user

REAL_SETS: tuple[str, ...] = ("juelich", "soccer", "sdd")
SPLITS: tuple[str, ...] = ("train", "val", "test")
FILES = {
    "juelich": "juelich_uo_16hz.csv",
    "soccer": "tromso_soccer_20hz.csv",
    "sdd": "sdd_train.csv",
}
JUELICH_SPLIT = {
    "val": ("uo-070-180-180",),
    "test": ("uo-100-180-180", "uo-180-180-095"),
}
SDD_SPLIT = {
    "val": ("bookstore_3", "gates_3", "nexus_9"),
    "test": ("bookstore_2", "deathCircle_3", "gates_1", "hyang_5", "nexus_7"),
}
SOCCER_BLOCK = 60.0  # s; block b goes to train (b % 5 < 3), val (3) or test (4)


@dataclass
class Scene:
    """Tracks on one clock in one space (one room's worth): a recording or part of one."""

    name: str  # e.g. "juelich/uo-100-180-180"
    tracks: list[Track]

    def __len__(self) -> int:
        return len(self.tracks)


def realmotion_root() -> Path:
    """The real-motion data directory: `$AVATAR_REALMOTION` if set, else the copy shipped in
    `training/data/realmotion` (`FILES` gzip-compressed, `<name>.csv.gz`; plain `<name>.csv`
    files work too). Raises FileNotFoundError, naming AVATAR_REALMOTION, if the chosen
    directory does not exist."""
    return D.data_root("realmotion", "AVATAR_REALMOTION")


def recording_of(set_name: str, user: str) -> str:
    """The recording a track id belongs to: a Jülich run (`uo-100-180-180_17` ->
    `uo-100-180-180`), an SDD scene (`bookstore_0_100` -> `bookstore_0`), the match."""
    base = base_user(user)
    if set_name in ("juelich", "sdd"):
        return base.rsplit("_", 1)[0]
    return "match"


def split_of(set_name: str, recording: str) -> str:
    """Which split a Jülich run or SDD scene belongs to (see the module table)."""
    table = JUELICH_SPLIT if set_name == "juelich" else SDD_SPLIT
    for split in ("val", "test"):
        if recording in table[split]:
            return split
    return "train"


def _soccer_blocks(tracks: list[Track]) -> dict[int, list[Track]]:
    """Cut every track at SOCCER_BLOCK boundaries; tracks by block index."""
    out: dict[int, list[Track]] = defaultdict(list)
    for tr in tracks:
        b = np.floor(tr.t / SOCCER_BLOCK).astype(np.int64)
        for k in np.unique(b):
            sel = b == k
            if sel.sum() >= 2:
                out[int(k)].append(Track(f"{tr.user}@{k}", tr.t[sel].copy(), tr.p[sel].copy()))
    return out


def load_scenes(
    set_name: str, split: str, *, path: str | Path | None = None, max_gap: float = 1.0
) -> list[Scene]:
    """Scenes of one real set and split (`split` in SPLITS or "all").

    Reads `path` if given, else `realmotion_root() / FILES[set_name]` (or its `.gz`).
    Raises ValueError for an unknown set or split, FileNotFoundError when the data is
    missing, DatasetError (naming file:line) for a malformed row.
    """
    if set_name not in REAL_SETS:
        raise ValueError(f"unknown real set {set_name!r}; expected one of {REAL_SETS}")
    if split not in (*SPLITS, "all"):
        raise ValueError(f"split must be one of {SPLITS} or 'all', got {split!r}")
    path = Path(path) if path is not None else D.data_file(realmotion_root() / FILES[set_name])
    tracks = D.load_csv(path, max_gap=max_gap, min_len=2)
    if set_name == "soccer":
        blocks = _soccer_blocks(tracks)
        which = {0: "train", 1: "train", 2: "train", 3: "val", 4: "test"}
        return [
            Scene(f"soccer/min{k:02d}", blocks[k])
            for k in sorted(blocks)
            if split == "all" or which[k % 5] == split
        ]
    by_rec: dict[str, list[Track]] = defaultdict(list)
    for tr in tracks:
        by_rec[recording_of(set_name, tr.user)].append(tr)
    return [
        Scene(f"{set_name}/{rec}", trs)
        for rec, trs in sorted(by_rec.items())
        if split == "all" or split_of(set_name, rec) == split
    ]


def ethucy_scenes(split: str) -> list[Scene]:
    """ETH/UCY as scenes, one per recording file (`split` train|val|all)."""
    stems = [s for v in D.ETHUCY_SCENES.values() for s in v]
    if split != "all":
        stems += D.ETHUCY_TRAIN_ONLY
    return [Scene(f"ethucy/{s}", D.load_ethucy_scene_files(split, [s])) for s in stems]


def thin_to_ticks(scene: Scene, tick: float = 0.05) -> Scene:
    """What a server ticking every `tick` seconds steps: per track, the newest sample of
    each tick (ticks counted from the scene's first sample); the truth is kept."""
    if not scene.tracks:
        return scene
    t0 = min(float(tr.t[0]) for tr in scene.tracks)
    out = []
    for tr in scene.tracks:
        k = np.floor((tr.t - t0) / tick + 1e-9).astype(np.int64)
        keep = np.ones(len(k), dtype=bool)
        keep[:-1] = k[1:] != k[:-1]
        if keep.all():
            out.append(tr)
            continue
        out.append(tr.observed(tr.t[keep], tr.p[keep]))  # the full-rate truth stays
    return Scene(scene.name, out)
