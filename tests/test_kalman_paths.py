"""`client_demo.kalman_paths.KalmanPaths`: the offline Kalman baseline, online."""

import numpy as np
import pytest

from client_demo.kalman_paths import KalmanPaths
from client_demo.reckoning import DeadReckoner

H = [0.1, 0.2, 0.3, 0.4]
A0 = 1_700_000_000.0  # server times read like Unix time
POS = np.array([1.0, 2.0, 0.5])


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
