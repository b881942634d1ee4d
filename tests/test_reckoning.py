import itertools

import numpy as np
import pytest

from client_demo.reckoning import (
    ClockMap,
    DeadReckoner,
    FixedRate,
    KalmanPaths,
    SendPolicy,
    ThresholdPolicy,
)

H = [0.1, 0.2, 0.3, 0.4]
A0 = 1_700_000_000.0  # server times read like Unix time: a difference is good to ~2.4e-7 s,
TOL = 1e-5  # so a velocity from two anchors 0.05 s apart is good to ~5e-6 (relative)
POS = np.array([1.0, 2.0, 0.5])


def curved_offsets(h=H, scale=1.0):
    """Offsets on a curve (not a line), so interpolation and extrapolation are distinguishable."""
    h = np.asarray(h)
    return scale * np.stack([1.5 * h, 2.0 * h**2, -0.1 * h], axis=1)


# ---------------------------------------------------------------------------------------
# ClockMap


def test_clock_not_ready_before_samples():
    c = ClockMap()
    assert not c.ready
    assert c.offset == 0.0
    assert c.rtt is None
    assert c.to_server(5.0) == 5.0
    c.on_frame(105.0, 5.0)
    assert c.ready
    assert c.rtt is None  # frames give no round trip


def test_clock_pong_picks_min_rtt(rng):
    true_off = 1_699_990_000.0
    c = ClockMap(window=16)
    t = 50.0
    best_rtt = None
    for i in range(16):
        up = 0.01 + rng.uniform(0, 0.1)  # asymmetric queueing: offset samples are biased
        down = 0.01 + rng.uniform(0, 0.02)
        if i == 9:
            up = down = 0.004  # the one clean round trip
        c.on_pong(t, t + up + down, t + up + true_off)
        best_rtt = min(best_rtt or 1e9, up + down)
        t += 2.0
    assert c.rtt == pytest.approx(0.008)
    assert c.rtt == pytest.approx(best_rtt)
    assert c.offset == pytest.approx(true_off, abs=1e-6)
    assert c.ready


def test_clock_window_drops_old_samples():
    c = ClockMap(window=3)
    c.on_pong(0.0, 0.002, 100.001)  # rtt 2 ms, offset 100
    for k in range(3):  # three worse ones push it out
        c.on_pong(10.0 + k, 10.05 + k, 10.025 + k + 101.0)
    assert c.rtt == pytest.approx(0.05)
    assert c.offset == pytest.approx(101.0)


def test_clock_frame_only_estimate_then_pong_wins(rng):
    true_off = 1000.0
    c = ClockMap()
    for k in range(40):
        s = 10.0 + 0.05 * k
        delay = 0.03 if k == 17 else 0.04 + rng.uniform(0, 0.1)
        c.on_frame(s + true_off, s + delay)
    assert c.offset == pytest.approx(true_off - 0.03)
    c.on_pong(20.0, 20.02, 20.01 + true_off)
    assert c.offset == pytest.approx(true_off)
    c.on_frame(30.0 + true_off + 5.0, 30.0)  # ignored once pongs exist
    assert c.offset == pytest.approx(true_off)


def test_clock_round_trip_and_sign():
    c = ClockMap()
    c.on_pong(10.0, 10.02, A0)  # server = local + offset
    assert c.offset == pytest.approx(A0 - 10.01)
    assert c.to_server(10.01) == pytest.approx(A0, abs=1e-6)
    for x in (0.0, 123.456, 1e4):
        assert c.to_local(c.to_server(x)) == pytest.approx(x, abs=1e-6)


def test_clock_bad_args():
    with pytest.raises(ValueError):
        ClockMap(window=0)
    c = ClockMap()
    with pytest.raises(ValueError):
        c.on_pong(1.0, 0.5, 3.0)
    with pytest.raises(ValueError):
        c.on_frame(float("nan"), 1.0)


