"""Predicted paths as a client holds them: the piecewise-linear path through a record's
knots, and the checks of what a record or a caller gives (horizons, positions, offsets,
wrapping sequence numbers).

Pure: numpy only. Shared by the path reckoner (`client_demo.reckoning`) and the send
policies (`client_demo.send_policy`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

CV_MAX_GAP = 1.0  # s: two samples further apart than this give no velocity
SEQ_MOD = 1 << 32  # pos seq wraps here (protocol: 0 … 2³²−1)
DEFAULT_HORIZONS = tuple(round(0.1 * k, 10) for k in range(1, 11))  # the server's default


def check_horizons(horizons: Sequence[float]) -> np.ndarray:
    """The horizons as a float64 array; ValueError unless they are a non-empty 1-D sequence
    of positive finite seconds, strictly ascending."""
    h = np.asarray(horizons, dtype=np.float64)
    if h.ndim != 1 or h.size == 0 or not np.isfinite(h).all() or h[0] <= 0:
        raise ValueError("horizons must be a non-empty 1-D sequence of positive finite seconds")
    if (np.diff(h) <= 0).any():
        raise ValueError("horizons must be strictly ascending")
    return h


def check_nonneg(name: str, value: float) -> float:
    """``value`` as a float; ValueError (naming ``name``) unless it is finite and >= 0."""
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


def as_vec3(p: object, name: str = "pos") -> np.ndarray:
    """(3,) float64 copy of p; (2,) means z = 0. ValueError (naming ``name``) for another
    shape or a non-finite value."""
    a = np.asarray(p, dtype=np.float64)
    if a.shape == (2,):
        a = np.append(a, 0.0)
    elif a.shape != (3,):
        raise ValueError(f"{name} must have shape (3,) or (2,), got {a.shape}")
    else:
        a = a.copy()
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return a


def as_offsets(offsets: object, nh: int) -> np.ndarray:
    """(nh, 3) float64 offsets; (nh, 2) means z offsets are 0 (a dims-2 frame). ValueError
    for another shape or a non-finite value."""
    o = np.asarray(offsets, dtype=np.float64)
    if o.ndim != 2 or o.shape[0] != nh or o.shape[1] not in (2, 3):
        raise ValueError(f"offsets must have shape ({nh}, 3) or ({nh}, 2), got {o.shape}")
    if o.shape[1] == 2:
        o = np.concatenate([o, np.zeros((nh, 1))], axis=1)
    if not np.isfinite(o).all():
        raise ValueError("offsets must be finite")
    return o


def seq_ge(a: int, b: int) -> bool:
    """a >= b in wrapping u32 sequence arithmetic."""
    return (a - b) % SEQ_MOD < SEQ_MOD // 2


class PredictedPath:
    """A predicted path (piecewise linear): knots (anchor, pos), (anchor + h_k, pos + off_k)."""

    __slots__ = ("anchor", "p", "v")

    def __init__(self, anchor: float, pos: np.ndarray, off: np.ndarray, dh: np.ndarray) -> None:
        self.anchor = anchor
        self.p = np.empty((len(off) + 1, 3))
        self.p[0] = pos
        self.p[1:] = pos + off
        self.v = np.diff(self.p, axis=0) / dh[:, None]  # (H, 3) segment velocities

    def at(self, t: float, knots: list[float], extrapolate: float) -> np.ndarray:
        """Position at t; ``knots`` = [0, *horizons]. May return a view: do not mutate."""
        tau = t - self.anchor
        if tau <= 0.0:
            return self.p[0]
        if tau >= knots[-1]:  # last segment's velocity for at most `extrapolate`, then hold
            return self.p[-1] + self.v[-1] * min(tau - knots[-1], extrapolate)
        k = bisect_right(knots, tau) - 1
        return self.p[k] + self.v[k] * (tau - knots[k])
