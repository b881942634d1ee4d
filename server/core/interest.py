"""Interest management: which avatars each viewer sees.

Pure array code (numpy, scipy, a numba kernel); no asyncio, sockets or torch. The app calls
`InterestGrid.query` every tick for every room and `in_region` for spectators.

`query` has two paths that return the same CSR result:

* grid (compiled, `server.core.interest_kernels`): a uniform grid of cell size ~radius
  keyed on (x, y); each viewer's candidates are the avatars in its 3 x 3 cell block,
  of which it keeps the `cap` nearest in one pass;
* KD-tree: when the grid would produce too many candidate pairs (dense crowds, where a
  radius holds far more avatars than `cap`), `cKDTree.query` for the `cap + 1` nearest
  distinct positions (avatars stacked on one spot, e.g. a spawn point, count once in the
  tree, so a stack of thousands costs O(cap) per viewer). The KD-tree breaks
  exact-distance ties arbitrarily, so rows whose cut at `cap` may fall on a (near-)tie
  are redone with a ball query, and the pairs then get the exact distance, filter and
  order.

Both keep every avatar within the radius by the same float64 distance, the viewer first,
then nearest first, ties by lower index, so their results are identical, ties included.

Distances are Euclidean over all columns given (2 or 3); z never affects the grid.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from server.core import interest_kernels as IK

# Cell size is radius * (1 + _CELL_MARGIN): float rounding in floor(x / cell) can then never
# put two avatars within the radius two cells apart.
_CELL_MARGIN = 1e-6
_MAX_CELL = 2**30  # |cell coordinate| bound for collision-free int64 keys; beyond, KD path
_KD_TIE_TOL = 1e-9  # relative distance tolerance for "the KD cut may fall on a tie"
# Grid -> KD switch: candidate pairs > _KD_FACTOR * n_viewers * cap. Measured with the
# compiled grid (n 400-2000, cap 16 and 64): both paths cost the same at about 13-20
# candidates per viewer per cap (docs/performance.md).
_KD_FACTOR = 12.0

_EMPTY = np.zeros(0, dtype=np.int64)


def _as_positions(pos: np.ndarray) -> np.ndarray:
    p = np.asarray(pos, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] not in (2, 3):
        raise ValueError(f"pos must have shape (n, 2) or (n, 3), got {p.shape}")
    return p


def _sqdist(cols: list[np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared distance between avatars a[k] and b[k]: dx*dx + dy*dy (+ dz*dz), in that order."""
    t = cols[0][a] - cols[0][b]
    d2 = t * t
    for c in cols[1:]:
        t = c[a] - c[b]
        d2 += t * t
    return d2


