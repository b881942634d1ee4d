"""server.core.interest_kernels.grid_views on hand-made rooms: who is kept, in what order,
and when it hands the query back (the whole definition is checked against brute force in
tests/test_interest.py)."""

from __future__ import annotations

import itertools

import numpy as np

from server.core.interest_kernels import ROW, grid_views


def views(xy, viewers=None, radius=1.0, cap=8, max_pairs=np.inf):
    p = np.asarray(xy, dtype=np.float64)
    cell = np.floor(p / radius).astype(np.int64)
    key = cell[:, 0] * ROW + cell[:, 1]
    v = np.arange(len(p)) if viewers is None else np.asarray(viewers, dtype=np.int64)
    cols, order = np.ascontiguousarray(p.T), np.argsort(key)
    ok, indptr, indices = grid_views(cols, key, order, v, radius**2, cap, max_pairs)
    rows = [indices[a:b].tolist() for a, b in itertools.pairwise(indptr)]
    return ok, rows


def test_itself_first_then_nearest_then_lower_index_on_a_tie():
    ok, rows = views([(0.5, 0.5), (0.9, 0.5), (0.1, 0.5), (0.5, 0.6), (0.5, 0.5)])
    assert ok
    assert rows[0] == [0, 4, 3, 1, 2]  # 4 shares its spot; 1 and 2 tie: lower index first


def test_only_within_the_radius_across_cells_and_negative_coordinates():
    ok, rows = views([(-0.1, -0.1), (0.85, -0.1), (-0.1, 0.95), (-1.2, -1.2), (1.5, 1.5)])
    assert ok and rows[0] == [0, 1]  # 0.95 and 1.05 away: the second is out
    assert rows[3] == [3] and rows[4] == [4]


def test_cap_counts_itself_and_a_cap_of_one_is_itself_alone():
    xy = [(0.0, 0.0), (0.1, 0.0), (0.2, 0.0), (0.3, 0.0)]
    assert views(xy, cap=2)[1][0] == [0, 1]
    assert views(xy, cap=1)[1] == [[0], [1], [2], [3]]


def test_viewer_subset_with_repeats():
    ok, rows = views([(0.0, 0.0), (0.5, 0.0), (3.0, 3.0)], viewers=[2, 0, 0])
    assert ok and rows == [[2], [0, 1], [0, 1]]


def test_too_many_candidate_pairs_hands_the_query_back():
    xy = np.zeros((10, 2))  # every 3 x 3 block holds all 10: 100 pairs
    assert views(xy, max_pairs=99)[0] is False
    ok, rows = views(xy, max_pairs=100)
    assert ok and rows[3] == [3, 0, 1, 2, 4, 5, 6, 7]