# ---------------------------------------------------------------------------------------
# DeadReckoner: "gru"


def gru(**kw):
    dr = DeadReckoner(H, "gru", **kw)
    dr.update("a", A0, POS, curved_offsets(), A0 + 0.1)
    return dr


def test_gru_knots_midway_and_before_anchor():
    dr = gru()
    off = curved_offsets()
    knots = np.vstack([POS, POS + off])
    times = [0.0, *H]
    for tk, pk in zip(times, knots, strict=True):
        np.testing.assert_allclose(dr.position_at("a", A0 + tk), pk, atol=1e-6)
    for i in range(len(H)):
        mid = A0 + (times[i] + times[i + 1]) / 2
        np.testing.assert_allclose(
            dr.position_at("a", mid), (knots[i] + knots[i + 1]) / 2, atol=1e-6
        )
    for dt in (0.01, 0.05, 3.0):
        np.testing.assert_allclose(dr.position_at("a", A0 - dt), POS)
    assert dr.position_at("a", A0).dtype == np.float64


def test_gru_bounded_extrapolation_then_hold():
    dr = gru(extrapolate=0.5)
    off = curved_offsets()
    v = (off[-1] - off[-2]) / (H[-1] - H[-2])
    last = POS + off[-1]
    np.testing.assert_allclose(dr.position_at("a", A0 + H[-1] + 0.2), last + 0.2 * v, atol=1e-6)
    held = last + 0.5 * v
    for dt in (0.5, 0.7, 5.0):
        np.testing.assert_allclose(dr.position_at("a", A0 + H[-1] + dt), held, atol=1e-6)
    dr0 = gru(extrapolate=0.0)
    np.testing.assert_allclose(dr0.position_at("a", A0 + H[-1] + 0.3), last, atol=1e-6)


def test_gru_repeat_and_older_anchor_are_no_ops():
    dr = gru(convergence=0.2)
    a1, now1 = A0 + 0.05, A0 + 0.15
    dr.update("a", a1, POS + [0.3, 0.0, 0.0], curved_offsets(scale=-1.0), now1)  # blending
    ts = A0 + np.linspace(0.0, 0.8, 33)
    before = np.array([dr.position_at("a", t) for t in ts])
    # the server repeats the latest prediction every tick (anchor jitters by < 1 ms)
    for anchor in (a1, a1 + 0.0004, a1 - 0.0004):
        dr.update("a", anchor, POS + [9.0, 9.0, 9.0], curved_offsets(scale=3.0), now1 + 0.05)
    dr.update("a", A0, POS - 5.0, curved_offsets(), now1 + 0.1)  # older anchor
    after = np.array([dr.position_at("a", t) for t in ts])
    np.testing.assert_array_equal(after, before)
    # a genuinely newer one does change things
    dr.update("a", a1 + 0.05, POS + [9.0, 9.0, 9.0], curved_offsets(), now1 + 0.05)
    assert not np.allclose(dr.position_at("a", ts[-1]), before[-1])


def path_only(anchor, pos, off, mode="gru"):
    """A reckoner that knows only this path (a first update never blends)."""
    dr = DeadReckoner(H, mode)
    dr.update("x", anchor, pos, off, anchor)
    return dr


