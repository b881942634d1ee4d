"""The neighbour search's per-avatar work compiled (numba): candidates, top-k, features.

`server.core.neighbours` builds the grid with numpy (candidates sorted by cell, each
cell's 3x3 block as ranges into them) and hands each avatar's block to `nearest`, which
does what the array code did for every (avatar, candidate) pair at once: the candidate
moved to the avatar's sample time, its distance, the k nearest kept (nearest first, the
earlier candidate first on a tie), their features written. The float32 arithmetic is the
array code's, operation for operation. The rows are shared out over numba's threads in
chunks (`numba.set_num_threads`; the engine leaves it at the machine's cores): a step runs
one at a time, on the loop, in the step thread or in the step worker.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

CHUNK = 256  # rows a thread takes at a time


@njit(cache=True, nogil=True, parallel=True)
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
    n = len(rows)
    mg = np.float32(max_gap)
    rr = np.float32(R * R)
    cl = np.float32(clip)
    chunks = (n + CHUNK - 1) // CHUNK
    for ch in prange(chunks):  # rows in chunks over the threads, each with its scratch
        best_d = np.empty(k, np.float32)
        best_x = np.empty(k, np.float32)
        best_y = np.empty(k, np.float32)
        best_vx = np.empty(k, np.float32)
        best_vy = np.empty(k, np.float32)
        for i in range(ch * CHUNK, min(n, (ch + 1) * CHUNK)):
            if not efound[i]:
                continue
            c = ecell[i]
            found = 0
            for cell9 in range(9):
                dxr = np.float32((cell9 // 3 - 1) * R)
                dyr = np.float32((cell9 % 3 - 1) * R)
                start = lo[c, cell9]
                for j in range(start, start + cnt[c, cell9]):
                    age = eage[i] - tab[4, j]
                    if tab[5, j] == rows[i] or not abs(age) <= mg:
                        continue
                    if age > mg:
                        age = mg
                    elif age < -mg:
                        age = -mg
                    rx = tab[0, j] + dxr + tab[2, j] * age - elx[i]
                    ry = tab[1, j] + dyr + tab[3, j] * age - ely[i]
                    d2 = rx * rx + ry * ry
                    if not d2 <= rr:
                        continue
                    # insert into the k best so far (strictly nearer goes first: a tie keeps
                    # the earlier candidate ahead)
                    if found == k and not d2 < best_d[k - 1]:
                        continue
                    p = found if found < k else k - 1
                    while p > 0 and d2 < best_d[p - 1]:
                        best_d[p] = best_d[p - 1]
                        best_x[p] = best_x[p - 1]
                        best_y[p] = best_y[p - 1]
                        best_vx[p] = best_vx[p - 1]
                        best_vy[p] = best_vy[p - 1]
                        p -= 1
                    best_d[p] = d2
                    best_x[p] = rx
                    best_y[p] = ry
                    best_vx[p] = tab[2, j]
                    best_vy[p] = tab[3, j]
                    if found < k:
                        found += 1
            for s in range(found):
                px = np.float64(best_x[s])
                py = np.float64(best_y[s])
                vx = best_vx[s] - evx[i]
                vy = best_vy[s] - evy[i]
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
