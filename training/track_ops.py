"""What is done to loaded tracks: user-level splits, sample windows, corruption, mirroring.

`split_by_user` keeps all segments of a user (`user`, `user#1`, …) in one split;
`corrupt` degrades what a predictor observes (noise, timestamp jitter) and keeps the truth
it is scored on; `mirror` reflects a track across the x axis.
"""

from __future__ import annotations

import math
import re

import numpy as np

from training.datasets import Track

_SEGMENT_SUFFIX = re.compile(r"#\d+$")


def base_user(name: str) -> str:
    """The user a Track name belongs to: `name` without a trailing `#<k>` segment suffix."""
    return _SEGMENT_SUFFIX.sub("", name)


def split_by_user(
    tracks: list[Track], *, val_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0
) -> tuple[list[Track], list[Track], list[Track]]:
    """Split into (train, val, test) by base user, so all segments of a user stay together.

    Users (sorted, then shuffled with `seed`) are assigned `round(val_frac * n_users)` to
    val, `round(test_frac * n_users)` to test (halves round up), the rest to train.
    Deterministic given `seed` and the set of user names (not their order); each split
    keeps the input order. Raises ValueError unless 0 <= fracs and val_frac + test_frac <= 1.
    """
    if val_frac < 0 or test_frac < 0 or val_frac + test_frac > 1:
        raise ValueError(
            f"need 0 <= fracs and val_frac + test_frac <= 1, got {val_frac}, {test_frac}"
        )
    users = sorted({base_user(tr.user) for tr in tracks})
    n = len(users)
    perm = np.random.default_rng(seed).permutation(n)
    n_val = math.floor(val_frac * n + 0.5)
    n_test = min(math.floor(test_frac * n + 0.5), n - n_val)
    which = dict.fromkeys((users[i] for i in perm[:n_val]), 1)
    which.update(dict.fromkeys((users[i] for i in perm[n_val : n_val + n_test]), 2))
    out: tuple[list[Track], list[Track], list[Track]] = ([], [], [])
    for tr in tracks:
        out[which.get(base_user(tr.user), 0)].append(tr)
    return out


def windows(track: Track, length: int, stride: int) -> list[tuple[int, int]]:
    """Sample-index ranges `(start, start + length)` over `track`, starts 0, stride, 2·stride….

    Only full windows; empty if the track has fewer than `length` samples.
    Raises ValueError unless `length >= 1` and `stride >= 1`.
    """
    if length < 1 or stride < 1:
        raise ValueError(f"length and stride must be >= 1, got {length}, {stride}")
    return [(s, s + length) for s in range(0, len(track) - length + 1, stride)]


def corrupt(
    track: Track, *, noise: float = 0.0, jitter: float = 0.0, rng: np.random.Generator
) -> Track:
    """Corrupt what a predictor observes, never the truth it is scored on.

    Returns a new Track with the same reported times `t`; each position is re-read from
    the truth at `t + N(0, jitter)` (clipped to the track's span) plus N(0, noise) in x/y
    (and z), and the original truth (dense or spline) is kept. `noise` in metres,
    `jitter` in seconds, both >= 0. Raises ValueError for negative values.
    """
    if noise < 0 or jitter < 0:
        raise ValueError("noise and jitter must be >= 0")
    if noise == 0 and jitter == 0:
        return track
    if jitter > 0:
        tt = np.clip(track.t + rng.normal(0.0, jitter, len(track.t)), track.start, track.end)
        p = track.truth_at(tt)
    else:
        p = track.p.copy()
    if noise > 0:
        p = p + rng.normal(0.0, noise, p.shape) * (1.0, 1.0, float(np.ptp(track.p[:, 2]) > 0))
    return track.observed(track.t, p)  # the clean motion stays the truth


def mirror(track: Track) -> Track:
    """The same track reflected across the x axis (y -> -y), truth included."""
    flip = np.array([1.0, -1.0, 1.0])
    truth_p = None if track.truth_p is None else track.truth_p * flip
    return Track(track.user, track.t, track.p * flip, track.truth_t, truth_p)
