"""`client_demo.send_policy`: the fixed-rate and the DIS-style threshold send policies."""

import numpy as np
import pytest

from client_demo.send_policy import FixedRate, SendPolicy, ThresholdPolicy

POS = np.array([1.0, 2.0, 0.5])


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
