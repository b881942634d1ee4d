"""Each avatar's k nearest avatars, as model input, for a whole tick at once.

Only the server sees every avatar, so it can tell the model who is around: per avatar
stepped this tick, its `cfg.neighbours` nearest live avatars of the same group (room)
within `cfg.nb_radius`, nearest first, each as its position relative to the avatar and
its velocity minus the avatar's, both in the avatar's heading frame, plus a presence
flag (`server.core.layout.NB_*`). Positions and velocities are the Kalman prior's (the
filtered state after this tick's samples); a neighbour whose newest sample is older or
newer than the avatar's is moved along its velocity to the avatar's sample time, and one
more than `max_gap` apart in time is left out.

The search is a uniform grid with cell side `nb_radius`: candidates are the avatars of
the 3x3 cells around the avatar's, at most `nb_cell_cap` per cell (a denser cell keeps
those nearest its centre), so the cost is bounded per avatar whatever the crowd. The keys
and the candidates' table are array code over the tick's rows; the cells, each avatar's
k nearest and their features are compiled (`server.core.neighbour_kernels`), with the
array code's float32 arithmetic. Serving and training call the same function through
`server.core.features.tick_features`.
"""

from __future__ import annotations

import numpy as np

from server.core import neighbour_kernels as K
from server.core.layout import FEATURE_CLIP, NB_ON, NB_VX, NB_WIDTH, FeatureConfig, FeatureState

_OFF = 1 << 20  # grid coordinates are offset to stay positive inside the packed key
_BITS = 21  # bits of each grid coordinate in the key (the group above both)


def _keys(group: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    return (group << (2 * _BITS)) + ((gx + _OFF) << _BITS) + (gy + _OFF)


def neighbour_features(
    state: FeatureState,
    rows: np.ndarray,
    live: np.ndarray,
    group: np.ndarray,
    clock: np.ndarray,
    cfg: FeatureConfig,
) -> np.ndarray:
    """Neighbour blocks (len(rows), NB_WIDTH * cfg.neighbours) float32 for `rows`.

    `state` must already hold this tick's samples (call after `features.step`); `live`
    (len(state),) bool marks existing rows, `group` (len(state),) int64 their room
    (0 <= group < 2**21), `clock` (len(state),) each row's newest sample time on one
    shared clock. Positions must be within ±2**19 cells of the origin (the engine bounds
    coordinates to 1e6 m).
    """
    k, R, M = cfg.neighbours, cfg.nb_radius, cfg.nb_cell_cap
    n = len(rows)
    out = np.zeros((n, NB_WIDTH * k), dtype=np.float32)
    d = state.data
    cand = np.flatnonzero(live & ~np.isnan(d[0]))
    if n == 0 or k == 0 or len(cand) < 2:
        return out
    group = np.asarray(group, dtype=np.int64)
    # Grid of the candidates, sorted by cell, nearest the cell's centre first.
    cx, cy = d[11, cand], d[12, cand]
    gx, gy = np.floor(cx / R), np.floor(cy / R)
    lx, ly = cx - gx * R, cy - gy * R  # cell-local: float32-exact enough anywhere
    gx, gy = gx.astype(np.int64), gy.astype(np.int64)
    key = _keys(group[cand], gx, gy)
    order = np.argsort(key)
    K.sort_cells(order, key, (lx - 0.5 * R) ** 2 + (ly - 0.5 * R) ** 2)  # np.lexsort's
    c0 = float(clock[rows].min())
    # One contiguous float32 table of what is read per candidate, in sorted order.
    tab = np.empty((6, len(cand)), dtype=np.float32)
    tab[0], tab[1] = lx[order], ly[order]
    scand = cand[order]
    tab[2], tab[3] = d[14, scand], d[15, scand]
    tab[4] = clock[scand] - c0
    tab[5] = scand  # row ids < 2**24 are exact in float32
    # Each avatar reads its own cell's 3x3 block (compiled: `neighbour_kernels.nearest`).
    ex, ey = d[11, rows], d[12, rows]
    egx, egy = np.floor(ex / R), np.floor(ey / R)
    elx = (ex - egx * R).astype(np.float32)
    ely = (ey - egy * R).astype(np.float32)
    ekey = _keys(group[rows], egx.astype(np.int64), egy.astype(np.int64))
    lo, cnt, ecell, efound = K.blocks(key[order], M, _BITS, scand, d.shape[1], rows, ekey)
    eage = (clock[rows] - c0).astype(np.float32)
    K.nearest(
        tab, lo, cnt, ecell, efound, elx, ely, eage, rows, d[14, rows], d[15, rows],
        d[9, rows], d[10, rows], k, float(R), float(cfg.max_gap), float(cfg.nb_pos_scale),
        float(cfg.v_scale), FEATURE_CLIP, NB_VX, NB_ON, NB_WIDTH, out,
    )  # fmt: skip
    return out


def warm_up() -> None:
    """Compile the search's kernel now (or load it from numba's cache: fast), so that no
    tick waits for it. The engine calls this for a model that takes neighbours, and so
    does a step worker before it says it is ready."""
    cfg = FeatureConfig(neighbours=1)
    state = FeatureState(2)
    d = state.data
    d[:, :] = 0.0
    d[9] = 1.0  # heading cos
    d[11, 1] = 1.0  # the second one a metre east of the first
    rows = np.arange(2, dtype=np.int64)
    neighbour_features(state, rows, np.ones(2, bool), np.zeros(2, np.int64), np.zeros(2), cfg)


def set_threads(n: int) -> None:
    """Share the search over `n` threads (at most the machine's cores) from this thread:
    numba's count is per calling thread, so call it in the thread that steps the engine."""
    import numba

    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
