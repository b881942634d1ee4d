"""The downlink rule's distances compiled (numba): each avatar's newest sample, and its new
path up to the lookahead, against the path its viewers last got.

`server.core.downlink.DownlinkReckoner.due` hands the rows to check here; `off_path`
does per row what `path_at`, `error` and `ahead` do for all rows at once with numpy, in
the same float64 operations in the same order (the result is the same bit for bit, so a
record is due exactly when it was before; tests hold it to the numpy path).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _at(sp, so, knots, extrapolate, d, c):
    """Coordinate c of the path (position sp (3,), offsets so (H, 3) float32) at elapsed
    time d: `downlink.path_at` for one path."""
    H = len(knots) - 1
    d = min(max(d, 0.0), knots[H] + extrapolate)
    j = 0
    while j <= H and knots[j] <= d:
        j += 1
    seg = min(max(j - 1, 0), H - 1)
    w = (d - knots[seg]) / (knots[seg + 1] - knots[seg])
    a = 0.0 if seg == 0 else np.float64(so[seg - 1, c])
    b = np.float64(so[seg, c])
    return sp[c] + a + w * (b - a)


@njit(cache=True, nogil=True, inline="always")
def _max(a, b):
    """np.maximum of two floats (NaN if either is)."""
    if a != a or b != b:
        return np.nan
    return a if a >= b else b


@njit(cache=True, nogil=True, error_model="numpy")
def off_path(slots, anchor, pos, off, sent_anchor, sent_pos, sent_off, knots, extrapolate, ahead):
    """Metres (n,) each row is off its sent path: the sample `pos` (n, 3) at `anchor` (n,)
    against the sent path then, and (where `ahead` lists horizon indices and `off` (n, H, 3)
    is given) the new path at those horizons against the sent one, the largest of them.
    `slots` (n,) index the sent arrays; `knots` is (0, horizons...)."""
    n = len(slots)
    err = np.empty(n)
    for i in range(n):
        s = slots[i]
        sp, so = sent_pos[s], sent_off[s]
        age = anchor[i] - sent_anchor[s]
        acc = 0.0
        for c in range(3):
            t = pos[i, c] - _at(sp, so, knots, extrapolate, age, c)
            acc += t * t
        e = math.sqrt(acc)
        if len(ahead):  # np.maximum and .max: a NaN anywhere gives NaN (never due)
            top = -np.inf
            for q in range(len(ahead)):
                k = ahead[q]
                acc = 0.0
                for c in range(3):
                    t = pos[i, c] + np.float64(off[i, k, c])
                    t -= _at(sp, so, knots, extrapolate, age + knots[k + 1], c)
                    acc += t * t
                top = _max(top, math.sqrt(acc))
            e = _max(e, top)
        err[i] = e
    return err


def warm_up() -> None:
    """Compile `off_path` now (or load it from numba's cache: fast)."""
    one, z = np.zeros(1, np.int64), np.zeros((1, 2, 3), np.float32)
    off_path(one, np.ones(1), np.zeros((1, 3)), z, np.zeros(1), np.zeros((1, 3)), z,
             np.array([0.0, 0.1, 0.2]), 0.5, one)  # fmt: skip
