"""Tests for training.imm: the IMM filter against its hand-worked cycle and textbook
reference, on lines, turns and circles, and its grid tuning."""

import math

import numpy as np
import pytest

from server.core import priors
from tests.test_baselines import VEL, H, line_track
from training.baselines import KalmanCV, horizon_errors
from training.datasets import Track
from training.imm import IMM, imm_cycle


def reset_track():
    """Line with a 2 s gap before sample 40 and a 50 m teleport at sample 80."""
    t = np.arange(120) / 30.0
    t[40:] += 2.0
    p = np.array([0.0, 0.0, 0.0]) + t[:, None] * VEL
    p[80:] += np.array([50.0, 0.0, 0.0])
    return t, p


# --- IMM -----------------------------------------------------------------------------


def turn_track(n=600, rate=20.0, w=0.8, speed=1.5, noise=0.0, seed=0) -> Track:
    """Uniform circular motion at turn rate `w` (rad/s) and `speed` (m/s), dense truth."""
    rng = np.random.default_rng(seed)
    rad = speed / w

    def pos(x):
        return np.stack([rad * np.sin(w * x), rad * (1 - np.cos(w * x)), 0 * x], axis=1)

    t = np.arange(n) / rate
    p = pos(t) + noise * rng.standard_normal((n, 3))
    tt = np.arange(0.0, n / rate + 1.5, 0.002)
    return Track("turn", t, p, truth_t=tt, truth_p=pos(tt))


# The hand-checked cycle: dt = 1 s, q_cv = 3, q_ct = 6, q_w = 2, r = 1, switch rate chosen
# so that the switch probability is p = (1 - exp(-2 * rate * 1)) / 2 = 0.1 exactly.
HAND = IMM(q_cv=3.0, q_ct=6.0, q_w=2.0, r=1.0, switch_rate=-math.log(0.8) / 2.0)
HAND_MU = np.array([0.6, 0.4])  # (CV, CT) before the step
HAND_X = np.array([[0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0]])  # CV at 0, CT at x=1
HAND_P = np.array([np.diag([1.0, 1.0, 0.5, 0.5, 0.1]), np.diag([2.0, 2.0, 1.0, 1.0, 0.4])])
HAND_Z = np.array([2.0, -1.0])


def _hand_expected():
    """The cycle worked by hand (exact fractions). Both velocities and turn rates are 0, so
    CT's Jacobian is CV's F and x, y, w decouple: per axis a 2x2 Kalman step.

    Mixing: c_cv = 0.9*0.6 + 0.1*0.4 = 0.58, c_ct = 0.1*0.6 + 0.9*0.4 = 0.42;
    mu_{cv|cv} = 0.54/0.58 = 27/29, mu_{cv|ct} = 0.06/0.42 = 1/7.
    Mixed CV: x0 = 2/29; P_xx = 27/29*1 + 2/29*2 + (27/29)(2/29)*1^2 = 953/841 (spread of
      the means), P_yy = 31/29, P_vv = 27/29*0.5 + 2/29*1 = 31/58, P_ww = 7/58.
    Mixed CT: x0 = 6/7; P_xx = 1/7 + 12/7 + (1/7)(6/7) = 97/49, P_yy = 13/7, P_vv = 13/14,
      P_ww = 1/7*0.1 + 6/7*0.4 = 5/14.
    Predict (dt = 1): a00 = P_xx + P_vv + q/3, a01 = P_vv + q/2, a11 = P_vv + q.
      CV x: a00 = 953/841 + 31/58 + 1 = 4487/1682, a01 = 59/29, a11 = 205/58;
      CV y: a00 = 31/29 + 31/58 + 1 = 151/58;  CT x: 97/49 + 13/14 + 2 = 481/98,
      a01 = 55/14, a11 = 97/14;  CT y: a00 = 13/7 + 13/14 + 2 = 67/14.
      w: CV carries it (7/58), CT adds q_w dt: 5/14 + 2 = 33/14.
    Update (r^2 = 1): S = a00 + 1, k0 = a00/S, k1 = a01/S, pos = x0 + k0 e, vel = k1 e,
      P = [[k0, k1], [k1, a11 - k1 a01]] (as (1 - k0) a00 = k0 when r^2 = 1).
      CV x: S = 6169/1682, k0 = 4487/6169, k1 = 3422/6169, e = 2 - 2/29 = 56/29 ->
        pos 9090/6169, vel 6608/6169, p11 = 860849/357802;
      CV y: S = 209/58, k0 = 151/209, k1 = 118/209, e = -1 -> pos -151/209, vel -118/209,
        p11 = 28921/12122;
      CT x: S = 579/98, k0 = 481/579, k1 = 385/579, e = 2 - 6/7 = 8/7 -> pos 1046/579,
        vel 440/579, p11 = 17494/4053;
      CT y: S = 81/14, k0 = 67/81, k1 = 55/81, e = -1 -> pos -67/81, vel -55/81,
        p11 = 2416/567.
    Mode probabilities: mu_j ~ c_j N(e_x; 0, S_x) N(e_y; 0, S_y).
    """
    x = np.array(
        [
            [9090 / 6169, -151 / 209, 6608 / 6169, -118 / 209, 0.0],
            [1046 / 579, -67 / 81, 440 / 579, -55 / 81, 0.0],
        ]
    )
    P = np.zeros((2, 5, 5))
    for j, (kx, k1x, p11x, ky, k1y, p11y, pw) in enumerate(
        [
            (
                4487 / 6169,
                3422 / 6169,
                860849 / 357802,
                151 / 209,
                118 / 209,
                28921 / 12122,
                7 / 58,
            ),
            (481 / 579, 385 / 579, 17494 / 4053, 67 / 81, 55 / 81, 2416 / 567, 33 / 14),
        ]
    ):
        P[j][np.ix_([0, 2], [0, 2])] = [[kx, k1x], [k1x, p11x]]
        P[j][np.ix_([1, 3], [1, 3])] = [[ky, k1y], [k1y, p11y]]
        P[j][4, 4] = pw

    def gauss(e, s):
        return math.exp(-0.5 * e * e / s) / math.sqrt(2 * math.pi * s)

    u_cv = 0.58 * gauss(56 / 29, 6169 / 1682) * gauss(-1.0, 209 / 58)
    u_ct = 0.42 * gauss(8 / 7, 579 / 98) * gauss(-1.0, 81 / 14)
    mu = np.array([u_cv, u_ct]) / (u_cv + u_ct)  # = (0.58608, 0.41392)
    return x, P, mu


