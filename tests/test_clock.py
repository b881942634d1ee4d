"""`client_demo.clock.ClockMap`: the server clock on the local one."""

import pytest

from client_demo.clock import ClockMap

A0 = 1_700_000_000.0  # server times read like Unix time


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
