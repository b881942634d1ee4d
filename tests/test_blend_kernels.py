"""The compiled kernels against their numpy oracles (`server.core.priors`)."""

import numpy as np

from server.core import blend_kernels as K
from server.core import priors


def walk(rng, steps, n):
    """Turning walks of n rows sampled at irregular times, some rows resetting."""
    dt = rng.uniform(0.01, 0.3, (steps, n))
    omega = rng.uniform(-2.0, 2.0, n)  # rad/s: steady turns, as the CT model expects
    head = np.cumsum(omega * dt + rng.normal(0, 0.05, (steps, n)), axis=0)
    speed = rng.uniform(0.5, 4.0, n)
    z = np.zeros((steps, n, 3))
    z[..., 0] = np.cumsum(np.cos(head) * speed * dt, axis=0)
    z[..., 1] = np.cumsum(np.sin(head) * speed * dt, axis=0)
    z[..., 2] = np.cumsum(rng.normal(0, 0.02, (steps, n)), axis=0)
    z += rng.normal(0, 0.002, z.shape)
    reset = rng.random((steps, n)) < 0.03
    reset[0] = True
    return dt, z, reset


def test_the_kalman_row_is_the_vectorised_kalman_filter(rng):
    steps, n = 60, 4
    dt, z, reset = walk(rng, steps, n)
    ref = np.zeros((9, n))
    rows = np.zeros((n, 9))
    new_row = np.empty(9)
    for k in range(steps):
        new = np.empty_like(ref)
        priors.kalman_step(ref, new, z[k].T, dt[k], reset[k], 2.0, 0.02, 10.0)
        ref = new
        for i in range(n):
            K.kalman_row(rows[i], new_row, z[k, i], dt[k, i], reset[k, i], 2.0, 0.02, 10.0)
            rows[i] = new_row
        np.testing.assert_allclose(rows, ref.T, rtol=1e-12, atol=1e-12)


def test_the_imm_row_is_the_vectorised_imm_and_its_offsets(rng):
    """Two tunings, irregular steps, resets: state and predicted offsets equal
    `priors.imm_step` / `priors.imm_offsets` to rounding (which the small-r filter grows to
    ~1e-6 relative over 80 steps: another order of the same sums)."""
    steps, n = 80, 5
    dt, z, reset = walk(rng, steps, n)
    h = np.array([0.1, 0.3, 0.6, 1.0])
    scratch = np.empty((4, 5, 5))
    S, C = np.empty(len(h)), np.empty(len(h))
    for q_cv, q_ct, q_w, r in ((0.01, 0.1, 30.0, 0.001), (15.8, 15.8, 30.0, 0.031)):
        kw = dict(q_cv=q_cv, q_ct=q_ct, q_w=q_w, r=r, switch_rate=priors.SWITCH_RATE)
        ref = np.zeros((priors.IMM_WIDTH, n))
        rows = np.zeros((n, priors.IMM_WIDTH))
        out = np.empty((len(h), 3))
        for k in range(steps):
            new = np.empty_like(ref)
            priors.imm_step(
                ref, new, z[k].T, dt[k], reset[k], init_vel_std=10.0, init_omega_std=1.0, **kw
            )
            ref = new
            want = priors.imm_offsets(ref, h, z[k].T)
            for i in range(n):
                old = rows[i].copy()
                K.imm_row(old, rows[i], z[k, i], dt[k, i], reset[k, i], q_cv, q_ct, q_w, r,
                          priors.SWITCH_RATE, 10.0, scratch)  # fmt: skip
                K.imm_offsets_row(rows[i], h, False, z[k, i], out, S, C)
                np.testing.assert_allclose(out, want[i], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(rows, ref.T, rtol=1e-5, atol=1e-7)
        assert (abs(ref[priors.IMM_MU + 1] - 0.5) > 0.1).any()  # the modes were weighed


def test_weights_are_the_normalised_exponential_of_the_losses():
    loss = np.array([[0.0, 1.0, 2.0], [0.5, 0.5, 0.5]])
    prior = np.array([0.5, 0.25, 0.0])
    out = np.empty_like(loss)
    with np.errstate(divide="ignore"):
        K.weights_row(loss, np.log(prior), 2.0, out)
    want = prior * np.exp(-2.0 * loss)
    np.testing.assert_allclose(out, want / want.sum(axis=1, keepdims=True), rtol=1e-12)
    assert (out[:, 2] == 0.0).all()  # a zero prior weight leaves the expert out
