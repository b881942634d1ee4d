import numpy as np

from server.priors import kalman_step
from training.baselines import KalmanCV


def test_vectorised_rows_match_the_scalar_filter(rng):
    """Rows with different time steps, resets in between: each equals KalmanCV."""
    q, r, v0 = 0.7, 0.03, 10.0
    n, steps = 5, 30
    t = np.cumsum(rng.uniform(0.02, 0.2, (steps, n)), axis=0)
    z = np.cumsum(rng.normal(0, 0.1, (steps, n, 3)), axis=0)
    state = np.zeros((9, n))
    got = np.zeros((steps, n, 6))
    for k in range(steps):
        dt = t[k] - (t[k - 1] if k else t[k])
        reset = np.full(n, k == 0)
        new = np.empty_like(state)
        kalman_step(state, new, z[k].T, np.maximum(dt, 1e-3), reset, q, r, v0)
        state = new
        got[k] = state[:6].T
    for i in range(n):
        pos, vel = KalmanCV(q=q, r=r, init_vel_std=v0).filter(t[:, i], z[:, i])
        np.testing.assert_allclose(got[:, i, :3], pos, atol=1e-10)
        np.testing.assert_allclose(got[:, i, 3:], vel, atol=1e-10)


def test_reset_rows_start_over_at_the_sample():
    old = np.ones((9, 2))
    new = np.empty_like(old)
    z = np.array([[5.0, 6.0], [1.0, 2.0], [0.0, 0.0]])
    kalman_step(old, new, z, np.array([0.1, 0.1]), np.array([True, False]), 1.0, 0.1, 10.0)
    np.testing.assert_array_equal(new[:3, 0], z[:, 0])
    np.testing.assert_array_equal(new[3:6, 0], 0.0)
    np.testing.assert_allclose(new[6:, 0], [0.01, 0.0, 100.0])
    assert (new[3:6, 1] != 1.0).any()  # the other row was filtered
