"""Interest grid and spectator regions against brute force; both query paths agree exactly."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.core.interest import InterestGrid, in_region


def brute(pos, radius, cap, viewers=None):
    """Reference: full distance matrix; self first, then (distance, index), at most cap."""
    p = np.asarray(pos, dtype=np.float64)
    v = np.arange(len(p)) if viewers is None else np.asarray(viewers, dtype=np.int64)
    d2 = np.zeros((len(v), len(p)))
    for k in range(p.shape[1]):  # same arithmetic as the module: dx*dx + dy*dy (+ dz*dz)
        t = p[v, k][:, None] - p[None, :, k]
        d2 += t * t
    rows = []
    for i, a in enumerate(v):
        js = np.flatnonzero(d2[i] <= radius * radius)
        js = js[js != a]
        js = js[np.lexsort((js, d2[i, js]))]
        rows.append(np.concatenate([[a], js])[:cap])
    return rows


def as_rows(indptr, indices):
    return [indices[indptr[i] : indptr[i + 1]] for i in range(len(indptr) - 1)]


def run(pos, radius, cap, viewers=None, path=None):
    g = InterestGrid(radius, cap)
    if path is not None:
        g._kd_factor = {"grid": np.inf, "kd": 0.0}[path]
    indptr, indices = g.query(pos, viewers)
    assert indptr.dtype == np.int64 and indices.dtype == np.int64
    assert indptr[0] == 0 and indptr[-1] == len(indices) and (np.diff(indptr) >= 0).all()
    if path is not None and len(indptr) > 1:
        assert g.last_path == path
    return as_rows(indptr, indices), g.last_path


def check_all_paths(pos, radius, cap, viewers=None):
    """Auto, forced grid and forced KD all equal brute force; returns the auto path taken."""
    want = brute(pos, radius, cap, viewers)
    got, taken = run(pos, radius, cap, viewers)
    for path in (None, "grid", "kd"):
        got = run(pos, radius, cap, viewers, path)[0] if path else got
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
    return taken


def flat(p):
    return np.concatenate([p, np.zeros((len(p), 1))], axis=1)


def rooms():
    r = np.random.default_rng(7)
    clusters = r.uniform(-200, 200, (6, 2))
    return {
        "spread": (flat(r.uniform(0, 300, (400, 2))), 30.0, 64, "grid"),
        "spread_2d": (r.uniform(-150, 150, (400, 2)), 30.0, 64, "grid"),
        "spread_3d": (r.uniform([0, 0, -20], [300, 300, 20], (400, 3)), 30.0, 64, "grid"),
        "clustered": (
            flat(clusters[r.integers(0, 6, 400)] + r.normal(0, 8, (400, 2))),
            10.0,
            64,
            None,
        ),
        "dense": (flat(r.uniform(0, 20, (1000, 2))), 30.0, 64, "kd"),
        "dense_3d_small_cap": (r.uniform(0, 10, (300, 3)), 5.0, 7, "kd"),
        "cap_above_count": (flat(r.uniform(0, 100, (200, 2))), 10.0, 500, "grid"),
        "cap_one": (flat(r.uniform(0, 50, (200, 2))), 10.0, 1, None),
    }


@pytest.mark.parametrize("name", list(rooms()))
def test_random_rooms_match_bruteforce(name):
    pos, radius, cap, expect_path = rooms()[name]
    taken = check_all_paths(pos, radius, cap)
    if expect_path:
        assert taken == expect_path


def test_viewer_subset_with_repeats(rng):
    pos = flat(rng.uniform(0, 100, (300, 2)))
    viewers = np.array([5, 0, 299, 5, 17])
    check_all_paths(pos, 15.0, 20, viewers)
    check_all_paths(pos, 15.0, 3, viewers)
    check_all_paths(pos, 15.0, 20, [3])


def test_invariants_self_first_cap_radius(rng):
    pos = rng.uniform(0, 60, (400, 3))
    for path in ("grid", "kd"):
        rows, _ = run(pos, 8.0, 10, path=path)
        for i, row in enumerate(rows):
            assert row[0] == i
            assert 1 <= len(row) <= 10
            assert len(set(row.tolist())) == len(row)
            d = np.linalg.norm(pos[row] - pos[i], axis=1)
            assert (d <= 8.0).all()
            assert (np.diff(d[1:]) >= 0).all()


def test_exactly_on_radius_and_lattice_ties():
    # integer lattice, radius 5: (3, 4) offsets sit exactly on the radius; many exact ties
    xs, ys = np.meshgrid(np.arange(-12, 13), np.arange(-12, 13))
    pos = flat(np.stack([xs.ravel(), ys.ravel()], axis=1).astype(float))
    centre = int(np.flatnonzero((pos[:, 0] == 0) & (pos[:, 1] == 0))[0])
    on = int(np.flatnonzero((pos[:, 0] == 3) & (pos[:, 1] == -4))[0])
    rows, _ = run(pos, 5.0, 500, [centre])
    assert on in rows[0]
    assert len(rows[0]) == 81  # lattice points with x^2 + y^2 <= 25
    for cap in (2, 5, 13, 30, 81, 82):  # cuts inside and between tie shells
        check_all_paths(pos, 5.0, cap)


def test_cell_boundaries_and_negative_coordinates():
    r = 0.25  # exact in binary: points sit exactly on cell edges
    k = np.arange(-8, 9) * r
    xs, ys = np.meshgrid(k, k)
    pos = flat(np.stack([xs.ravel(), ys.ravel()], axis=1))
    check_all_paths(pos, r, 64)
    check_all_paths(pos, r, 3)
    r = 0.1  # not exact: floor(x / r) rounding near edges
    k = np.arange(-20, 21) * r
    pos = flat(np.stack([k, -k[::-1] + 1e-12], axis=1))
    check_all_paths(pos, r, 64)


def test_small_radius_huge_coordinates(rng):
    # radius 0.1 and |x| near 1e6: 1e7 cells per axis; clusters at the corners of the world
    corners = np.array([[1e6, 1e6], [-1e6, 1e6], [1e6, -1e6], [-1e6, -1e6], [0, 0], [1e6, 0]])
    corners -= np.sign(corners) * 0.5
    pos = corners[rng.integers(0, len(corners), 300)] + rng.uniform(-0.3, 0.3, (300, 2))
    pos = flat(pos)
    assert check_all_paths(pos, 0.1, 64) == "grid"
    check_all_paths(pos, 0.1, 4)


def test_coincident_avatars():
    # everyone at one spot: all distances 0, so self first then by index; KD must not
    # let its arbitrary tie order leak through
    pos = np.zeros((100, 3))
    rows, _ = run(pos, 1.0, 8)
    assert rows[50].tolist() == [50, 0, 1, 2, 3, 4, 5, 6]
    check_all_paths(pos, 1.0, 8)
    pos = np.repeat(np.arange(10.0), 10)[:, None] * [1.0, 0.0]  # 10 stacks along x
    check_all_paths(pos, 1.0, 12)
    check_all_paths(pos, 1.0, 25)


def test_stacks_near_and_tied_with_the_viewer():
    # two stacks at equal distance from the viewer, indices interleaved: the cut at cap
    # must take the lowest indices across both stacks
    pos = np.zeros((81, 3))
    pos[1::2, 0] = 1.0
    pos[2::2, 0] = -1.0
    pos[0] = 0.0
    rows, _ = run(pos, 2.0, 6, [0], path="kd")
    assert rows[0].tolist() == [0, 1, 2, 3, 4, 5]
    check_all_paths(pos, 2.0, 6)
    check_all_paths(pos, 2.0, 50)
    # singles around one big stack: each single sees itself, nearer singles, then the stack
    r = np.random.default_rng(3)
    pos = np.concatenate([np.zeros((200, 2)), r.uniform(-2, 2, (40, 2))])
    check_all_paths(pos, 1.5, 10)
    check_all_paths(pos, 1.5, 10, np.arange(200, 240))


def test_cells_beyond_key_range_use_kd():
    pos = np.array([[5e9, 0.0], [5e9 + 0.5, 0.0], [5e9 + 2.0, 0.0], [-5e9, 1.0]])
    rows, path = run(pos, 1.0, 4)
    assert path == "kd"
    assert [r.tolist() for r in rows] == [[0, 1], [1, 0], [2], [3]]


def test_empty_inputs():
    g = InterestGrid(1.0)
    for pos in (np.zeros((0, 2)), np.zeros((0, 3))):
        indptr, indices = g.query(pos)
        assert indptr.tolist() == [0] and indices.shape == (0,)
        assert indptr.dtype == np.int64 and indices.dtype == np.int64
    indptr, indices = g.query(np.zeros((5, 3)), np.zeros(0, dtype=np.int64))
    assert indptr.tolist() == [0] and indices.shape == (0,)
    indptr, indices = g.query(np.zeros((5, 3)), [])
    assert indptr.tolist() == [0] and indices.shape == (0,)
    indptr, indices = g.query(np.array([[1.0, 2.0]]))
    assert indptr.tolist() == [0, 1] and indices.tolist() == [0]
    assert in_region(np.zeros((0, 3)), (0, 0, 1, 1), 5).shape == (0,)
    assert in_region(np.zeros((0, 3)), None, 5).shape == (0,)


def test_bad_arguments():
    for radius, cap in ((0.0, 4), (-1.0, 4), (1.0, 0), (1.0, -3)):
        with pytest.raises(ValueError):
            InterestGrid(radius, cap)
    g = InterestGrid(1.0)
    with pytest.raises(ValueError):
        g.query(np.zeros((3, 4)))
    with pytest.raises(ValueError):
        g.query(np.zeros(3))
    with pytest.raises(IndexError):
        g.query(np.zeros((3, 2)), [3])
    with pytest.raises(IndexError):
        g.query(np.zeros((3, 2)), [-1])
    with pytest.raises(ValueError):
        g.query(np.zeros((3, 2)), [0.5])


coords = st.integers(-6, 6).map(lambda k: k * 0.5) | st.floats(-4, 4, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(0, 25),
    dim=st.sampled_from([2, 3]),
    radius=st.sampled_from([0.5, 1.0, 1.3, 2.5]),
    cap=st.integers(1, 8),
)
def test_hypothesis_small_rooms(data, n, dim, radius, cap):
    pos = np.array(data.draw(st.lists(coords, min_size=n * dim, max_size=n * dim)), dtype=float)
    pos = pos.reshape(n, dim)
    viewers = None
    if n and data.draw(st.booleans()):
        viewers = data.draw(st.lists(st.integers(0, n - 1), max_size=6))
    check_all_paths(pos, radius, cap, viewers)


def test_in_region_inside_outside_and_corner_order():
    pos = np.array([[0, 0, 0], [1, 1, 9], [2, 2, 0], [3, 3, 0], [-1, 0.5, 0], [1, -0.1, 0]])
    want = [1, 0, 2]  # centre (1, 1): distances 0, sqrt 2, sqrt 2 (tie -> index)
    for box in ((0, 0, 2, 2), (2, 2, 0, 0), (0, 2, 2, 0), (2, 0, 0, 2)):
        assert in_region(pos, box, 10).tolist() == want  # edges inclusive, z ignored
    assert in_region(pos, (0, 0, 2, 2), 2).tolist() == [1, 0]
    assert in_region(pos, (0, 0, 2, 2), 0).tolist() == []
    assert in_region(pos, (10, 10, 20, 20), 5).tolist() == []
    assert in_region(pos[:, :2], (-1, -1, 0.5, 0.5), 5).tolist() == [0, 4]
    assert in_region(pos, (1, 1, 1, 1), 5).tolist() == [1]  # degenerate box
    out = in_region(pos, (0, 0, 2, 2), 10)
    assert out.dtype == np.int64


def test_in_region_nearest_centre_order(rng):
    pos = rng.uniform(-50, 50, (500, 3))
    box = (20.0, -30.0, -10.0, 10.0)
    got = in_region(pos, box, 40)
    inside = np.flatnonzero(
        (pos[:, 0] >= -10) & (pos[:, 0] <= 20) & (pos[:, 1] >= -30) & (pos[:, 1] <= 10)
    )
    d = np.hypot(pos[inside, 0] - 5.0, pos[inside, 1] + 10.0)
    np.testing.assert_array_equal(got, inside[np.lexsort((inside, d))][:40])


def test_in_region_none_box():
    pos = np.zeros((10, 3))
    assert in_region(pos, None, 4).tolist() == [0, 1, 2, 3]
    assert in_region(pos, None, 50).tolist() == list(range(10))
    with pytest.raises(ValueError):
        in_region(pos, None, -1)
    with pytest.raises(ValueError):
        in_region(pos, (0, 0, 1), 3)
