import numpy as np
import pytest

from server.core import blend as BL
from server.core.blend import EXPERTS, BlendConfig, BlendState

H = np.array([0.1, 0.2, 0.5, 1.0])


def stream(n=120, dt=0.05, seed=0):
    """A curving walk sampled at 20 Hz, with the per-sample inputs `replay` takes."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * dt + rng.uniform(0, 0.005, n)
    p = np.stack([np.cos(0.4 * t) * 5, np.sin(0.4 * t) * 5, np.zeros(n)], axis=1)
    reset = np.zeros(n, dtype=bool)
    reset[0] = True
    v = np.zeros((n, 3))
    v[1:] = np.diff(p, axis=0) / np.diff(t)[:, None]
    dp = rng.normal(0, 0.01, (n, 3))
    pv = v + rng.normal(0, 0.05, (n, 3))
    net = v[:, None, :] * H[None, :, None] + rng.normal(0, 0.05, (n, len(H), 3))
    return t, p, reset, net, v, dp, pv


def test_config_rejects_bad_priors():
    with pytest.raises(ValueError):
        BlendConfig(prior=(0.0, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError):
        BlendConfig(prior=(1.0, -0.1, 0.0, 0.1))
    with pytest.raises(ValueError):
        BlendConfig(prior=(1.0, 1.0))


@pytest.mark.parametrize("e", range(len(EXPERTS)))
def test_a_blend_of_one_expert_is_that_expert(e):
    t, p, reset, net, v, dp, pv = stream()
    prior = [0.0] * len(EXPERTS)
    prior[e] = 1.0
    cfg = BlendConfig(prior=tuple(prior))
    off, w = BL.replay(t, p, reset, net, v, dp, pv, H, cfg)
    # the expert's own offsets, as the replay builds them (the turn rate is stateful)
    state = BlendState(1, H)
    want = np.zeros_like(off)
    for k in range(len(t)):
        rows = np.array([0])
        filt = BL.update_filters(
            state, rows, t[k : k + 1], p[k : k + 1], pv[k : k + 1], reset[k : k + 1], H, cfg
        )
        ex = BL.expert_offsets(net[k : k + 1], v[k : k + 1], dp[k : k + 1], pv[k : k + 1], filt, H)
        BL.step(state, rows, t[k : k + 1], p[k : k + 1], reset[k : k + 1], ex, H, cfg)
        want[k] = ex[0, :, e]
    np.testing.assert_array_equal(off, want)
    assert np.all(w[:, e] == 1.0)


def test_an_expert_that_is_always_right_takes_the_weight_in_bounded_time():
    """Expert 2 predicts the true future exactly, the others are off by 10-20 cm: within a
    few memory constants (plus the longest horizon) it holds > 90 % of every horizon
    (relative losses: the others' ~0.5 and more, so eta = 8 makes it decisive from
    equal prior weights; a smaller prior weight adds ln(prior ratio) / eta to the loss
    gap it needs)."""
    cfg = BlendConfig(memory=1.0, eta=8.0, prior=(1.0,) * len(EXPERTS))
    n, dt = 200, 0.05
    t = np.arange(n) * dt
    truth = lambda tt: np.stack([1.2 * tt, np.sin(tt), 0 * tt], axis=-1)  # noqa: E731
    p = truth(t)
    state = BlendState(1, H)
    rows = np.array([0])
    rng = np.random.default_rng(3)
    first_above = None
    for k in range(n):
        exact = truth(t[k] + H) - p[k]  # (H, 3)
        ex = np.repeat(exact[None, :, None], len(EXPERTS), axis=2)  # (1, H, E, 3)
        for e in (0, 1, 3, 4, 5, 6):
            ex[0, :, e] += rng.normal(0, [0.1, 0.2, 0.1, 0.1, 0.2, 0.1, 0.2][e], (len(H), 3))
        _, w = BL.step(state, rows, t[k : k + 1], p[k : k + 1], np.array([k == 0]), ex, H, cfg)
        if first_above is None and np.all(w[0, 2] > 0.9):
            first_above = k
    # bounded: a prediction comes due after at most max(H) + one sample; ~3 memory
    # constants of scorings make exp(-eta * L) decisive
    assert first_above is not None
    assert t[first_above] <= H[-1] + 4 * cfg.memory
    assert np.all(w[0, 2] > 0.85)  # and keeps it (about 0.93 at these noise levels)


def test_served_paths_are_causal():
    """No sample newer than a prediction's time reaches it: changing the stream after
    sample k leaves every served path up to k unchanged."""
    a = stream(seed=1)
    k = 70
    b = [x.copy() for x in a]
    rng = np.random.default_rng(9)
    b[1][k + 1 :] += rng.normal(0, 0.5, b[1][k + 1 :].shape)  # other positions
    b[3][k + 1 :] += 0.3  # other network outputs
    oa, wa = BL.replay(*a, H, BlendConfig())
    ob, wb = BL.replay(*b, H, BlendConfig())
    np.testing.assert_array_equal(oa[: k + 1], ob[: k + 1])
    np.testing.assert_array_equal(wa[: k + 1], wb[: k + 1])
    assert not np.allclose(oa[k + 1 :], ob[k + 1 :])


def test_a_due_prediction_is_scored_on_the_truth_interpolated_at_its_time():
    """One horizon, two experts that differ only in where they put the avatar at t + 0.1:
    the one that matches the interpolation between the two samples around t + 0.1 wins."""
    cfg = BlendConfig(prior=(0.5, 0.5) + (0.0,) * (len(EXPERTS) - 2), memory=0.5)
    h = np.array([0.1])
    state = BlendState(1, h)
    rows = np.array([0])
    # samples at 0, 0.08, 0.16 ...; walking at 1 m/s along x: truth at 0.1 is x = 0.1
    for k in range(12):
        tk = 0.08 * k
        ex = np.zeros((1, 1, len(EXPERTS), 3))
        ex[0, 0, 0, 0] = 0.1  # right
        ex[0, 0, 1, 0] = 0.16  # where the next sample is: wrong at t + 0.1
        _, w = BL.step(
            state, rows, np.array([tk]), np.array([[tk, 0, 0]]), np.array([k == 0]), ex, h, cfg
        )
    assert w[0, 0, 0] > 0.9


def test_a_reset_keeps_the_losses_and_a_join_clears_them():
    t, p, reset, net, v, dp, pv = stream()
    cfg = BlendConfig()
    state = BlendState(2, H)
    rows = np.array([0])
    for k in range(60):
        filt = BL.update_filters(
            state, rows, t[k : k + 1], p[k : k + 1], pv[k : k + 1], reset[k : k + 1], H, cfg
        )
        ex = BL.expert_offsets(net[k : k + 1], v[k : k + 1], dp[k : k + 1], pv[k : k + 1], filt, H)
        BL.step(state, rows, t[k : k + 1], p[k : k + 1], reset[k : k + 1], ex, H, cfg)
    learned = state.weights(rows, cfg)
    assert not np.allclose(learned, state.weights(np.array([1]), cfg))  # row 1: the prior
    ex = np.zeros((1, len(H), len(EXPERTS), 3))
    _, w = BL.step(state, rows, t[60:61] + 5.0, p[60:61], np.array([True]), ex, H, cfg)
    np.testing.assert_allclose(w, learned)  # a reset: same person, same weights
    lanes0 = state.lane_start  # the first lane of each horizon: new flights from the reset
    assert (state.fl_t[0, lanes0] == t[60] + 5.0).all() and np.isnan(
        state.fl_t[0]
    ).sum() == state.F - len(H)
    state.clear(0)
    np.testing.assert_allclose(
        state.weights(rows, cfg)[0, :, 0], np.array(cfg.prior) / sum(cfg.prior)
    )


def turning_expert(dp, v, omega):
    """The turning expert's offsets (n, H, 3) from `expert_offsets` alone."""
    n, z = len(omega), np.zeros((len(omega), 3))
    zh = np.zeros((n, len(H), 3))
    return BL.expert_offsets(zh, z, dp, v, (omega, z, z, zh, zh), H)[:, :, EXPERTS.index("turn")]


