import numpy as np
import pytest

from server.core.downlink import EXTRAPOLATE, DownlinkReckoner, path_at, select

H = np.array([0.1, 0.2, 0.4])


def test_path_at_follows_the_knots_then_extrapolates_then_holds():
    pos = np.array([[1.0, 2.0, 0.0]])
    off = np.array([[[0.1, 0, 0], [0.2, 0, 0], [0.6, 0, 0]]])  # 1 m/s, then 2 m/s
    x = lambda d: path_at(pos, off, H, np.array([d]))[0, 0]  # noqa: E731
    assert x(-1.0) == 1.0 and x(0.0) == 1.0
    assert x(0.05) == pytest.approx(1.05) and x(0.3) == pytest.approx(1.4)
    assert x(0.4) == pytest.approx(1.6)
    assert x(0.4 + 0.25) == pytest.approx(1.6 + 2.0 * 0.25)  # last segment's velocity ...
    assert x(0.4 + EXTRAPOLATE) == pytest.approx(x(10.0))  # ... for EXTRAPOLATE s, then hold
    many = path_at(np.zeros((2, 3)), np.stack([off[0], -off[0]]), H, np.array([0.2, 0.2]))
    np.testing.assert_allclose(many[:, 0], [0.2, -0.2])
    with pytest.raises(ValueError):
        path_at(pos, off, [0.2, 0.1, 0.4], np.array([0.0]))


def test_path_at_matches_the_clients_reckoner():
    from client_demo.reckoning import DeadReckoner

    rng = np.random.default_rng(1)
    pos, off = rng.normal(size=3), rng.normal(size=(3, 3))
    dr = DeadReckoner(H, "gru", extrapolate=EXTRAPOLATE, convergence=0.0)
    dr.update("k", 5.0, pos, off, 5.0)
    for d in (0.0, 0.03, 0.15, 0.39, 0.5, 0.8, 2.0):
        mine = path_at(pos[None], off[None], H, np.array([d]))[0]
        np.testing.assert_allclose(mine, dr.position_at("k", 5.0 + d), atol=1e-12)


def test_due_new_heartbeat_and_threshold():
    dr = DownlinkReckoner(3, H, threshold=0.05, heartbeat=1.0)
    slots = np.array([0, 1, 2])
    zero = np.zeros(3)
    assert dr.due(slots, zero, np.zeros((3, 3)), 0.0).all()  # nothing sent yet
    off = np.zeros((3, 3, 3), np.float32)
    off[:, :, 0] = H  # every path: 1 m/s along x
    dr.commit(slots, zero, np.zeros((3, 3)), off, np.arange(3), 0.0)
    t = np.full(3, 0.2)
    p = np.array([[0.2, 0, 0], [0.2, 0.049, 0], [0.2, 0.051, 0]])  # on, inside, off
    np.testing.assert_array_equal(dr.due(slots, t, p, 0.2), [False, False, True])
    np.testing.assert_allclose(dr.error(slots, t, p), [0, 0.049, 0.051], atol=1e-7)
    # an old sample (not newer than the sent one) is never checked; the heartbeat still counts
    np.testing.assert_array_equal(dr.due(slots, zero, p, 0.99), [False] * 3)
    np.testing.assert_array_equal(dr.due(slots, zero, p, 1.0), [True] * 3)
    dr.forget([1])
    np.testing.assert_array_equal(dr.due(slots, t, p[[0, 0, 0]], 0.2), [False, True, False])
    dr.grow(5)
    assert len(dr.has) == 5 and dr.off.shape == (5, 3, 3) and dr.has[:3].tolist() == [1, 0, 1]
    with pytest.raises(ValueError):
        DownlinkReckoner(1, H, threshold=-1, heartbeat=1.0)


def test_select_on_a_track_sends_fewer_records_for_better_paths():
    t = np.arange(0, 4, 0.05)
    p = np.stack([np.cos(t), np.sin(t), 0 * t], axis=1)  # 1 m/s on a circle
    exact = np.stack([np.stack([np.cos(t + h), np.sin(t + h), 0 * t], 1) - p for h in H], 1)
    hold = np.zeros_like(exact)
    every = select(t, p, hold, H, threshold=0.0, heartbeat=10.0)
    np.testing.assert_array_equal(every, np.arange(len(t)))  # it moves: always off a hold
    good = select(t, p, exact, H, threshold=0.01, heartbeat=10.0)
    bad = select(t, p, hold, H, threshold=0.01, heartbeat=10.0)
    # an exact path holds through its horizons (0.4 s) and a little of its extrapolation
    assert good[0] == 0 and (np.diff(good) >= 8).all() and (np.diff(good) <= 18).all()
    assert len(bad) == len(t) and good[0] == 0
    beat = select(t, p, exact, H, threshold=10.0, heartbeat=1.0)
    assert beat.tolist() == [0, 20, 40, 60]