def test_gru_blending_continuous_then_converges():
    conv = 0.2
    dr = gru(convergence=conv)
    a1, now = A0 + 0.05, A0 + 0.17
    p1, off1 = POS + [0.4, -0.3, 0.0], curved_offsets(scale=-1.0)
    shown = dr.position_at("a", now)
    dr.update("a", a1, p1, off1, now)
    np.testing.assert_allclose(dr.position_at("a", now), shown, atol=1e-9)  # no jump
    new = path_only(a1, p1, off1)
    assert np.linalg.norm(shown - new.position_at("x", now)) > 0.3  # there was a gap to close
    for dt in (conv, conv + 0.01, conv + 0.3):
        np.testing.assert_allclose(
            dr.position_at("a", now + dt), new.position_at("x", now + dt), atol=1e-9
        )
    ts = now + np.linspace(0.0, conv, 21)
    gap = [np.linalg.norm(dr.position_at("a", t) - new.position_at("x", t)) for t in ts]
    assert all(g1 <= g0 + 1e-12 for g0, g1 in itertools.pairwise(gap))
    assert gap[0] > 0.3 and gap[-1] < 1e-9
    for i, u in ((5, 0.25), (10, 0.5), (15, 0.75)):  # the gap shrinks by 1 - smoothstep(u)
        assert gap[i] == pytest.approx(gap[0] * (1 - u * u * (3 - 2 * u)), rel=1e-4)
    # small steps early: no snap at the start of the blend either
    step0 = np.linalg.norm(dr.position_at("a", now + 0.005) - dr.position_at("a", now))
    assert step0 < 0.05


def test_gru_blend_of_a_blend_is_continuous():
    dr = gru(convergence=0.3)
    dr.update("a", A0 + 0.05, POS + 1.0, curved_offsets(scale=-1.0), A0 + 0.15)
    now = A0 + 0.25  # mid-blend
    shown = dr.position_at("a", now)
    dr.update("a", A0 + 0.10, POS - 1.0, curved_offsets(scale=2.0), now)
    np.testing.assert_allclose(dr.position_at("a", now), shown, atol=1e-9)


def test_gru_convergence_zero_snaps():
    dr = gru(convergence=0.0)
    a1, now = A0 + 0.05, A0 + 0.17
    p1, off1 = POS + [0.4, -0.3, 0.0], curved_offsets(scale=-1.0)
    dr.update("a", a1, p1, off1, now)
    new = path_only(a1, p1, off1)
    for t in (now, now + 0.01, now + 0.1):
        np.testing.assert_allclose(dr.position_at("a", t), new.position_at("x", t), atol=1e-9)


def test_positions_at_matches_position_at(rng):
    for mode in DeadReckoner.MODES:
        dr = DeadReckoner(H, mode)
        keys = list(range(20))
        for k in keys:
            for j in range(3):
                a = A0 + 0.05 * j + 0.001 * k
                dr.update(k, a, rng.normal(size=3), rng.normal(size=(len(H), 3)), a + 0.1)
        assert len(dr) == 20 and 7 in dr and set(dr.keys()) == set(keys)
        for t in (A0 + 0.12, A0 + 0.3, A0 + 2.0):
            want = np.array([dr.position_at(k, t) for k in keys[::-1]])
            np.testing.assert_array_equal(dr.positions_at(keys[::-1], t), want)
            out = np.full((20, 3), np.nan)
            assert dr.positions_at(keys[::-1], t, out=out) is out
            np.testing.assert_array_equal(out, want)
        assert dr.positions_at([], A0).shape == (0, 3)
        dr.remove(3)
        dr.remove("never-seen")
        assert 3 not in dr and len(dr) == 19
        with pytest.raises(KeyError):
            dr.position_at(3, A0)


def test_position_at_returns_a_copy():
    dr = gru()
    p = dr.position_at("a", A0 - 1.0)
    p[:] = 99.0
    np.testing.assert_allclose(dr.position_at("a", A0 - 1.0), POS)


def test_bad_arguments():
    with pytest.raises(ValueError):
        DeadReckoner(H, "kalman")
    for bad in ([], [0.2, 0.1], [0.0, 0.1], [0.1, float("inf")]):
        with pytest.raises(ValueError):
            DeadReckoner(bad)
    for kw in ({"extrapolate": -1}, {"convergence": -0.1}, {"interp_delay": -1}, {"history": 1}):
        with pytest.raises(ValueError):
            DeadReckoner(H, **kw)
    dr = DeadReckoner(H)
    with pytest.raises(ValueError):
        dr.update("a", A0, POS, np.zeros((len(H) + 1, 3)), A0)
    with pytest.raises(ValueError):
        dr.update("a", A0, [1.0], np.zeros((len(H), 3)), A0)
    with pytest.raises(ValueError):
        dr.update("a", float("nan"), POS, np.zeros((len(H), 3)), A0)
    assert "a" not in dr