def test_the_turning_expert_follows_a_circle_and_reduces_to_constant_velocity():
    r, speed = 4.0, 1.5
    omega = speed / r
    # on a circle of radius r about the origin, at angle 0, moving counter-clockwise
    v = np.array([[0.0, speed, 0.1]])
    off = turning_expert(np.zeros((1, 3)), v, np.array([omega]))
    ang = omega * H
    want = np.stack([r * np.cos(ang) - r, r * np.sin(ang), 0.1 * H], axis=-1)
    np.testing.assert_allclose(off[0], want, atol=1e-6)  # float32 offsets
    straight = turning_expert(np.ones((1, 3)), v, np.array([1e-9]))
    np.testing.assert_allclose(straight[0], 1.0 + v * H[:, None], atol=1e-6)


def test_update_filters_measures_the_turn_rate_of_the_kalman_velocity():
    cfg = BlendConfig(turn_tau=0.1)
    state = BlendState(1, H)
    rows = np.array([0])
    omega_true, dt = 0.8, 0.05
    for k in range(60):
        th = omega_true * k * dt
        pv = np.array([[np.cos(th), np.sin(th), 0.0]]) * 1.5
        w, *_ = BL.update_filters(
            state, rows, np.array([k * dt]), np.zeros((1, 3)), pv, np.array([k == 0]), H, cfg
        )
        state.prev[0, 0] = k * dt  # what `step` records (row 0's previous sample time)
    assert w[0] == pytest.approx(omega_true, rel=1e-3)


