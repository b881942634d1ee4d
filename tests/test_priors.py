import math

import numpy as np
import pytest

from server.core import priors
from server.core.priors import kalman_step
from training.baselines import KalmanCV, segment_ids
from training.imm import IMM


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


# --- IMM -----------------------------------------------------------------------------

H = np.array([0.1, 0.5, 1.0])


def _imm_streams(rng, n, steps):
    """n rows of irregular samples (dt 0.02..0.2 s) along wandering, turning paths; some
    rows have a gap (> max_gap) or a teleport (> max_speed) inside: a reset there."""
    t = np.cumsum(rng.uniform(0.02, 0.2, (steps, n)), axis=0)
    heading = np.cumsum(rng.normal(0, 0.3, (steps, n)), axis=0)
    speed = rng.uniform(0.5, 3.0, n)
    dt = np.diff(t, axis=0, prepend=t[:1] - 0.05)
    p = np.zeros((steps, n, 3))
    p[:, :, 0] = np.cumsum(speed * np.cos(heading) * dt, axis=0)
    p[:, :, 1] = np.cumsum(speed * np.sin(heading) * dt, axis=0)
    p[:, :, 2] = 0.1 * np.sin(t)
    p += rng.normal(0, 0.02, p.shape)
    t[steps // 3 :, 1] += 2.0  # a 2 s gap in row 1
    p[steps // 2 :, 2] += 40.0  # a teleport in row 2
    return t, p


def test_imm_step_rows_match_the_scalar_filter(rng):
    """Rows with their own irregular dt, parameters and resets (by the served rule, as a
    mask) equal `IMM.reference` row by row."""
    n, steps = 6, 80
    t, p = _imm_streams(rng, n, steps)
    imms = [
        IMM(q_cv=q, q_ct=q * m, q_w=w, r=r)
        for q, m, w, r in zip(
            [0.1, 1.0, 0.3, 3.0, 0.05, 1.0],
            [1, 10, 3, 1, 10, 1],
            [3, 30, 1, 3, 10, 0.3],
            [0.01, 0.03, 0.002, 0.05, 0.02, 0.01],
            strict=True,
        )
    ]
    kw = {k: np.array([getattr(m, k) for m in imms]) for k in IMM.STEP_PARAMS}
    reset = np.stack([np.diff(segment_ids(t[:, i], p[:, i]), prepend=-1) > 0 for i in range(n)], 1)
    assert reset[0].all() and reset[1:, 1].any() and reset[1:, 2].any()
    state = np.zeros((priors.IMM_WIDTH, n))
    got = np.empty((steps, n, H.size, 3))
    modes = np.empty((steps, n, 2))
    for k in range(steps):
        dt = t[k] - t[k - 1] if k else np.full(n, np.nan)  # ignored on reset rows
        new = np.empty_like(state)
        priors.imm_step(state, new, p[k].T, dt, reset[k], **kw)
        state = new
        got[k] = priors.imm_offsets(state, H)
        modes[k] = state[priors.IMM_MU : priors.IMM_MU + 2].T
    for i, imm in enumerate(imms):
        ref, ref_modes = imm.reference(t[:, i], p[:, i], H)
        # O(10 m) positions through <= 80 steps of a stable filter: rounding ~1e-12
        np.testing.assert_allclose(got[:, i], ref, rtol=0, atol=1e-9)
        np.testing.assert_allclose(modes[:, i], ref_modes, rtol=0, atol=1e-9)


def test_imm_reset_rows_start_over_at_the_sample(rng):
    n = 3
    old = np.zeros((priors.IMM_WIDTH, n))
    z0 = rng.normal(size=(3, n))
    kw = {k: getattr(IMM(), k) for k in IMM.STEP_PARAMS}
    priors.imm_step(old.copy(), old, z0, np.zeros(n), np.ones(n, bool), **kw)
    z = z0 + np.array([[0.1], [0.05], [0.0]])
    new = np.empty_like(old)
    priors.imm_step(old, new, z, np.full(n, 0.1), np.array([True, False, False]), **kw)
    r2, v2, w2 = IMM().r ** 2, IMM().init_vel_std ** 2, IMM().init_omega_std ** 2
    for base in (priors.IMM_CV, priors.IMM_CT):
        np.testing.assert_array_equal(new[base : base + 2, 0], z[:2, 0])
        np.testing.assert_array_equal(new[base + 2 : base + 5, 0], 0.0)
        cov = new[base + 5 : base + 30, 0].reshape(5, 5)
        np.testing.assert_allclose(cov, np.diag([r2, r2, v2, v2, w2]), rtol=1e-15)
        assert (new[base + 2 : base + 4, 1:] > 0.1).all()  # the others moved on: v > 0
    np.testing.assert_array_equal(new[priors.IMM_MU : priors.IMM_MU + 2, 0], 0.5)
    np.testing.assert_array_equal(priors.imm_offsets(new, H)[0], np.tile(z[:, 0], (H.size, 1)))


def test_imm_offsets_by_hand():
    """CT at w = pi/2 rad/s, v = (1, 0): after 1 s a quarter circle of radius 2/pi, so
    (2/pi, 2/pi) from the start; CV goes straight to (1, 0); weights 1/4, 3/4."""
    st = np.zeros((priors.IMM_WIDTH, 1))
    for base in (priors.IMM_CV, priors.IMM_CT):
        st[base : base + 5, 0] = [3.0, 4.0, 1.0, 0.0, math.pi / 2]
    st[priors.IMM_MU : priors.IMM_MU + 2, 0] = [0.25, 0.75]
    st[priors.IMM_Z : priors.IMM_Z + 2, 0] = [1.0, -0.5]
    off = priors.imm_offsets(st, np.array([1.0]), anchor=np.array([[3.0], [4.0], [0.0]]))
    rad = 2 / math.pi
    want = [0.25 * 1.0 + 0.75 * rad, 0.75 * rad, 1.0 - 0.5]
    np.testing.assert_allclose(off[0, 0], want, rtol=0, atol=1e-12)


def test_turn_terms_series_and_closed_form_agree():
    a = np.array([-2.0, -0.3, -0.05, -0.0499999, -1e-3, 0.0, 1e-9, 0.02, 0.0499999, 0.05, 0.7, 3.0])
    s, c, ds, dc = priors.turn_terms(a)
    b = np.where(a == 0, 1.0, a)  # closed forms evaluated directly (0 by its limit)
    np.testing.assert_allclose(s, np.where(a == 0, 1.0, np.sin(b) / b), rtol=1e-12)
    # C as 2 sin^2(a/2) / a (no cancellation); the code's 1 - cos a for |a| >= 0.05 is
    # good to ~1e-16 / (a^2 / 2) <= 1e-13 relative
    np.testing.assert_allclose(c, np.where(a == 0, 0.0, 2 * np.sin(b / 2) ** 2 / b), rtol=1e-11)
    # derivatives against central differences (step 1e-5: error ~1e-10, rounding ~1e-11)
    eps = 1e-5
    sp, cp, _, _ = priors.turn_terms(a + eps)
    sm, cm, _, _ = priors.turn_terms(a - eps)
    np.testing.assert_allclose(ds, (sp - sm) / (2 * eps), atol=1e-8)
    np.testing.assert_allclose(dc, (cp - cm) / (2 * eps), atol=1e-8)
    assert s[5] == 1.0 and c[5] == 0.0 and ds[5] == 0.0 and dc[5] == 0.5
    assert np.all(np.isfinite([s, c, ds, dc]))
    np.testing.assert_array_equal(priors.arc_terms(a)[0], s)


@pytest.mark.parametrize("w", [1e-12, 1e-4, 0.8])
def test_imm_ct_path_is_the_circle(w):
    """A CT state on a circle at rate w predicts the circle itself (w -> 0: the line)."""
    st = np.zeros((priors.IMM_WIDTH, 1))
    st[priors.IMM_CT : priors.IMM_CT + 5, 0] = [0.0, 0.0, 1.5, 0.0, w]
    st[priors.IMM_MU + 1, 0] = 1.0
    h = np.linspace(0.1, 1.0, 10)
    got = priors.imm_offsets(st, h)[0, :, :2]
    want = np.stack([1.5 * np.sin(w * h) / w, 1.5 * (1 - np.cos(w * h)) / w], 1)
    if w < 1e-3:  # the closed form cancels here; use its series (next terms < 1e-20 m)
        a = w * h
        want = np.stack([1.5 * h * (1 - a * a / 6), 1.5 * h * (a / 2 - a**3 / 24)], 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
