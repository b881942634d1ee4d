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
those nearest its centre), so the cost is bounded per avatar whatever the crowd. All of
it is array code over the tick's rows (no per-avatar Python); serving and training call
the same function through `server.core.features.tick_features`.
"""

from __future__ import annotations

import numpy as np

from server.core.layout import FEATURE_CLIP, NB_ON, NB_VX, NB_WIDTH, FeatureConfig, FeatureState

_OFF = 1 << 20  # grid coordinates are offset to stay positive inside the packed key
_DX = np.array([-1, -1, -1, 0, 0, 0, 1, 1, 1], dtype=np.int64)
_DY = np.array([-1, 0, 1, -1, 0, 1, -1, 0, 1], dtype=np.int64)


def _keys(group: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    return (group << 42) + ((gx + _OFF) << 21) + (gy + _OFF)


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
    order = np.lexsort(((lx - 0.5 * R) ** 2 + (ly - 0.5 * R) ** 2, key))
    skey = key[order]
    c0 = float(clock[rows].min())
    # One contiguous float32 table of what is read per candidate, in sorted order.
    tab = np.empty((6, len(cand)), dtype=np.float32)
    tab[0], tab[1] = lx[order], ly[order]
    tab[2], tab[3] = d[14, cand[order]], d[15, cand[order]]
    tab[4] = clock[cand[order]] - c0
    tab[5] = cand[order]  # row ids < 2**24 are exact in float32
    # The occupied cells, and for each the ranges of its 3x3 block (cut to M each).
    first = np.flatnonzero(np.r_[True, skey[1:] != skey[:-1]])
    cells = skey[first]
    q = cells[:, None] + ((_DX << 21) + _DY)[None, :]  # same group: neighbouring keys
    lo = np.searchsorted(cells, q)
    hit = cells[np.minimum(lo, len(cells) - 1)] == q
    bounds = np.r_[first, len(skey)]
    lo_i = np.where(hit, bounds[np.minimum(lo, len(cells) - 1)], 0)
    cnt = np.where(hit, np.minimum(bounds[np.minimum(lo, len(cells) - 1) + 1] - lo_i, M), 0)
    # Each avatar reads its own cell's block: the (avatar, candidate) pairs, flat.
    ex, ey = d[11, rows], d[12, rows]
    egx, egy = np.floor(ex / R), np.floor(ey / R)
    elx = (ex - egx * R).astype(np.float32)
    ely = (ey - egy * R).astype(np.float32)
    ekey = _keys(group[rows], egx.astype(np.int64), egy.astype(np.int64))
    ecell = np.minimum(np.searchsorted(cells, ekey), len(cells) - 1)
    # An avatar that is not itself a candidate (not live) finds no cell: no neighbours.
    cnt9 = np.where((cells[ecell] == ekey)[:, None], cnt[ecell], 0).ravel()  # (n * 9,)
    total = int(cnt9.sum())
    if total == 0:
        return out
    pair = np.repeat(np.arange(n * 9), cnt9)  # (total,) avatar * 9 + cell
    first_of = np.cumsum(cnt9) - cnt9
    within = np.arange(total) - first_of[pair]
    col = within + (first_of - np.repeat(first_of[::9], 9))[pair]  # rank within the avatar
    ego = pair // 9
    c = tab[:, lo_i[ecell].ravel()[pair] + within]  # (6, total): one gather
    age = (clock[rows] - c0).astype(np.float32)[ego] - c[4]
    ok = (c[5] != rows[ego]) & (np.abs(age) <= cfg.max_gap)
    np.clip(age, -cfg.max_gap, cfg.max_gap, out=age)
    cell9 = pair % 9
    rx = c[0] + (_DX[cell9] * R).astype(np.float32) + c[2] * age - elx[ego]
    ry = c[1] + (_DY[cell9] * R).astype(np.float32) + c[3] * age - ely[ego]
    d2 = rx * rx + ry * ry
    ok &= d2 <= R * R
    # Padded per avatar (width: the most candidates any avatar has) for the top-k.
    W = int(col.max()) + 1
    d2p = np.full((n, W), np.inf, dtype=np.float32)
    d2p[ego[ok], col[ok]] = d2[ok]
    at = np.full((n, W), total, dtype=np.int64)  # index into the flat arrays; total = none
    at[ego, col] = np.arange(total)
    on_all = np.r_[ok, False]
    rx, ry = np.r_[rx, 0.0], np.r_[ry, 0.0]
    cvx, cvy = np.r_[c[2], 0.0], np.r_[c[3], 0.0]
    # The k nearest, nearest first.
    kk = min(k, W)
    part = np.argpartition(d2p, kk - 1, axis=1)[:, :kk] if kk < W else np.argsort(d2p, 1)
    srt = np.argsort(np.take_along_axis(d2p, part, 1), axis=1, kind="stable")
    sel = np.take_along_axis(at, np.take_along_axis(part, srt, 1), 1)  # (n, kk) flat index
    on = on_all[sel]
    px, py = rx[sel], ry[sel]
    vx = cvx[sel] - d[14, rows][:, None]
    vy = cvy[sel] - d[15, rows][:, None]
    hc, hs = d[9, rows][:, None], d[10, rows][:, None]
    blk = np.zeros((n, kk, NB_WIDTH), dtype=np.float32)
    blk[..., 0] = (hc * px + hs * py) / cfg.nb_pos_scale
    blk[..., 1] = (-hs * px + hc * py) / cfg.nb_pos_scale
    blk[..., NB_VX] = (hc * vx + hs * vy) / cfg.v_scale
    blk[..., NB_VX + 1] = (-hs * vx + hc * vy) / cfg.v_scale
    blk[..., NB_ON] = 1.0
    blk[~on] = 0.0
    np.clip(blk, -FEATURE_CLIP, FEATURE_CLIP, out=blk)
    out[:, : NB_WIDTH * kk] = blk.reshape(n, -1)
    return out
