"""Trajectory data: the `Track` type and the loaders for the seed CSV and ETH/UCY files.

Splits, windows and corruption of loaded tracks are in `training.track_ops`.

The data the presets and suites use ships in `training/data/` (gzip-compressed; see its
README for provenance and licences); every loader reads `.gz` and plain files alike.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
from scipy.interpolate import CubicSpline


@dataclass
class Track:
    """One avatar's observed samples plus, optionally, its dense ground truth.

    `t` (N,) float64 seconds, strictly increasing; `p` (N, 3) float64 metres (z up).
    `truth_t`/`truth_p` (M,) / (M, 3): dense true motion (the simulator's); when absent,
    the truth between samples is the cubic spline through the samples.
    """

    user: str
    t: np.ndarray
    p: np.ndarray
    truth_t: np.ndarray | None = None
    truth_p: np.ndarray | None = None
    _spline: CubicSpline | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.t)

    @property
    def start(self) -> float:
        return float(self.truth_t[0] if self.truth_t is not None else self.t[0])

    @property
    def end(self) -> float:
        return float(self.truth_t[-1] if self.truth_t is not None else self.t[-1])

    def observed(self, t: np.ndarray, p: np.ndarray) -> Track:
        """The same motion seen through other samples `t` (K,), `p` (K, 3): a new Track
        whose truth is this one's (its dense truth, or the spline through its samples)."""
        out = Track(self.user, t, p, self.truth_t, self.truth_p)
        if self.truth_t is None:
            if self._spline is None:
                self._spline = CubicSpline(self.t, self.p, axis=0)
            out._spline = self._spline
        return out

    def truth_at(self, times: np.ndarray) -> np.ndarray:
        """True positions (M, 3) at `times` (M,); NaN rows outside [start, end]."""
        times = np.asarray(times, dtype=np.float64)
        out = np.full((times.size, 3), np.nan)
        inside = (times >= self.start - 1e-9) & (times <= self.end + 1e-9)
        if not inside.any():
            return out
        ti = times[inside]
        if self.truth_t is not None:
            for k in range(3):
                out[inside, k] = np.interp(ti, self.truth_t, self.truth_p[:, k])
        elif len(self.t) == 1:
            out[inside] = self.p[0]
        else:
            if self._spline is None:
                self._spline = CubicSpline(self.t, self.p, axis=0)
            out[inside] = self._spline(ti)
        return out


# ---------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------

_GAP_EPS = 1e-9  # tolerance on max_gap, so a float-rounded 0.4000000001 s step is not a gap
_CSV_FIELDS = ("user_id", "timestamp", "x", "y", "z")
_DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M:%S.%f")

ETHUCY_SCENES: dict[str, list[str]] = {
    "eth": ["biwi_eth"],
    "hotel": ["biwi_hotel"],
    "univ": ["students001", "students003"],
    "zara1": ["crowds_zara01"],
    "zara2": ["crowds_zara02"],
}
"""Leave-one-scene-out benchmark scenes → recording file stems."""

ETHUCY_TRAIN_ONLY: list[str] = ["crowds_zara03", "uni_examples"]
"""Recordings used for training only, never as a held-out scene."""


DATA_DIR = Path(__file__).resolve().parent / "data"
"""The data shipped with the package: `ethucy/`, `realmotion/`, `seed_example.csv`."""


class DatasetError(ValueError):
    """A malformed data file; the message starts with `file:line:` (1-based line)."""


def _is_gz(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _open_text(path: Path, newline: str | None = None) -> IO[str]:
    """`path` opened as UTF-8 text (a BOM skipped), decompressed on the fly if it ends in `.gz`."""
    if _is_gz(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return path.open(encoding="utf-8-sig", newline=newline)


def _base(path: Path) -> Path:
    """`path` without a trailing `.gz` (`a/x.csv.gz` -> `a/x.csv`)."""
    return path.with_suffix("") if _is_gz(path) else path


def _listing(directory: Path, suffix: str) -> list[Path]:
    """The `*<suffix>` and `*<suffix>.gz` files of `directory`, sorted by name without
    `.gz`; where both `x<suffix>` and `x<suffix>.gz` exist, only the plain one."""
    plain = {f.name: f for f in directory.glob(f"*{suffix}") if f.is_file()}
    for f in directory.glob(f"*{suffix}.gz"):
        if f.is_file():
            plain.setdefault(f.name[:-3], f)
    return [plain[k] for k in sorted(plain)]


def data_file(path: str | Path) -> Path:
    """`path` if it is a file, else `path.gz` if that is one (the shipped data is compressed).

    Raises FileNotFoundError naming both when neither exists.
    """
    path = Path(path)
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    if gz.is_file():
        return gz
    raise FileNotFoundError(f"no such file: {path} (nor {gz.name})")


def data_root(name: str, env: str) -> Path:
    """A data directory: `$<env>` if set, else `DATA_DIR / name` (the copy in the repository).

    Raises FileNotFoundError, naming `env`, if `$<env>` is not a directory or, unset, the
    shipped copy is missing.
    """
    value = os.environ.get(env)
    if value:
        root = Path(value)
        if not root.is_dir():
            raise FileNotFoundError(f"{env}={value!r} is not a directory")
        return root
    root = DATA_DIR / name
    if not root.is_dir():
        raise FileNotFoundError(f"{name} data not found at {root}: set {env} to its directory")
    return root


def _err(path: str | Path, line: int, msg: str) -> DatasetError:
    return DatasetError(f"{path}:{line}: {msg}")


def _check_params(max_gap: float, min_len: int) -> None:
    if not max_gap > 0:
        raise ValueError(f"max_gap must be > 0, got {max_gap!r}")
    if min_len < 1:
        raise ValueError(f"min_len must be >= 1, got {min_len!r}")


def _finite_float(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _parse_time(s: str) -> float | None:
    v = _finite_float(s)
    if v is not None:
        return v
    for fmt in _DATETIME_FORMATS:
        try:
            dt = datetime.strptime(s, fmt)
        except ValueError:
            continue
        return dt.replace(tzinfo=UTC).timestamp()
    return None


def _segments(user: str, t: np.ndarray, p: np.ndarray, max_gap: float, min_len: int) -> list[Track]:
    """Split time-sorted, duplicate-free samples at gaps > max_gap; drop short segments.

    Kept segments are named `user`, `user#1`, `user#2`, … in time order.
    """
    cuts = np.flatnonzero(np.diff(t) > max_gap + _GAP_EPS) + 1
    bounds = [0, *cuts.tolist(), len(t)]
    out: list[Track] = []
    for a, b in itertools.pairwise(bounds):
        if b - a < min_len:
            continue
        name = user if not out else f"{user}#{len(out)}"
        out.append(Track(name, t[a:b].copy(), p[a:b].copy()))
    return out


def load_csv(path: str | Path, *, max_gap: float = 1.0, min_len: int = 2) -> list[Track]:
    """Load the seed CSV format: one row per sample, `user_id,timestamp,x,y[,z]`.

    `path` may be gzip-compressed (a name ending in `.gz`).

    - Optional header row: the first row, if its first field is `user_id` (any case)
      and its timestamp and x fields are not values.
    - Fields are stripped of surrounding spaces; blank lines are skipped.
    - `timestamp`: float seconds, or `YYYY-MM-DD HH:MM:SS[.fff]` read as UTC and
      converted to seconds since the Unix epoch.
    - Every row of a file must have the same column count, 4 (z = 0) or 5.
    - Rows may come in any order; samples are grouped by user and sorted by time.
      For a repeated (user, timestamp) the last row in file order wins.
    - A gap `dt > max_gap` seconds splits a user into Tracks `user`, `user#1`, …
      (numbered over kept segments); segments with fewer than `min_len` samples are dropped.

    Returns Tracks ordered by user (first appearance in the file), then time.
    Raises FileNotFoundError if `path` is missing, DatasetError (a ValueError) naming
    `file:line` for any malformed row (wrong column count, empty user, non-numeric,
    NaN/inf or unparseable values), ValueError for bad `max_gap`/`min_len`.
    """
    _check_params(max_gap, min_len)
    path = Path(path)
    rows: dict[str, dict[float, tuple[float, float, float]]] = {}
    ncols: int | None = None
    first = True
    with _open_text(path, newline="") as fh:
        reader = csv.reader(fh)
        for raw in reader:
            line = reader.line_num
            fields = [f.strip() for f in raw]
            if not any(fields):
                continue
            if first:
                first = False
                if (
                    fields[0].lower() == "user_id"
                    and len(fields) >= 3
                    and _parse_time(fields[1]) is None
                    and _finite_float(fields[2]) is None
                ):
                    if len(fields) not in (4, 5):
                        raise _err(path, line, f"header has {len(fields)} columns, expected 4 or 5")
                    ncols = len(fields)
                    continue
            if len(fields) not in (4, 5):
                raise _err(path, line, f"expected 4 or 5 columns, got {len(fields)}")
            if ncols is None:
                ncols = len(fields)
            elif len(fields) != ncols:
                raise _err(
                    path,
                    line,
                    f"expected {ncols} columns like the rest of the file, got {len(fields)}",
                )
            user = fields[0]
            if not user:
                raise _err(path, line, "empty user_id")
            t = _parse_time(fields[1])
            if t is None:
                raise _err(path, line, f"bad timestamp value {fields[1]!r}")
            xyz = [0.0, 0.0, 0.0]
            for k in range(2, len(fields)):
                v = _finite_float(fields[k])
                if v is None:
                    raise _err(path, line, f"bad {_CSV_FIELDS[k]} value {fields[k]!r}")
                xyz[k - 2] = v
            rows.setdefault(user, {})[t] = (xyz[0], xyz[1], xyz[2])

    tracks: list[Track] = []
    for user, samples in rows.items():
        t = np.fromiter(samples.keys(), dtype=np.float64, count=len(samples))
        p = np.array(list(samples.values()), dtype=np.float64).reshape(-1, 3)
        order = np.argsort(t, kind="stable")
        tracks += _segments(user, t[order], p[order], max_gap, min_len)
    return tracks


def _ped_name(pid: float) -> str:
    return str(int(pid)) if float(pid).is_integer() else repr(float(pid))


def _load_ethucy_file(path: Path, step: float, max_gap: float, min_len: int) -> list[Track]:
    data: list[list[float]] = []
    lines: list[int] = []
    names = ("frame_id", "ped_id", "x", "y")
    with _open_text(path) as fh:
        for lineno, text in enumerate(fh, 1):
            parts = text.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise _err(
                    path, lineno, f"expected 4 fields (frame_id ped_id x y), got {len(parts)}"
                )
            try:
                data.append([float(s) for s in parts])
            except ValueError:
                k = next(k for k, s in enumerate(parts) if _finite_float(s) is None)
                raise _err(path, lineno, f"bad {names[k]} value {parts[k]!r}") from None
            lines.append(lineno)
    if not data:
        return []
    a = np.asarray(data, dtype=np.float64)
    bad = ~np.isfinite(a)
    if bad.any():
        i, k = np.argwhere(bad)[0]
        raise _err(path, lines[i], f"bad {names[k]} value {a[i, k]!r}")

    # group by ped, sort by frame (stable, so file order is kept among duplicates)
    order = np.lexsort((a[:, 0], a[:, 1]))
    a = a[order]
    keep = np.ones(len(a), dtype=bool)
    keep[:-1] = (a[1:, 0] != a[:-1, 0]) | (a[1:, 1] != a[:-1, 1])  # last duplicate wins
    a = a[keep]
    t = a[:, 0] / 10.0 * step
    p = np.zeros((len(a), 3))
    p[:, :2] = a[:, 2:4]
    peds, starts = np.unique(a[:, 1], return_index=True)
    bounds = [*starts.tolist(), len(a)]
    tracks: list[Track] = []
    for pid, (s, e) in zip(peds, itertools.pairwise(bounds), strict=True):
        user = f"{_base(path).stem}:{_ped_name(pid)}"
        tracks += _segments(user, t[s:e], p[s:e], max_gap, min_len)
    return tracks


def load_ethucy(
    path: str | Path, *, step: float = 0.4, max_gap: float = 1.0, min_len: int = 2
) -> list[Track]:
    """Load ETH/UCY raw text: whitespace-separated `frame_id ped_id x y`, no header.

    `path` is a file (`*.txt`, or `*.txt.gz` compressed) or a directory (every `*.txt` and
    `*.txt.gz` in it, sorted by name; a plain file wins over its `.gz`). Time is
    `frame_id / 10 * step` seconds (frame ids step by 10 per `step`-second annotation),
    z = 0. Tracks are named `"<file stem>:<ped_id>"` (`1.0` → `1`; the stem of `x.txt.gz`
    is `x`), with `#k` suffixes for gap splits (see `load_csv`); a repeated (frame, ped)
    keeps the last row. Tracks are ordered by file, then ped id.

    Raises FileNotFoundError if `path` is missing or a directory holds no `*.txt[.gz]`,
    DatasetError naming `file:line` for a malformed row, ValueError for bad parameters.
    """
    _check_params(max_gap, min_len)
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step!r}")
    path = Path(path)
    if path.is_dir():
        files = _listing(path, ".txt")
        if not files:
            raise FileNotFoundError(f"no *.txt or *.txt.gz files in directory {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"no such file or directory: {path}")
    tracks: list[Track] = []
    for f in files:
        tracks += _load_ethucy_file(f, step, max_gap, min_len)
    return tracks


def load_tracks(path: str | Path, **kw: Any) -> list[Track]:
    """Load tracks from `path`, dispatching on its kind; `kw` go to the loader.

    `*.csv` → `load_csv`; `*.txt` → `load_ethucy` (either may end in `.gz`); a directory
    → every `*.csv[.gz]` in it (sorted, concatenated; user names are not made unique
    across files) if it holds any, else `load_ethucy` on the directory.
    Raises FileNotFoundError for a missing path, DatasetError (a ValueError) for an unknown suffix,
    plus whatever the loader raises (DatasetError, TypeError for foreign keywords).
    """
    path = Path(path)
    if path.is_dir():
        csvs = _listing(path, ".csv")
        if csvs:
            return [tr for f in csvs for tr in load_csv(f, **kw)]
        return load_ethucy(path, **kw)
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    suffix = _base(path).suffix.lower()
    if suffix == ".csv":
        return load_csv(path, **kw)
    if suffix == ".txt":
        return load_ethucy(path, **kw)
    raise DatasetError(
        f"{path}: unknown track file type {path.suffix!r} (expected .csv or .txt, or .gz of one)"
    )


def ethucy_root() -> Path:
    """The ETH/UCY data directory (holding `all_data/`, `train/`, `val/`).

    `$AVATAR_ETHUCY` if set, else the copy shipped in `training/data/ethucy` (files
    `*.txt.gz`; a directory of plain `*.txt` works too). Raises FileNotFoundError,
    naming AVATAR_ETHUCY, if the chosen directory does not exist.
    """
    return data_root("ethucy", "AVATAR_ETHUCY")


def load_ethucy_scene_files(
    split: str, stems: list[str], *, step: float = 0.4, max_gap: float = 1.0, min_len: int = 2
) -> list[Track]:
    """Load recordings `stems` (e.g. `ETHUCY_SCENES["univ"]`) for one split.

    `split` "train"/"val" → `ethucy_root()/<split>/<stem>_<split>.txt`;
    "all" → `ethucy_root()/all_data/<stem>.txt`; each, if absent, as `.txt.gz`
    (`data_file`). Raises ValueError for another split,
    FileNotFoundError for a missing root or file, DatasetError for a malformed row.
    """
    root = ethucy_root()
    if split in ("train", "val"):
        files = [root / split / f"{s}_{split}.txt" for s in stems]
    elif split == "all":
        files = [root / "all_data" / f"{s}.txt" for s in stems]
    else:
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    tracks: list[Track] = []
    for f in files:
        try:
            f = data_file(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"ETH/UCY file not found: {f} (nor {f.name}.gz)") from None
        tracks += load_ethucy(f, step=step, max_gap=max_gap, min_len=min_len)
    return tracks