def test_imm_one_cycle_by_hand():
    x, P, mu = _hand_expected()
    gx, gP, gmu = imm_cycle(HAND, HAND_X, HAND_P, HAND_MU, HAND_Z, 1.0)
    # The hand values are exact fractions; the filter rounds through a few dozen
    # operations on O(1) numbers (~1e-15), so 1e-9 is a wide but meaningful margin.
    np.testing.assert_allclose(gx, x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(gP, P, rtol=0, atol=1e-9)
    np.testing.assert_allclose(gmu, mu, rtol=0, atol=1e-9)
    assert mu[0] == pytest.approx(0.5860756, abs=1e-6)  # CV explains the sample better

    # The vectorised step from the same state gives the same; its path is the combined
    # estimate (positions weighted by mu), each model moving straight (w = 0 here).
    old = np.zeros((priors.IMM_WIDTH, 1))
    for base, xj, Pj in zip((priors.IMM_CV, priors.IMM_CT), HAND_X, HAND_P, strict=True):
        old[base : base + 5, 0] = xj
        old[base + 5 : base + 30, 0] = Pj.ravel()
    old[priors.IMM_MU : priors.IMM_MU + 2, 0] = HAND_MU
    old[priors.IMM_Z + 2 : priors.IMM_Z + 5, 0] = [1.0, 0.0, 1.0]
    new = np.empty_like(old)
    kw = {k: getattr(HAND, k) for k in IMM.STEP_PARAMS}
    z = np.array([[2.0], [-1.0], [0.0]])
    priors.imm_step(old, new, z, np.array([1.0]), np.array([False]), **kw)
    np.testing.assert_allclose(new[priors.IMM_CV : priors.IMM_CV + 5, 0], x[0], atol=1e-9)
    np.testing.assert_allclose(new[priors.IMM_CT : priors.IMM_CT + 5, 0], x[1], atol=1e-9)
    np.testing.assert_allclose(
        new[priors.IMM_CT + 5 : priors.IMM_CT + 30, 0], P[1].ravel(), atol=1e-9
    )
    np.testing.assert_allclose(new[priors.IMM_MU : priors.IMM_MU + 2, 0], mu, atol=1e-9)
    path = priors.imm_offsets(new, np.array([0.0, 2.0]))[0, :, :2]
    np.testing.assert_allclose(path[0], mu @ x[:, :2], atol=1e-9)
    np.testing.assert_allclose(path[1], mu @ (x[:, :2] + 2.0 * x[:, 2:4]), atol=1e-9)


@pytest.mark.parametrize("jitter", [False, True])
def test_imm_matches_its_scalar_reference(jitter):
    t, p = reset_track()
    if jitter:
        t = t + np.random.default_rng(3).uniform(0, 0.01, t.size)
    p = p + np.random.default_rng(4).normal(0, 0.02, p.shape)
    p[:, :2] += np.stack([np.sin(t), np.cos(1.3 * t)], axis=1)  # turning, not straight
    imm = IMM(q_cv=0.3, q_ct=3.0, q_w=3.0, r=0.02)
    ref, modes = imm.reference(t, p, H)
    # positions of O(50 m) after ~100 steps of a stable filter: rounding ~1e-12 m
    np.testing.assert_allclose(imm(t, p, H), ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(imm.filter(t, p)[3], modes, rtol=0, atol=1e-9)
    many = imm.paths_many([(t, p), (t[:50], p[:50]), (t[30:], p[30:])], H)
    np.testing.assert_allclose(many[0], ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(many[1], ref[:50], rtol=0, atol=1e-9)
    np.testing.assert_allclose(many[2], imm(t[30:], p[30:], H), rtol=0, atol=1e-9)


def test_imm_straight_line_is_exact_and_cv_dominates():
    tr = line_track(300, jitter=True)
    imm = IMM(q_cv=0.01, q_ct=0.1, q_w=3.0, r=0.01)
    err = horizon_errors(tr, imm(tr.t, tr.p, H), H)
    # as `test_kalman_converges_on_straight_line`: the filter error decays to < 1 mm
    assert np.nanmax(err[100:]) < 1e-3
    _, vel, w, mu = imm.filter(tr.t, tr.p)
    np.testing.assert_allclose(vel[-1], VEL, atol=1e-4)
    assert abs(w[-1]) < 1e-3  # rad/s: the CT model sees no turn
    assert (mu[150:, 0] > 0.8).all()  # straight motion: CV (less process noise) wins


def test_imm_beats_kalman_on_a_circle():
    tracks = [turn_track(noise=0.01, seed=s) for s in range(2)]
    h = np.array([0.2, 0.5, 1.0])
    kf = KalmanCV.tune(tracks, h)
    imm = IMM.tune(tracks, h)
    settled = slice(100, None)  # after 5 s
    for tr in tracks:
        e_kf = np.nanmean(horizon_errors(tr, kf(tr.t, tr.p, h), h)[settled, -1])
        e_imm = np.nanmean(horizon_errors(tr, imm(tr.t, tr.p, h), h)[settled, -1])
        # the CV chord error at 1 s on this circle is ~0.6 m; the turn model removes most
        assert e_imm < 0.6 * e_kf
        _, _, w, mu = imm.filter(tr.t, tr.p)
        # CT's own rate: found, if biased high while CV still shares the weight (the
        # mode-weighted arc is what is tuned); 0.8 rad/s within 40%, sign and size
        assert np.median(w[settled]) == pytest.approx(0.8, rel=0.4)
        assert np.median(mu[settled, 1]) > 0.5  # the turn model leads


def test_imm_tune_picks_from_the_grid_and_rejects_bad_input():
    tracks = [turn_track(200, noise=0.01, seed=s) for s in range(2)]
    h = np.array([0.5])
    imm = IMM.tune(tracks, h, q_grid=[0.1, 1.0], q_ct_ratios=[1.0], q_w_grid=[3.0], r_grid=[0.01])
    assert isinstance(imm, IMM) and imm.q_cv in (0.1, 1.0) and imm.q_ct == imm.q_cv
    assert imm.q_w == 3.0 and imm.r == 0.01
    one = IMM.tune(tracks, h, q_grid=[1.0], q_ct_ratios=[10.0], q_w_grid=[3.0], r_grid=[0.01])
    assert one == IMM(q_cv=1.0, q_ct=10.0, q_w=3.0, r=0.01)
    with pytest.raises(ValueError):
        IMM.tune([line_track(5)], np.array([100.0]))
    with pytest.raises(ValueError):
        IMM.tune(tracks, h, r_grid=[])
    with pytest.raises(ValueError):
        IMM()(np.array([0.0, 0.0]), np.zeros((2, 3)), H)
