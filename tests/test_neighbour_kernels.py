"""server.core.neighbour_kernels.nearest on hand-made grids: who is kept, in what order."""

from __future__ import annotations

import numpy as np

from server.core import neighbour_kernels as K
from server.core.layout import FEATURE_CLIP, NB_ON, NB_VX, NB_WIDTH

R = 8.0


def run(cands, ego=(0.0, 0.0), k=2, max_gap=1.0, ego_row=99, ego_age=0.0):
    """One avatar at `ego` (cell-local) in cell 0, candidates (x, y, vx, vy, age, row) all
    in its own cell (the centre of the 3x3 block). Returns its (k, NB_WIDTH) block."""
    m = len(cands)
    tab = np.zeros((6, max(m, 1)), np.float32)
    for j, c in enumerate(cands):
        tab[:, j] = c
    lo = np.zeros((1, 9), np.int64)
    cnt = np.zeros((1, 9), np.int64)
    cnt[0, 4] = m  # the avatar's own cell is the middle one of its 3x3 block
    out = np.zeros((1, NB_WIDTH * k), np.float32)
    K.nearest(
        tab, lo, cnt, np.zeros(1, np.int64), np.ones(1, bool),
        np.array([ego[0]], np.float32), np.array([ego[1]], np.float32),
        np.array([ego_age], np.float32), np.array([ego_row], np.int64),
        np.zeros(1), np.zeros(1), np.ones(1), np.zeros(1),
        k, R, max_gap, 1.0, 1.0, FEATURE_CLIP, NB_VX, NB_ON, NB_WIDTH, out,
    )  # fmt: skip
    return out.reshape(k, NB_WIDTH)


def test_nearest_first_and_only_k():
    blk = run([(3, 0, 0, 0, 0, 1), (1, 0, 0, 0, 0, 2), (2, 0, 0, 0, 0, 3)], k=2)
    assert blk[:, 0].tolist() == [1.0, 2.0] and blk[:, NB_ON].tolist() == [1.0, 1.0]


def test_a_tie_keeps_the_earlier_candidate_first():
    blk = run([(0, 2, 0, 0, 0, 1), (2, 0, 0, 0, 0, 2), (0, -2, 0, 0, 0, 3)], k=2)
    assert blk[:, 1].tolist() == [2.0, 0.0] and blk[:, 0].tolist() == [0.0, 2.0]


def test_itself_far_ones_and_stale_ones_are_left_out():
    cands = [
        (0.5, 0, 0, 0, 0, 99),  # itself (same row)
        (7.9, 7.9, 0, 0, 0, 1),  # farther than the radius
        (1, 0, 0, 0, 5.0, 2),  # its sample 5 s from the avatar's: past max_gap
        (0, 3, 0, 0, 0, 3),  # the one neighbour
    ]
    blk = run(cands, k=3)
    assert blk[:, NB_ON].tolist() == [1.0, 0.0, 0.0]
    assert blk[0, :2].tolist() == [0.0, 3.0] and not blk[1:].any()


def test_a_neighbour_is_moved_to_the_avatars_sample_time():
    # sampled 0.5 s before the avatar, moving +2 m/s in x: drawn 1 m further on
    blk = run([(1, 0, 2, 0, 0.0, 1)], k=1, ego_age=0.5)
    assert blk[0, 0] == np.float32(2.0) and blk[0, NB_VX] == np.float32(2.0)


def test_sort_cells_gives_lexsorts_order_short_and_long_runs():
    rng = np.random.default_rng(0)
    key = rng.integers(0, 5, 400)  # runs of ~80: the long-run path
    key[:20] = 9  # and a short one
    d2 = rng.integers(0, 6, 400).astype(np.float64)  # many ties: by index then
    order = np.argsort(key)  # any order that sorts the keys
    K.sort_cells(order, key, d2)
    np.testing.assert_array_equal(order, np.lexsort((d2, key)))


def test_blocks_are_the_3x3_ranges_cut_to_the_cap():
    shift = 21
    # candidates of 3 cells (sorted keys): (0, 0) x 3, (0, 1) x 1, (2, 2) x 2
    k00, k01, k22 = 0, 1, (2 << shift) + 2
    skey = np.array([k00, k00, k00, k01, k22, k22], np.int64)
    cand = np.array([10, 11, 12, 13, 14, 15], np.int64)
    rows = np.array([13, 14, 7], np.int64)  # 7 is no candidate: looked up by its key
    ekey = np.array([k01, k22, k00], np.int64)
    lo, cnt, ecell, efound = K.blocks(skey, 2, shift, cand, 16, rows, ekey)
    assert lo.shape == (3, 9)
    # cell (0, 0): itself (middle, index 4) cut to 2, (0, 1) above it (index 5)
    assert (lo[0, 4], cnt[0, 4]) == (0, 2) and (lo[0, 5], cnt[0, 5]) == (3, 1)
    assert cnt[0].sum() == 3 and cnt[2].sum() == 2  # (2, 2) is alone
    assert ecell.tolist() == [1, 2, 0] and efound.tolist() == [True, True, True]
    _, _, ecell, efound = K.blocks(skey, 2, shift, cand, 16, rows, np.array([k01, k22, 5]))
    assert efound.tolist() == [True, True, False]
