"""The neighbour search compiled (numba): the grid's cells, then per avatar its k nearest.

`server.core.neighbours` computes each candidate's cell key and hands the rest here:

- `sort_cells` turns `np.argsort` of the keys into `np.lexsort`'s order by key, then
  distance to the cell's centre, then index (the per-cell cap keeps the first ones);
- `blocks` finds the occupied cells, each one's 3x3 block as ranges into the sorted
  candidates (a merge per direction, no search), and each avatar's cell;
- `nearest` takes the avatars cell by cell: a cell's block is gathered once, then for each
  of its avatars every candidate is moved to the avatar's sample time and its distance
  taken in one branch-free (vectorised) loop, the k nearest kept (nearest first, the
  earlier candidate first on a tie) and their features written.

The float32 arithmetic is the array code's that came before, operation for operation:
the output is bit-identical to it. The cells are shared out over numba's threads in
parts of about equal rows (`numba.set_num_threads`; the engine leaves it at the
machine's cores): a step runs one at a time, on the loop, in the step thread or in the
step worker.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

PARTS = 64  # the cells in at most this many parts of about equal rows, over the threads
ROWS = 64  # and at least this many rows per part


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def nearest(
    tab, lo, cnt, ecell, efound, elx, ely, eage, rows, evx, evy, hc, hs,
    k, R, max_gap, pos_scale, v_scale, clip, nb_vx, nb_on, width, out,
):  # fmt: skip
    """Fill `out` (n, width * k) float32, zeroed, with each avatar's k nearest.

    `tab` (6, m) float32: the candidates' cell-local x, y, velocity x, y, time since the
    tick's first sample, row id, in grid order; `lo`, `cnt` (cells, 9): each cell's 3x3
    block as ranges of `tab`; per avatar `ecell` its cell (valid where `efound`), `elx`,
    `ely` its cell-local position (float32), `eage` its sample's time (float32, same
    origin), `rows` its row id, `evx`, `evy` its velocity, `hc`, `hs` its heading.
    """
    n, ncell = len(rows), lo.shape[0]
    mg = np.float32(max_gap)
    rr = np.float32(R * R)
    cl = np.float32(clip)
    far = np.float32(np.inf)
    # The avatars grouped by cell (a counting sort): a cell's block is read once for all.
    start = np.zeros(ncell + 1, np.int64)
    for i in range(n):
        if efound[i]:
            start[ecell[i] + 1] += 1
    for c in range(ncell):
        start[c + 1] += start[c]
    at = start[:ncell].copy()
    by_cell = np.empty(start[ncell], np.int64)
    for i in range(n):
        if efound[i]:
            by_cell[at[ecell[i]]] = i
            at[ecell[i]] += 1
    widest = 1
    for c in range(ncell):
        w = 0
        for cell9 in range(9):  # (not `cnt[c].sum()`: a parallel region per cell)
            w += cnt[c, cell9]
        widest = max(widest, w)
    parts = max(1, min(PARTS, start[ncell] // ROWS))
    edges = np.empty(parts + 1, np.int64)
    edges[parts] = ncell
    first = 0  # the parts' first cells (a name of its own: `c` is private to each part)
    for q in range(parts):
        while first < ncell and start[first] * parts < start[ncell] * q:
            first += 1
        edges[q] = first
    for part in prange(parts):  # each part with its scratch
        bx = np.empty(widest, np.float32)  # the block's candidates, in grid order
        by = np.empty(widest, np.float32)
        bvx = np.empty(widest, np.float32)
        bvy = np.empty(widest, np.float32)
        bage = np.empty(widest, np.float32)
        bid = np.empty(widest, np.float32)
        d2s = np.empty(widest, np.float32)
        rxs = np.empty(widest, np.float32)
        rys = np.empty(widest, np.float32)
        best_d = np.empty(k, np.float32)
        best_j = np.empty(k, np.int64)
        for c in range(edges[part], edges[part + 1]):
            if start[c] == start[c + 1]:
                continue
            m = 0
            for cell9 in range(9):
                dxr = np.float32((cell9 // 3 - 1) * R)
                dyr = np.float32((cell9 % 3 - 1) * R)
                s0 = lo[c, cell9]
                for j in range(s0, s0 + cnt[c, cell9]):
                    bx[m] = tab[0, j] + dxr
                    by[m] = tab[1, j] + dyr
                    bvx[m] = tab[2, j]
                    bvy[m] = tab[3, j]
                    bage[m] = tab[4, j]
                    bid[m] = tab[5, j]
                    m += 1
            for r in range(start[c], start[c + 1]):
                i = by_cell[r]
                ea, ex, ey, me = eage[i], elx[i], ely[i], np.float32(rows[i])  # rows < 2**24
                for j in range(m):  # branch-free (vectorised): every candidate's distance
                    age = ea - bage[j]
                    rx = bx[j] + bvx[j] * age - ex
                    ry = by[j] + bvy[j] * age - ey
                    rxs[j] = rx
                    rys[j] = ry
                    keep = (abs(age) <= mg) & (bid[j] != me)
                    d2s[j] = rx * rx + ry * ry if keep else far
                # the k nearest in block order: within the radius, then strictly nearer than
                # the k-th so far (a tie keeps the earlier candidate ahead)
                found, lim = 0, rr
                for j in range(m):
                    d2 = d2s[j]
                    if not d2 <= lim:
                        continue
                    p = found if found < k else k - 1
                    while p > 0 and d2 < best_d[p - 1]:
                        best_d[p] = best_d[p - 1]
                        best_j[p] = best_j[p - 1]
                        p -= 1
                    best_d[p] = d2
                    best_j[p] = j
                    if found < k:
                        found += 1
                    if found == k:
                        lim = np.nextafter(best_d[k - 1], -far)
                for s in range(found):
                    j = best_j[s]
                    px = np.float64(rxs[j])
                    py = np.float64(rys[j])
                    vx = bvx[j] - evx[i]
                    vy = bvy[j] - evy[i]
                    base = s * width
                    f = (
                        np.float32((hc[i] * px + hs[i] * py) / pos_scale),
                        np.float32((-hs[i] * px + hc[i] * py) / pos_scale),
                        np.float32((hc[i] * vx + hs[i] * vy) / v_scale),
                        np.float32((-hs[i] * vx + hc[i] * vy) / v_scale),
                    )
                    for q in range(2):
                        out[i, base + q] = min(max(f[q], -cl), cl)
                        out[i, base + nb_vx + q] = min(max(f[2 + q], -cl), cl)
                    out[i, base + nb_on] = 1.0


@njit(cache=True, nogil=True)
def sort_cells(order, key, d2):
    """Turn `order`, any order that sorts `key` (`np.argsort`'s), into `np.lexsort((d2,
    key))`'s: each run of one key by `d2`, then by index. In place; `d2` finite."""
    n, s = len(order), 0
    while s < n:
        e = s + 1
        while e < n and key[order[e]] == key[order[s]]:
            e += 1
        if e - s > 32:
            _merge_sort(order[s:e], d2, np.empty(e - s, order.dtype))
        else:
            for i in range(s + 1, e):
                x, j = order[i], i
                while j > s and (
                    d2[order[j - 1]] > d2[x] or (d2[order[j - 1]] == d2[x] and order[j - 1] > x)
                ):
                    order[j] = order[j - 1]
                    j -= 1
                order[j] = x
        s = e


@njit(cache=True, nogil=True)
def _merge_sort(run, d2, tmp):
    """Sort `run` (row ids) by `d2`, then id, in place (bottom-up merges; `tmp` as long)."""
    n, width, src, dst, swapped = len(run), 1, run, tmp, False
    while width < n:
        for lo in range(0, n, 2 * width):
            mid, hi = min(lo + width, n), min(lo + 2 * width, n)
            i, j = lo, mid
            for k in range(lo, hi):
                if j < hi and (
                    i >= mid
                    or d2[src[j]] < d2[src[i]]
                    or (d2[src[j]] == d2[src[i]] and src[j] < src[i])
                ):
                    dst[k] = src[j]
                    j += 1
                else:
                    dst[k] = src[i]
                    i += 1
        src, dst, swapped = dst, src, not swapped
        width *= 2
    if swapped:
        run[:] = tmp


@njit(cache=True, nogil=True)
def blocks(skey, cap, shift, cand, size, rows, ekey):
    """The grid's cells from the sorted keys `skey` of the candidates `cand` (row ids of
    a state of `size` rows): per cell its 3x3 block as ranges (lo, cnt: (cells, 9), at
    most `cap` each; the key of the cell dx, dy away is key + dx << shift + dy), and per
    avatar of `rows` (keys `ekey`) its cell and whether there is one."""
    n = len(skey)
    first = np.empty(n + 1, np.int64)
    nc = 0
    for s in range(n):
        if s == 0 or skey[s] != skey[s - 1]:
            first[nc] = s
            nc += 1
    first[nc] = n
    cells = np.empty(nc, np.int64)
    cell_of = np.full(size, -1, np.int64)  # a candidate's cell
    for c in range(nc):
        cells[c] = skey[first[c]]
        for s in range(first[c], first[c + 1]):
            cell_of[cand[s]] = c
    lo = np.zeros((nc, 9), np.int64)
    cnt = np.zeros((nc, 9), np.int64)
    for cell9 in range(9):  # the keys one step away ascend with the cells': one merge
        step = ((cell9 // 3 - 1) << shift) + (cell9 % 3 - 1)
        at = 0
        for c in range(nc):
            q = cells[c] + step
            while at < nc and cells[at] < q:
                at += 1
            if at < nc and cells[at] == q:
                lo[c, cell9] = first[at]
                cnt[c, cell9] = min(first[at + 1] - first[at], cap)
    m = len(rows)
    ecell = np.zeros(m, np.int64)
    efound = np.zeros(m, np.bool_)
    for i in range(m):
        c = cell_of[rows[i]]
        if c < 0:  # not a candidate itself: its cell may still hold some
            at = np.searchsorted(cells, ekey[i])
            c = at if at < nc and cells[at] == ekey[i] else -1
        if c >= 0:
            ecell[i] = c
            efound[i] = True
    return lo, cnt, ecell, efound
