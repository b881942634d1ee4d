"""Tests for training.baselines: hold, constant velocity, Kalman, resets, the error metric
(the IMM is run among the predictors here; its own tests are tests/test_imm.py)."""

import dataclasses
import time

import numpy as np
import pytest

from training.baselines import (
    KalmanCV,
    cv_last,
    cv_window,
    hold,
    horizon_errors,
    segment_ids,
)
from training.datasets import Track
from training.imm import IMM

H = np.array([0.1, 0.3, 0.6, 1.0])
VEL = np.array([1.5, -0.5, 0.1])
PREDICTORS = {
    "hold": hold,
    "cv": cv_last,
    "cv_window": cv_window,
    "kalman": KalmanCV(q=0.1, r=0.01),
    "imm": IMM(q_cv=0.1, q_ct=1.0, q_w=3.0, r=0.01),
}


def line_track(n=200, rate=30.0, noise=0.0, jitter=False, seed=0) -> Track:
    rng = np.random.default_rng(seed)
    dt = rng.uniform(0.5, 1.5, n) / rate if jitter else np.full(n, 1.0 / rate)
    t = np.cumsum(dt)
    truth_p = np.array([1.0, 2.0, 0.0]) + (t[:, None] - t[0]) * VEL
    p = truth_p + noise * rng.standard_normal((n, 3))
    return Track("u", t, p, truth_t=t.copy(), truth_p=truth_p)


def circle_track(n=400, rate=20.0, noise=0.0, seed=0) -> Track:
    rng = np.random.default_rng(seed)
    tt = np.arange(0.0, n / rate + 1.5, 0.002)
    w = 1.5 / 3.0  # 1.5 m/s on a 3 m radius

    def pos(x):
        return np.stack([3 * np.cos(w * x), 3 * np.sin(w * x), 0.1 * np.sin(2 * x)], axis=1)

    t = np.arange(n) / rate
    p = pos(t) + noise * rng.standard_normal((n, 3))
    return Track("c", t, p, truth_t=tt, truth_p=pos(tt))


def reset_track():
    """Line with a 2 s gap before sample 40 and a 50 m teleport at sample 80."""
    t = np.arange(120) / 30.0
    t[40:] += 2.0
    p = np.array([0.0, 0.0, 0.0]) + t[:, None] * VEL
    p[80:] += np.array([50.0, 0.0, 0.0])
    return t, p


def test_segment_ids():
    t, p = reset_track()
    ids = segment_ids(t, p)
    assert ids.dtype.kind == "i"
    np.testing.assert_array_equal(ids, np.repeat([0, 1, 2], 40))
    np.testing.assert_array_equal(segment_ids(t, p, max_gap=3.0, max_speed=1e4), 0)
    assert segment_ids(t[:0], p[:0]).shape == (0,)


@pytest.mark.parametrize("name", list(PREDICTORS))
def test_shape_and_first_sample_holds(name):
    tr = line_track(50)
    paths = PREDICTORS[name](tr.t, tr.p, H)
    assert paths.shape == (50, H.size, 3)
    np.testing.assert_allclose(paths[0], np.repeat(tr.p[:1], H.size, axis=0))


def test_hold_error_is_speed_times_horizon():
    tr = line_track(100)
    err = horizon_errors(tr, hold(tr.t, tr.p, H), H)
    ok = ~np.isnan(err)
    expect = np.broadcast_to(np.linalg.norm(VEL) * H, err.shape)
    np.testing.assert_allclose(err[ok], expect[ok], rtol=1e-9)


@pytest.mark.parametrize("name", ["cv", "cv_window"])
def test_cv_exact_on_straight_line(name):
    tr = line_track(150, jitter=True)
    err = horizon_errors(tr, PREDICTORS[name](tr.t, tr.p, H), H)
    assert np.nanmax(err[1:]) < 1e-9


def test_kalman_converges_on_straight_line():
    tr = line_track(300, jitter=True)
    kf = KalmanCV(q=0.01, r=0.01)
    err = horizon_errors(tr, kf(tr.t, tr.p, H), H)
    assert np.nanmax(err[100:]) < 1e-3
    _, vel = kf.filter(tr.t, tr.p)
    np.testing.assert_allclose(vel[-1], VEL, atol=1e-4)


def test_horizon_errors_nan_past_end_and_shape_check():
    tr = line_track(60)
    err = horizon_errors(tr, hold(tr.t, tr.p, H), H)
    assert err.shape == (60, H.size)
    assert np.isnan(err[-1]).all() and not np.isnan(err[0]).any()
    with pytest.raises(ValueError):
        horizon_errors(tr, hold(tr.t, tr.p, H)[:, :2], H)


