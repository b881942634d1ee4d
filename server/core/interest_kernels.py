"""Interest management's grid path compiled (numba): each viewer's view in one pass.

`server.core.interest.InterestGrid.query` computes each avatar's cell key and their order
by cell and hands the rest here. In `grid_views` each viewer's candidates are the avatars
of its 3 x 3 cell block (three sorted ranges: cells (cx + dx, cy - 1 .. cy + 1) have
consecutive keys), of which it keeps those within the radius, nearest first, ties by
lower index, itself first, at most `cap`: the definition the KD path shares, with the
same float64 distance (dx*dx + dy*dy, then + dz*dz, in that order). Plain loops only
(no numba sorts or searches): the kernel compiles in about a second.
"""

from __future__ import annotations

import numpy as np
from numba import njit

ROW = np.int64(1) << np.int64(32)  # key = cx * ROW + cy


@njit(cache=True, nogil=True)
def _lower_bound(a, x):
    """The first index of sorted `a` whose value is >= x."""
    lo, hi = 0, len(a)
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True, error_model="numpy")
def grid_views(cols, key, order, viewers, r2, cap, max_pairs):
    """CSR views (indptr (m + 1,), indices) of `viewers` (m,) int64 over the avatars whose
    coordinates are the rows of `cols` (2 or 3, n) float64 and cell keys `key` (n,) int64
    (`cx * ROW + cy`), `order` an order that sorts `key` (`np.argsort`'s). Returns ok False
    (and empty arrays) when the viewers' 3 x 3 blocks hold more than `max_pairs`
    candidates in all: the caller takes another path."""
    m, dims = len(viewers), cols.shape[0]
    skey = key[order]
    lo = np.empty((m, 3), np.int64)
    hi = np.empty((m, 3), np.int64)
    total = 0
    for i in range(m):
        for dx in range(3):
            base = key[viewers[i]] + (dx - 1) * ROW
            lo[i, dx] = _lower_bound(skey, base - 1)
            hi[i, dx] = _lower_bound(skey, base + 2)  # keys are integers
            total += hi[i, dx] - lo[i, dx]
    indptr = np.zeros(m + 1, np.int64)
    if total > max_pairs:
        return False, indptr, np.empty(0, np.int64)
    sp = np.empty((dims, len(key)))  # coordinates in grid order: ranges are contiguous
    for q in range(dims):
        for s in range(len(key)):
            sp[q, s] = cols[q, order[s]]
    out = np.empty(m * cap, np.int64)  # row i's view in out[i * cap:]
    cd = np.empty(len(key), np.float64)  # a viewer's candidates' distances (by grid order)
    best_d = np.empty(max(cap - 1, 1), np.float64)
    best_j = np.empty(max(cap - 1, 1), np.int64)
    room = cap - 1  # others in a view
    for i in range(m):
        me = viewers[i]
        found = 0  # the nearest others so far, by (distance, index)
        for dx in range(3 if room > 0 else 0):
            a, b = lo[i, dx], hi[i, dx]
            for s in range(a, b):  # the range's distances first, without branches
                t = cols[0, me] - sp[0, s]
                d2 = t * t
                for q in range(1, dims):
                    t = cols[q, me] - sp[q, s]
                    d2 += t * t
                cd[s] = d2
            for s in range(a, b):
                d2 = cd[s]
                if not d2 <= r2:
                    continue
                j = order[s]
                if j == me or (
                    found == room
                    and not (
                        d2 < best_d[room - 1] or (d2 == best_d[room - 1] and j < best_j[room - 1])
                    )
                ):
                    continue
                p = found if found < room else room - 1
                while p > 0 and (d2 < best_d[p - 1] or (d2 == best_d[p - 1] and j < best_j[p - 1])):
                    best_d[p] = best_d[p - 1]
                    best_j[p] = best_j[p - 1]
                    p -= 1
                best_d[p] = d2
                best_j[p] = j
                if found < room:
                    found += 1
        out[i * cap] = me
        for q in range(found):
            out[i * cap + 1 + q] = best_j[q]
        indptr[i + 1] = indptr[i] + 1 + found
    indices = np.empty(indptr[m], np.int64)
    for i in range(m):
        for q in range(indptr[i + 1] - indptr[i]):
            indices[indptr[i] + q] = out[i * cap + q]
    return True, indptr, indices


def warm_up() -> None:
    """Compile `grid_views` now (or load it from numba's cache: fast)."""
    two = np.arange(2, dtype=np.int64)
    grid_views(np.zeros((2, 2)), np.zeros(2, np.int64), two, two, 1.0, 2, np.inf)
