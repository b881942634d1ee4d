import numpy as np
import pytest

from training.baselines import KalmanCV, cv_last, cv_window, hold
from training.datasets import Track
from training.render import (
    NetworkConfig,
    positions_along_paths,
    received_stream,
    render_errors,
    summarise,
)

SPEED = 1.5
H = np.array([0.1, 0.2, 0.4])


def cv_track(duration=20.0, rate=60.0, truth_end=None) -> Track:
    """Straight line at SPEED along x; samples until `duration`, truth until `truth_end`."""
    t = np.arange(round(duration * rate) + 1) / rate
    te = np.array([0.0, duration if truth_end is None else truth_end])
    d = np.array([SPEED, 0.0, 0.0])
    return Track("u", t, t[:, None] * d, truth_t=te, truth_p=te[:, None] * d)


def test_received_stream_thins_60hz_to_10hz():
    tr = cv_track(20.0, 60.0)
    idx = received_stream(tr, NetworkConfig(loss=0.0))
    assert idx[0] == 0 and abs(idx.size - 201) <= 1
    np.testing.assert_allclose(np.diff(tr.t[idx]), 0.1, atol=1e-9)


def test_received_stream_slow_stream_sent_entirely():
    tr = cv_track(20.0, 2.5)
    np.testing.assert_array_equal(received_stream(tr, NetworkConfig(loss=0.0)), np.arange(51))


def test_received_stream_loss_fraction():
    tr = cv_track(400.0, 60.0)
    sent = received_stream(tr, NetworkConfig(loss=0.0)).size
    got = received_stream(tr, NetworkConfig(loss=0.2, seed=3))
    assert abs(1 - got.size / sent - 0.2) < 0.03
    assert np.all(np.diff(got) > 0)
    # deterministic for a seed
    np.testing.assert_array_equal(got, received_stream(tr, NetworkConfig(loss=0.2, seed=3)))


def test_positions_along_paths_piecewise_then_extrapolate_then_hold():
    h = np.array([0.1, 0.3])
    d = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.8, 5.0])
    m = d.size
    p0 = np.zeros((m, 3))
    paths = np.zeros((m, 2, 3))
    paths[:, :, 0] = [1.0, 3.0]  # last segment: 10 m/s
    x = positions_along_paths(p0, paths, h, d, max_extrapolate=0.5)[:, 0]
    np.testing.assert_allclose(x, [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 8.0, 8.0])
    x = positions_along_paths(p0, paths, h, d, max_extrapolate=0.0)[:, 0]
    np.testing.assert_allclose(x[-3:], 3.0)
    with pytest.raises(ValueError):
        positions_along_paths(p0, paths, np.array([0.3, 0.1]), d, 0.5)


def test_cv_track_render_errors_and_ordering():
    tr = cv_track(20.0, 60.0)
    net = NetworkConfig(loss=0.0)
    errs = render_errors(tr, {"cv": cv_last, "kalman": KalmanCV(q=0.01, r=0.01)}, H, net)
    assert set(errs) == {"hold", "interp", "cv", "kalman"}
    n = errs["hold"].size
    assert all(e.size == n for e in errs.values())
    assert n == pytest.approx((20.0 - net.latency) * net.fps, abs=2)
    skip = int(0.25 * net.fps)  # until the second sample has arrived and interp has history
    cv, hld, itp = errs["cv"][skip:], errs["hold"][skip:], errs["interp"][skip:]
    assert cv.max() < 1e-9
    assert np.median(errs["kalman"][n // 2 :]) < 1e-3
    # hold: latency + on average ~half a send interval (frame-quantised) behind
    assert SPEED * (net.latency + 0.03) < hld.mean() < SPEED * (net.latency + 0.06)
    assert hld.min() == pytest.approx(SPEED * net.latency, abs=1e-9)
    assert hld.max() < SPEED * (net.latency + 0.1) + 1e-9
    # interp: exactly latency + interp_delay behind on a straight line
    np.testing.assert_allclose(itp, SPEED * (net.latency + net.interp_delay), atol=1e-9)
    assert cv.mean() < hld.mean() < itp.mean()


def test_extrapolation_is_bounded_then_holds():
    tr = cv_track(3.0, 60.0, truth_end=6.0)  # the sender goes silent at 3 s, motion goes on
    net = NetworkConfig(loss=0.0)
    h = np.array([0.1, 0.2])
    e = render_errors(tr, {"cv": cv_last}, h, net)["cv"]
    last = tr.t[received_stream(tr, net)][-1]
    tau = tr.t[0] + net.latency + np.arange(e.size) / net.fps
    assert tau[-1] == pytest.approx(6.0, abs=1 / net.fps)
    late = tau >= last + net.latency
    expect = SPEED * np.maximum(tau[late] - last - (h[-1] + net.max_extrapolate), 0.0)
    np.testing.assert_allclose(e[late], expect, atol=1e-9)
    assert e[late][-1] > 1.0 and e[late][0] < 1e-9


def test_predictors_see_the_received_stream_once():
    tr = cv_track(10.0, 60.0)
    net = NetworkConfig(loss=0.3, seed=5)
    seen = []

    def spy(t, p, horizons):
        seen.append(t.copy())
        return hold(t, p, horizons)

    errs = render_errors(tr, {"a": spy, "b": spy, "w": cv_window}, H, net)
    np.testing.assert_array_equal(seen[0], tr.t[received_stream(tr, net)])
    np.testing.assert_array_equal(seen[0], seen[1])
    # a holding path renders exactly like the built-in hold
    np.testing.assert_allclose(errs["a"], errs["hold"])


def test_reserved_name_and_empty_stream():
    tr = cv_track(1.0, 60.0)
    with pytest.raises(ValueError):
        render_errors(tr, {"interp": hold}, H, NetworkConfig())
    errs = render_errors(tr, {"cv": cv_last}, H, NetworkConfig(loss=1.0))
    assert {k: v.size for k, v in errs.items()} == {"hold": 0, "interp": 0, "cv": 0}


def test_summarise():
    s = summarise({"a": [np.array([1.0, 2.0]), np.array([3.0])], "b": []})
    assert s["a"]["n"] == 3 and s["a"]["mean"] == pytest.approx(2.0)
    assert s["a"]["p95"] == pytest.approx(np.percentile([1, 2, 3], 95))
    assert s["b"]["n"] == 0 and np.isnan(s["b"]["mean"])