def test_dims_two_offsets_mean_zero_z():
    dr = DeadReckoner(H)
    off = curved_offsets()
    dr.update("a", A0, POS, off[:, :2], A0)
    np.testing.assert_allclose(dr.position_at("a", A0 + H[1]), POS + [off[1, 0], off[1, 1], 0.0])


# ---------------------------------------------------------------------------------------
# DeadReckoner: "cv", "hold", "interp"


def test_cv_extrapolates_then_holds():
    dr = DeadReckoner(H, "cv", extrapolate=0.5, convergence=0.0)
    junk = np.full((len(H), 3), 50.0)  # offsets are ignored
    dr.update("a", A0, POS, junk, A0 + 0.1)
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.5), POS)  # one sample: no velocity
    p1 = POS + [0.075, -0.025, 0.0]  # 0.05 s later: v = (1.5, -0.5, 0)
    dr.update("a", A0 + 0.05, p1, junk, A0 + 0.15)
    v = np.array([1.5, -0.5, 0.0])
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.05 + 0.3), p1 + 0.3 * v, atol=TOL)
    span = H[-1] + 0.5
    for dt in (span, span + 0.2, 10.0):
        np.testing.assert_allclose(dr.position_at("a", A0 + 0.05 + dt), p1 + span * v, atol=TOL)
    np.testing.assert_allclose(dr.position_at("a", A0), p1)  # before the anchor
    # two samples more than 1 s apart: no velocity
    dr.update("a", A0 + 1.2, p1 + 3.0, junk, A0 + 1.3)
    np.testing.assert_allclose(dr.position_at("a", A0 + 1.7), p1 + 3.0)


def test_cv_blends_like_gru():
    dr = DeadReckoner(H, "cv", convergence=0.2)
    z = np.zeros((len(H), 3))
    dr.update("a", A0, POS, z, A0 + 0.1)
    dr.update("a", A0 + 0.05, POS + [0.075, 0.0, 0.0], z, A0 + 0.15)  # v = 1.5 x
    now = A0 + 0.20
    shown = dr.position_at("a", now)
    dr.update("a", A0 + 0.10, POS + [0.075, 0.2, 0.0], z, now)  # v = 4 y, a jump sideways
    np.testing.assert_allclose(dr.position_at("a", now), shown, atol=1e-9)
    expect = POS + [0.075, 0.2, 0.0] + [0.0, 4.0 * 0.35, 0.0]
    np.testing.assert_allclose(dr.position_at("a", now + 0.25), expect, atol=TOL)


def test_hold_shows_newest_without_blending():
    dr = DeadReckoner(H, "hold", convergence=0.5)
    z = np.zeros((len(H), 3))
    dr.update("a", A0, POS, z, A0 + 0.1)
    dr.update("a", A0 + 0.05, POS + 1.0, z, A0 + 0.15)
    for t in (A0 - 1.0, A0 + 0.15, A0 + 9.0):
        np.testing.assert_allclose(dr.position_at("a", t), POS + 1.0)
    dr.update("a", A0 + 0.01, POS - 7.0, z, A0 + 0.2)  # older: ignored
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.3), POS + 1.0)