def test_the_responsive_kalman_expert_is_the_kalman_filter_with_its_own_tuning():
    from training.baselines import KalmanCV

    t, p, reset, _, _, _, pv = stream(seed=4)
    cfg = BlendConfig()
    state = BlendState(1, H)
    rows = np.array([0])
    got = []
    for k in range(len(t)):
        _, fdp, fv, *_ = BL.update_filters(
            state, rows, t[k : k + 1], p[k : k + 1], pv[k : k + 1], reset[k : k + 1], H, cfg
        )
        state.prev[0] = [t[k], *p[k]]  # what `step` records
        got.append(np.concatenate([fdp[0] + p[k], fv[0]]))
    pos, vel = KalmanCV(q=cfg.fast_q, r=cfg.fast_r).filter(t, p)
    np.testing.assert_allclose(np.array(got), np.concatenate([pos, vel], axis=1), atol=1e-9)


def test_samples_faster_than_the_lanes_fill_them_and_step_on():
    """A sender far faster than `lane_dt` (1 ms apart): every lane fills up, nothing can
    be armed for a while, and the blend steps on (finite, weights summing to 1)."""
    cfg = BlendConfig(max_lanes=2)
    state = BlendState(3, H, cfg.lane_dt, cfg.max_lanes)
    rows = np.array([0, 2])
    for k in range(40):
        t = np.array([k * 1e-3, k * 1e-3 + 0.5])
        p = np.array([[k * 1e-3, 0, 0], [0, k * 1e-3, 0]])
        ex = np.zeros((2, len(H), len(EXPERTS), 3), dtype=np.float32)
        off, w = BL.step(state, rows, t, p, np.array([k == 0, k == 0]), ex, H, cfg)
        assert np.isfinite(off).all() and np.allclose(w.sum(axis=1), 1.0)
    assert not np.isnan(state.fl_t[rows]).any()  # every lane in flight


def test_a_newcomer_starts_from_its_rooms_weights_and_a_new_room_from_the_prior():
    """Rows 0 and 1 in room 0 learn that expert 2 is right; a newcomer there (row 2) starts
    trusting it, one in another room (row 3) starts from the prior weights; and the rows'
    order within a tick does not change what the room learns."""
    cfg = BlendConfig(memory=1.0, eta=8.0, prior=(1.0,) * len(EXPERTS), room_rate=0.02)
    n, dt = 80, 0.05

    def truth(tt):
        return np.stack([1.2 * tt, np.sin(tt), 0 * tt], axis=-1)

    def run(order):
        state = BlendState(4, H)
        rows = np.array(order)
        rng = np.random.default_rng(3)
        for k in range(n):
            t = np.full(2, k * dt)
            p = truth(t) + np.array([[0, 0, 0], [5, 0, 0]])[rows]
            exact = truth(k * dt + H) - truth(np.array([k * dt]))  # (H, 3)
            ex = np.repeat(np.repeat(exact[None, :, None], len(EXPERTS), axis=2), 2, axis=0)
            noise = rng.normal(0, 0.15, ex.shape)
            noise[:, :, 2] = 0.0
            BL.step(state, rows, t, p, np.array([k == 0] * 2), ex + noise, H, cfg, room=[0, 0])
        return state

    state = run([0, 1])
    assert np.all(state.weights(np.array([0]), cfg)[0, 2] > 0.9)
    ex = np.zeros((2, len(H), len(EXPERTS), 3))
    t, p = np.full(2, n * dt), np.zeros((2, 3))
    _, w = BL.step(state, np.array([2, 3]), t, p, np.array([True, True]), ex, H, cfg, [0, 1])
    assert np.all(w[0, 2] > 0.5)  # the room's experience
    np.testing.assert_allclose(w[1], 1.0 / len(EXPERTS))  # a new room: the prior
    other = run([1, 0])
    np.testing.assert_allclose(other.room, run([0, 1]).room, rtol=1e-12, atol=1e-15)