@pytest.mark.parametrize("name", list(PREDICTORS))
def test_causal(name):
    tr = line_track(120, noise=0.02, jitter=True)
    k0 = 60
    p2 = tr.p.copy()
    p2[k0 + 1 :] += np.random.default_rng(1).normal(0, 0.5, (120 - k0 - 1, 3))
    p2[k0 + 10 :] += 100.0  # a future teleport too
    a = PREDICTORS[name](tr.t, tr.p, H)
    b = PREDICTORS[name](tr.t, p2, H)
    np.testing.assert_array_equal(a[: k0 + 1], b[: k0 + 1])
    assert not np.allclose(a[k0 + 1 :], b[k0 + 1 :]) or name == "hold"


@pytest.mark.parametrize("name", list(PREDICTORS))
def test_reset_at_gap_and_teleport(name):
    t, p = reset_track()
    f = PREDICTORS[name]
    paths = f(t, p, H)
    for k in (0, 40, 80):
        np.testing.assert_allclose(paths[k], np.repeat(p[k : k + 1], H.size, axis=0))
        # the segment is predicted as if it were a fresh track
        np.testing.assert_allclose(paths[k : k + 40], f(t[k : k + 40], p[k : k + 40], H))
    # without the resets, the gap/teleport samples would extrapolate from earlier ones
    if name != "hold":
        kw = {"max_gap": 10.0, "max_speed": 1e6}
        g = dataclasses.replace(f, **kw) if dataclasses.is_dataclass(f) else None
        no_reset = g(t, p, H) if g is not None else f(t, p, H, **kw)
        for k in (40, 80):
            assert not np.allclose(no_reset[k], paths[k])


def test_cv_window_choice_of_j():
    t = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    p = np.zeros((5, 3))
    p[:, 0] = t**2
    h = np.array([1.0])
    v = cv_window(t, p, h, window=0.25)[:, 0, 0] - p[:, 0]
    np.testing.assert_allclose(v[4], (0.16 - 0.04) / 0.2)  # j = 2
    np.testing.assert_allclose(v[1], 0.1)  # only sample 0 in the segment before
    v = cv_window(t, p, h, window=0.05)[:, 0, 0] - p[:, 0]  # falls back to previous sample
    np.testing.assert_allclose(v[4], (0.16 - 0.09) / 0.1)
    assert v[0] == 0.0


def test_cv_window_beats_cv_last_on_noisy_line():
    tr = line_track(600, noise=0.01)
    h = np.array([0.5])
    e_last = np.nanmean(horizon_errors(tr, cv_last(tr.t, tr.p, h), h))
    e_win = np.nanmean(horizon_errors(tr, cv_window(tr.t, tr.p, h), h))
    assert e_win < 0.5 * e_last


def test_kalman_tune_noisy_vs_clean():
    h = np.array([0.2, 0.5])
    clean_tracks = [circle_track(noise=0.0, seed=s) for s in range(2)]
    noisy_tracks = [circle_track(noise=0.05, seed=s) for s in range(2)]
    # with q fixed, r alone sets the smoothing
    clean = KalmanCV.tune(clean_tracks, h, q_grid=[1.0])
    noisy = KalmanCV.tune(noisy_tracks, h, q_grid=[1.0])
    assert isinstance(clean, KalmanCV) and clean.q == noisy.q == 1.0
    assert noisy.r > 3 * clean.r
    # on the full grid (steady-state gains depend on r²/q): noisy data is smoothed more
    clean = KalmanCV.tune(clean_tracks, h)
    noisy = KalmanCV.tune(noisy_tracks, h)
    assert noisy.r**2 / noisy.q > 10 * clean.r**2 / clean.q
    assert clean.r == pytest.approx(0.001)
    with pytest.raises(ValueError):
        KalmanCV.tune([line_track(5)], np.array([100.0]))


def test_kalman_speed():
    n = 50_000
    t = np.arange(n) / 30.0
    p = np.random.default_rng(0).standard_normal((n, 3)).cumsum(0) * 0.01
    start = time.perf_counter()
    paths = KalmanCV()(t, p, H)
    assert time.perf_counter() - start < 1.5
    assert np.isfinite(paths).all()


def test_rejects_bad_input():
    tr = line_track(10)
    with pytest.raises(ValueError):
        cv_last(tr.t[::-1], tr.p, H)
    with pytest.raises(ValueError):
        hold(tr.t, tr.p[:, :2], H)