def test_interp_renders_in_the_past_and_clamps():
    dr = DeadReckoner(H, "interp", interp_delay=0.1, history=3, convergence=0.5)
    z = np.zeros((len(H), 3))
    ps = [POS + [k, 2.0 * k, 0.0] for k in range(6)]
    for k in range(3):
        dr.update("a", A0 + 0.1 * k, ps[k], z, A0 + 0.1 * k + 0.05)
    # each sample arrived 0.05 s after its time: t renders t - 0.05 - 0.1 (the playout delay)
    # t = 0.30 renders 0.15: midway between samples 1 and 2
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.30), (ps[1] + ps[2]) / 2, atol=TOL)
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.18), 0.7 * ps[0] + 0.3 * ps[1], atol=TOL)
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.10), ps[0])  # before the oldest
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.5), ps[2])  # after the newest: hold
    for k in range(3, 6):  # history=3 keeps samples 3..5
        dr.update("a", A0 + 0.1 * k, ps[k], z, A0 + 0.1 * k + 0.05)
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.15), ps[3])
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.60), (ps[4] + ps[5]) / 2, atol=TOL)
    # slower arrivals move the playout back by the same amount
    late = DeadReckoner(H, "interp", interp_delay=0.1, history=3)
    for k in range(3):
        late.update("a", A0 + 0.1 * k, ps[k], z, A0 + 0.1 * k + 0.15)
    np.testing.assert_allclose(late.position_at("a", A0 + 0.40), (ps[1] + ps[2]) / 2, atol=TOL)


# ---------------------------------------------------------------------------------------
# KalmanPaths: the offline Kalman baseline, online


def test_kalman_paths_match_the_offline_kalman_baseline(rng):
    """Fed one sample at a time, in batches of keys, with repeats: the paths of
    `training.baselines.KalmanCV` (same filter, same resets at a gap and a teleport)."""
    from training.baselines import KalmanCV

    n = 120
    t = A0 + np.cumsum(rng.uniform(0.03, 0.15, n))
    t[60:] += 2.0  # a gap longer than max_gap: a reset
    p = np.cumsum(rng.normal(0, 0.1, (n, 3)), axis=0)
    p[90:] += 30.0  # a teleport: a reset
    kf = KalmanCV(q=2.0, r=0.02)
    want = kf(t - A0, p, np.asarray(H))  # offline, times from 0
    kp = KalmanPaths(H, 2.0, 0.02)
    got = {"a": np.zeros_like(want), "b": np.zeros_like(want)}
    for k in range(n):
        keys = ["b", "a"] if k % 2 else ["a", "b"]
        rows, off = kp.update(keys, [t[k], t[k]], [p[k], p[k]])
        assert rows == [0, 1] and off.shape == (2, len(H), 3)
        for i, key in enumerate(keys):
            got[key][k] = p[k] + off[i]
        rows, _ = kp.update(["a"], [t[k] + 0.001], [p[k] + 5.0])  # a repeat: skipped
        assert rows == []
    np.testing.assert_allclose(got["a"], want, atol=1e-9)
    np.testing.assert_allclose(got["b"], want, atol=1e-9)


def test_kalman_paths_drawn_by_the_path_reckoner():
    """A new key starts at its sample, not moving; a steady walk is followed; remove forgets."""
    kp = KalmanPaths(H, 100.0, 0.001)
    dr = DeadReckoner(H, "gru", convergence=0.0)
    v = np.array([1.5, -0.5, 0.0])
    for k in range(20):
        t = A0 + 0.1 * k
        rows, off = kp.update(["x"], [t], [POS + v * 0.1 * k])
        assert rows == [0]
        if k == 0:
            np.testing.assert_allclose(off, 0.0)  # a reset: zero velocity
        dr.update("x", t, POS + v * 0.1 * k, off[0], t)
    t = A0 + 1.9
    np.testing.assert_allclose(dr.position_at("x", t + 0.25), POS + v * 2.15, atol=1e-3)
    assert "x" in kp
    kp.remove("x")
    assert "x" not in kp
    rows, off = kp.update(["x"], [t + 0.1], [POS])
    np.testing.assert_allclose(off, 0.0)  # forgotten: a fresh start
    kp.clear()
    assert "x" not in kp