class InterestGrid:
    """Uniform spatial grid over one room's avatars: who sees whom.

    radius: visibility radius in metres (> 0); cap: most avatars per viewer (>= 1).
    Raises ValueError otherwise. Stateless between calls: pass the room's current
    positions to every `query`.
    """

    def __init__(self, radius: float, cap: int = 64) -> None:
        radius = float(radius)
        if not radius > 0.0:
            raise ValueError(f"radius must be > 0, got {radius}")
        if int(cap) != cap or cap < 1:
            raise ValueError(f"cap must be an integer >= 1, got {cap}")
        self.radius = radius
        self.cap = int(cap)
        self._kd_factor = _KD_FACTOR  # private: tests force a path with 0.0 or inf
        self.last_path = ""  # "grid" or "kd": which path the last query took
        IK.warm_up()  # compiled (or loaded from numba's cache) now, not in a tick

    def query(
        self, pos: np.ndarray, viewers: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Who each viewer sees.

        pos: (n, 2) or (n, 3) finite float positions of the room's avatars (z is ignored
        for the grid, used for distance). viewers: 1-D integer indices into pos of the
        avatars that need a view (default: all, in order; repeats allowed).
        Returns CSR (indptr (m+1,) int64, indices (nnz,) int64): viewer row i sees
        indices[indptr[i]:indptr[i+1]]: every avatar within `radius` (Euclidean distance
        <= radius), the viewer itself first, then nearest first with ties broken by lower
        index, at most `cap` in all.
        Raises ValueError for a bad pos shape or non-integer/non-1-D viewers, IndexError
        for a viewer outside [0, n).
        """
        p = _as_positions(pos)
        n = len(p)
        if viewers is None:
            v = np.arange(n, dtype=np.int64)
        else:
            v = np.asarray(viewers)
            if v.ndim != 1 or (v.size and not np.issubdtype(v.dtype, np.integer)):
                raise ValueError("viewers must be a 1-D integer array")
            v = v.astype(np.int64, copy=False)
            if v.size and (v.min() < 0 or v.max() >= n):
                raise IndexError(f"viewer index out of range [0, {n})")
        m = len(v)
        if m == 0:
            return np.zeros(1, dtype=np.int64), _EMPTY.copy()
        cell = np.floor(p[:, :2] * (1.0 / (self.radius * (1.0 + _CELL_MARGIN))))
        if np.abs(cell).max() < _MAX_CELL:  # the grid (compiled), unless too many candidates
            ci = cell.astype(np.int64)
            key = ci[:, 0] * IK.ROW + ci[:, 1]  # collision-free and ordered by (cx, cy)
            ok, indptr, indices = IK.grid_views(
                np.ascontiguousarray(p.T), key, np.argsort(key), v, self.radius * self.radius,
                self.cap, self._kd_factor * m * self.cap,
            )  # fmt: skip
            if ok:
                self.last_path = "grid"
                return indptr, indices
        self.last_path = "kd"
        cols = [np.ascontiguousarray(p[:, k]) for k in range(p.shape[1])]
        return self._finish(cols, v, *self._kd_pairs(p, v))

    def _kd_pairs(self, p: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, candidate) pairs from a KD-tree over the distinct positions.

        Avatars at one position (a spawn point) form a group: the tree holds each position
        once and a group contributes its lowest `cap` indices, so stacks cost O(cap) per
        viewer. Per viewer: its cap + 1 nearest positions, cut where they hold `cap`
        avatars, plus any position (nearly) tied with the cut. Rows where an unreturned
        position may tie with the cut are redone with a ball query. Rows come out grouped,
        the viewer first, then in distance order up to ties; `_finish` repairs the order.
        """
        n, m, cap = len(p), len(v), self.cap
        order = np.lexsort(p.T[::-1])  # stable: equal positions keep ascending index
        sp = p[order]
        first = np.ones(n, dtype=bool)
        first[1:] = (sp[1:] != sp[:-1]).any(axis=1)
        starts = np.flatnonzero(first)  # group g = order[starts[g] : starts[g] + counts[g]]
        counts = np.diff(np.append(starts, n))
        u = len(starts)
        tree = cKDTree(sp[starts])
        k = min(cap + 1, u)
        ub = self.radius * (1.0 + _CELL_MARGIN)  # > radius: the exact filter comes later
        dist, gi = tree.query(p[v], k=[*range(1, k + 1)], distance_upper_bound=ub)
        valid = gi < u
        c = np.where(valid, counts[np.minimum(gi, u - 1)], 0) if u < n else valid.astype(np.int64)
        cum = np.cumsum(c, axis=1)
        # Cut: the position that brings the row to cap avatars (inf: all within ub returned).
        at = np.argmax(cum >= cap, axis=1)
        d_cut = np.where(cum[:, -1] >= cap, dist[np.arange(m), at], np.inf)
        tied = dist <= (d_cut * (1.0 + _KD_TIE_TOL))[:, None]
        keep = valid & ((cum - c < cap) | tied)
        # Saturated rows (k positions within ub, more exist): unreturned positions are at
        # least as far as the last one; if that one ties with the cut, redo the row.
        amb = (k < u) & valid[:, -1] & tied[:, -1]
        keep &= ~amb[:, None]
        gr = np.broadcast_to(np.arange(m, dtype=np.int64)[:, None], keep.shape)[keep]
        gg = gi[keep]
        if amb.any():
            ra = np.flatnonzero(amb)
            # Superset of every position as near as the cut (any metric rounding).
            r_ball = np.minimum(d_cut[ra] * (1.0 + 1e-6) + 1e-12 * self.radius, ub)
            ball = tree.query_ball_point(p[v[ra]], r=r_ball)
            lens = np.fromiter((len(b) for b in ball), dtype=np.int64, count=len(ra))
            gr = np.concatenate([gr, np.repeat(ra, lens)])
            gg = np.concatenate(
                [gg, np.fromiter((j for b in ball for j in b), np.int64, int(lens.sum()))]
            )
        if u == n:  # all positions distinct: group g is avatar order[g]
            rows, cand = gr, order[gg]
        else:  # expand each (row, group) into the group's lowest min(count, cap) indices
            e = np.minimum(counts[gg], cap)
            shift = starts[gg] - (np.cumsum(e) - e)
            cand = order[np.arange(int(e.sum()), dtype=np.int64) + np.repeat(shift, e)]
            rows = np.repeat(gr, e)
        other = cand != v[rows]
        rows = np.concatenate([np.arange(m, dtype=np.int64), rows[other]])
        cand = np.concatenate([v, cand[other]])
        o = np.argsort(rows, kind="stable")  # regroup, viewer first; cheap: few sorted runs
        return rows[o], cand[o]

    def _finish(
        self, cols: list[np.ndarray], v: np.ndarray, rows: np.ndarray, cand: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact filter, order by (row, self first, distance, index), cap, CSR.

        rows must be grouped (non-decreasing) and the pairs (nearly) in order within each
        row (the KD path's); the exact order is checked and broken rows are lexsorted.
        """
        m, cap = len(v), self.cap
        vr = v[rows]
        d2 = _sqdist(cols, vr, cand)
        r2 = self.radius * self.radius
        keep = d2 <= r2
        rows, cand, d2 = rows[keep], cand[keep], d2[keep]
        # The viewer itself first, even if others share its position.
        d2[cand == vr[keep]] = -0.5 * r2
        same = rows[1:] == rows[:-1]
        bad = same & ((d2[1:] < d2[:-1]) | ((d2[1:] == d2[:-1]) & (cand[1:] < cand[:-1])))
        if bad.any():
            broken = np.zeros(m, dtype=bool)
            broken[rows[1:][bad]] = True
            sel = np.flatnonzero(broken[rows])  # whole rows, contiguous, in row order
            o = sel[np.lexsort((cand[sel], d2[sel], rows[sel]))]
            cand[sel] = cand[o]
        counts = np.bincount(rows, minlength=m)
        rank = np.arange(len(rows), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        cand = cand[rank < cap]
        indptr = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(np.minimum(counts, cap), out=indptr[1:])
        return indptr, cand.astype(np.int64, copy=False)


def in_region(
    pos: np.ndarray, box: tuple[float, float, float, float] | None, cap: int
) -> np.ndarray:
    """Spectator view of a room.

    pos: (n, 2) or (n, 3) finite float positions. box: (x0, y0, x1, y1) in any corner
    order, or None. cap: most avatars returned (>= 0).
    Returns int64 indices: avatars with x, y inside the box (inclusive), nearest to the box
    centre (in x, y) first, ties by lower index, at most cap; box None: the first cap by
    index. Raises ValueError for a bad pos shape, a box not of 4 numbers, or cap < 0.
    """
    p = _as_positions(pos)
    if int(cap) != cap or cap < 0:
        raise ValueError(f"cap must be an integer >= 0, got {cap}")
    cap = int(cap)
    if box is None:
        return np.arange(min(cap, len(p)), dtype=np.int64)
    if len(box) != 4:
        raise ValueError(f"box must be (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(b) for b in box)
    xl, xh = min(x0, x1), max(x0, x1)
    yl, yh = min(y0, y1), max(y0, y1)
    x, y = p[:, 0], p[:, 1]
    idx = np.flatnonzero((x >= xl) & (x <= xh) & (y >= yl) & (y <= yh))
    dx = x[idx] - 0.5 * (xl + xh)
    dy = y[idx] - 0.5 * (yl + yh)
    o = np.lexsort((idx, dx * dx + dy * dy))
    return idx[o[:cap]].astype(np.int64, copy=False)