def test_select_is_the_reckoners_rule_sample_by_sample():
    rng = np.random.default_rng(7)
    t = np.cumsum(rng.uniform(0.04, 0.3, 300))
    curve = lambda s: np.stack([np.cos(s), np.sin(0.7 * s), 0.1 * s], axis=-1)  # noqa: E731
    p = curve(t)
    off = curve(t[:, None] + H) - p[:, None] + rng.normal(0, 0.02, (300, 3, 3))
    off = off.astype(np.float32)
    for threshold, heartbeat, ahead in (
        (0.03, 1.0, 0),
        (0.1, 0.5, 0),
        (0.0, 2.0, 0),
        (0.1, 1, 0.5),
    ):
        dr = DownlinkReckoner(1, H, threshold, heartbeat, ahead)
        one, want = np.zeros(1, dtype=np.int64), []
        for j in range(len(t)):
            tj = t[j : j + 1]
            if dr.due(one, tj, p[j : j + 1], float(t[j]), off[j : j + 1])[0]:
                dr.commit(one, tj, p[j : j + 1], off[j : j + 1], one, float(t[j]))
                want.append(j)
        got = select(t, p, off, H, threshold, heartbeat, ahead)
        assert got.tolist() == want and 0 < len(want) <= len(t)
        assert threshold == 0 or len(want) < len(t) / 2


def test_a_new_path_off_ahead_is_resent_before_the_sample_shows_it():
    """The sample is on the sent path (straight on), but the new prediction turns: with a
    lookahead the record goes out now, without it not yet."""
    t0, t1 = 0.0, 0.1
    straight = np.array([[[h, 0.0, 0.0] for h in H]], dtype=np.float32)  # 1 m/s along x
    turning = np.array([[[0.1, 0.0, 0.0], [0.15, 0.05, 0.0], [0.2, 0.2, 0.0]]], np.float32)
    one = np.zeros(1, dtype=np.int64)
    got = {}
    for ahead in (0.0, 0.2):
        dr = DownlinkReckoner(1, H, threshold=0.02, heartbeat=1.0, lookahead=ahead)
        dr.commit(one, np.array([t0]), np.zeros((1, 3)), straight, one, t0)
        on_path = np.array([[0.1, 0.0, 0.0]])  # where the sent path says, at t1
        got[ahead] = bool(dr.due(one, np.array([t1]), on_path, t1, turning)[0])
        assert dr.ahead(one, np.array([t1]), on_path, turning)[0] > 0.02 or ahead == 0.0
    assert got == {0.0: False, 0.2: True}


@pytest.mark.parametrize("lookahead", [0.0, 0.2, 0.4])
def test_due_is_the_rule_on_the_numpy_distances(lookahead):
    # `due` takes its distances compiled; `error` and `ahead` are the same with numpy
    dr, slots, anchor, pos, off = random_paths(lookahead)
    err = dr.error(slots, anchor, pos)
    if lookahead:
        err = np.maximum(err, dr.ahead(slots, anchor, pos, off))
    want = (anchor > dr.anchor[slots]) & (err > dr.threshold)
    np.testing.assert_array_equal(dr.due(slots, anchor, pos, 1.0, off), want)
    np.testing.assert_array_equal(
        dr.due(slots, anchor, pos, 1.0),
        (anchor > dr.anchor[slots]) & (dr.error(slots, anchor, pos) > dr.threshold),
    )


def random_paths(lookahead: float, n: int = 500):
    """A reckoner with n sent paths, and newer (or older) samples and new paths for them."""
    rng = np.random.default_rng(int(lookahead * 10))
    dr = DownlinkReckoner(n, H, threshold=0.05, heartbeat=10.0, lookahead=lookahead)
    slots = rng.permutation(n)
    sent = rng.normal(0, 1, (n, 3, 3)).astype(np.float32)
    dr.commit(slots, rng.uniform(0, 1, n), rng.normal(0, 50, (n, 3)), sent, slots, 1.0)
    anchor = dr.anchor[slots] + rng.uniform(-0.1, 1.2, n)  # some older, some past the path
    pos = dr.pos[slots] + rng.normal(0, 0.05, (n, 3))
    off = rng.normal(0, 1, (n, 3, 3)).astype(np.float32)
    return dr, slots, anchor, pos, off