def test_kalman_paths_bad_arguments():
    with pytest.raises(ValueError):
        KalmanPaths(H, 0.0, 0.01)
    with pytest.raises(ValueError):
        KalmanPaths(H, 1.0, float("nan"))
    with pytest.raises(ValueError):
        KalmanPaths([0.2, 0.1], 1.0, 0.01)
    kp = KalmanPaths(H, 1.0, 0.01)
    with pytest.raises(ValueError):
        kp.update(["a", "b"], [1.0], [POS])
    with pytest.raises(ValueError):
        kp.update(["a"], [1.0], [[np.nan, 0.0, 0.0]])
    assert kp.update([], [], np.zeros((0, 3)))[0] == []


# ---------------------------------------------------------------------------------------
# Send policies


def run_policy(pol, times, path, seq0=0):
    """Feed samples; return the indices sent."""
    sent, seq = [], seq0
    for i, t in enumerate(times):
        if pol.should_send(t, path[i]):
            pol.sent(t, path[i], seq=seq)
            seq += 1
            sent.append(i)
    return sent


def test_fixed_rate_counts():
    times = np.arange(60) / 60.0  # 1 s at 60 Hz
    pts = np.zeros((60, 3))
    assert len(run_policy(FixedRate(10), times, pts)) == 10
    assert run_policy(FixedRate(10), times, pts)[:3] == [0, 6, 12]
    assert len(run_policy(FixedRate(30), times, pts)) == 30
    assert len(run_policy(FixedRate(1000), times, pts)) == 60
    # jittered sampling (a real-time loop) still gives the full rate, not one sample in 7
    long = np.arange(600) / 60.0 + np.random.default_rng(1).uniform(-0.004, 0.004, 600)
    assert abs(len(run_policy(FixedRate(10), long, np.zeros((600, 3)))) - 100) <= 1
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            FixedRate(bad)
    with pytest.raises(NotImplementedError):
        SendPolicy().should_send(0.0, POS)


def line(times, v=(1.5, 0.5, 0.0), p0=(3.0, -1.0, 0.0)):
    return np.asarray(p0) + np.asarray(times)[:, None] * np.asarray(v)


def test_threshold_straight_line_sends_first_samples_and_heartbeats():
    times = np.arange(int(5.5 * 60)) / 60.0
    sent = run_policy(ThresholdPolicy(threshold=0.1, heartbeat=1.0), times, line(times))
    # first sample; the second once the zero-velocity stand-in is 0.1 m off (1.58 m/s: 4th
    # sample at 60 Hz); then the CV stand-in is exact, so only heartbeats
    assert sent[:2] == [0, 4]
    gaps = np.diff(times[sent[1:]])
    assert len(sent) == 7
    np.testing.assert_allclose(gaps, 1.0, atol=1 / 60 + 1e-9)


def test_threshold_turn_triggers_a_send():
    rate, turn, speed = 60.0, 1.5, 1.5
    times = np.arange(int(3.0 * rate)) / rate
    path = np.where(
        (times < turn)[:, None],
        line(times, (speed, 0.0, 0.0), (0.0, 0.0, 0.0)),
        line(times - turn, (0.0, speed, 0.0), (speed * turn, 0.0, 0.0)),
    )
    pol = ThresholdPolicy(threshold=0.1, heartbeat=1.0)
    sent = run_policy(pol, times, path)
    straight = line(times, (speed, 0.0, 0.0), (0.0, 0.0, 0.0))  # what the stand-in predicts
    dev = np.linalg.norm(path - straight, axis=1)
    first_over = int(np.argmax(dev > 0.1))
    assert times[first_over] > turn
    after = [i for i in sent if times[i] >= turn]
    assert after and first_over <= after[0] <= first_over + 1
    assert all(times[i] < 1.2 for i in sent if times[i] < turn)  # no spurious sends before


def test_threshold_min_interval(rng):
    rate = 240.0
    times = np.arange(int(2.0 * rate)) / rate
    path = rng.normal(scale=1.0, size=(len(times), 3))  # wildly off every sample
    pol = ThresholdPolicy(threshold=0.1, heartbeat=1.0, min_interval=1 / 30)
    gaps = np.diff(times[run_policy(pol, times, path)])
    assert gaps.min() >= 1 / 30 - 1e-9
    assert gaps.max() <= 1 / 30 + 1 / rate + 1e-9  # and it does send at every chance


def test_threshold_uses_own_path_only_from_latest_seq():
    horizons = [0.25, 0.5, 0.75, 1.0]
    pol = ThresholdPolicy(threshold=0.1, heartbeat=5.0, min_interval=0.0, horizons=horizons)
    pol.sent(0.0, [0.0, 0.0, 0.0], seq=7)
    pol.sent(0.1, [0.1, 0.0, 0.0], seq=8)  # CV stand-in: 1 m/s along x
    own = np.array([[0.0, 0.25 * k, 0.0] for k in range(1, 5)])  # the server says: along y
    on_path = np.array([0.1, 0.25, 0.0])  # where the own path puts us at t = 0.35
    np.testing.assert_allclose(pol.predicted(0.35), [0.35, 0.0, 0.0])
    pol.on_own_path(0.1, [0.1, 0.0, 0.0], own, seq=7)  # from an older sample: not used
    np.testing.assert_allclose(pol.predicted(0.35), [0.35, 0.0, 0.0])
    assert pol.should_send(0.35, on_path)
    pol.on_own_path(0.1, [0.1, 0.0, 0.0], own, seq=8)
    np.testing.assert_allclose(pol.predicted(0.35), on_path)
    assert not pol.should_send(0.35, on_path)
    pol.sent(0.4, [0.4, 0.0, 0.0], seq=9)  # the path is now stale again: CV stand-in
    np.testing.assert_allclose(pol.predicted(0.6), [0.6, 0.0, 0.0])
    assert pol.should_send(0.6, own[1] + [0.1, 0.0, 0.0])


def test_threshold_seq_wraps():
    pol = ThresholdPolicy(horizons=[0.5, 1.0], min_interval=0.0)
    pol.sent(0.0, [0.0, 0.0, 0.0], seq=2**32 - 1)
    pol.on_own_path(0.0, [0.0, 0.0, 0.0], [[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], seq=0)
    np.testing.assert_allclose(pol.predicted(0.5), [1.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------
# Scenario: the plumbing ranks the methods as it should on a curve


def test_scenario_circle_true_future_beats_cv_beats_hold():
    r, speed, latency, tick = 5.0, 1.5, 0.1, 0.05
    w = speed / r
    horizons = np.round(np.arange(1, 11) * 0.1, 10)

    def truth(t):
        t = np.asarray(t, dtype=float) - A0
        return np.stack([r * np.cos(w * t), r * np.sin(w * t), np.zeros_like(t)], axis=-1)

    anchors = A0 + np.arange(0, 12.0, tick)
    renders = A0 + np.arange(1.0, 11.0, 1 / 30)
    errs = {}
    for mode in ("gru", "cv", "hold", "interp"):
        dr = DeadReckoner(horizons, mode)
        j, e = 0, []
        for t in renders:
            while j < len(anchors) and anchors[j] + latency <= t:
                a = anchors[j]
                p = truth(a)
                dr.update("b", a, p, truth(a + horizons) - p, a + latency)
                j += 1
            e.append(np.linalg.norm(dr.position_at("b", t) - truth(t)))
        errs[mode] = float(np.mean(e))
    assert errs["gru"] < 0.5 * errs["cv"]
    assert errs["cv"] < 0.2 * errs["hold"]
    assert errs["hold"] > speed * latency  # at least the latency's worth behind
    assert errs["interp"] > speed * latency
