"""The classical priors, vectorised over rows: a constant-velocity Kalman filter and an
IMM (constant velocity + coordinated turn; `imm_step`, oracle `training.imm.IMM`).

Per row: position and velocity per axis (x, y, z independent) with one shared 2x2
covariance (position variance, cross term, velocity variance) — the filter of
`training.baselines.KalmanCV`, which is this module's test oracle. Process model: white
noise acceleration of spectral density `q` (m^2/s^3); measurement noise std `r` (m).
A reset puts the position at the sample, the velocity at zero with std `init_vel_std`.
Pure numpy, no per-row Python.
"""

from __future__ import annotations

import math

import numpy as np


def kalman_step(
    old: np.ndarray,
    new: np.ndarray,
    z: np.ndarray,
    dt: np.ndarray,
    reset: np.ndarray,
    q: float,
    r: float,
    init_vel_std: float,
) -> None:
    """One predict + update for n rows, written into `new`.

    `old` and `new` are (9, n) field-major: position xyz, velocity xyz, covariance
    (p00, p01, p11). `z` (3, n) the samples, `dt` (n,) seconds since each row's previous
    sample (> 0), `reset` (n,) bool rows that start over. `new` must not alias `old`.
    """
    p00, p01, p11 = old[6], old[7], old[8]
    a00 = p00 + dt * (2.0 * p01 + dt * p11) + q * dt**3 / 3.0
    a01 = p01 + dt * p11 + q * dt * dt / 2.0
    a11 = p11 + q * dt
    s = a00 + r * r
    k0 = a00 / s
    k1 = a01 / s
    pred = old[0:3] + dt * old[3:6]
    e = z - pred
    np.add(pred, k0 * e, out=new[0:3])
    np.add(old[3:6], k1 * e, out=new[3:6])
    new[6] = (1.0 - k0) * a00
    new[7] = (1.0 - k0) * a01
    new[8] = a11 - k1 * a01
    if reset.any():
        new[0:3, reset] = z[:, reset]
        new[3:6, reset] = 0.0
        new[6, reset] = r * r
        new[7, reset] = 0.0
        new[8, reset] = init_vel_std * init_vel_std


# --- IMM: constant velocity + coordinated turn ------------------------------------------
#
# Field-major state (IMM_WIDTH, n), per row:
#   [IMM_CV + 0 : IMM_CV + 5]   CV model mean  [x, y, vx, vy, w]   (w carried, unused by CV)
#   [IMM_CV + 5 : IMM_CV + 30]  CV model covariance, 5x5 row-major (symmetric)
#   [IMM_CT + 0 : IMM_CT + 30]  the same for the coordinated-turn model (w = turn rate, rad/s)
#   [IMM_MU + 0], [IMM_MU + 1]  mode probabilities (CV, CT), summing to 1
#   [IMM_Z + 0 : IMM_Z + 5]     vertical CV Kalman: z, vz, p00, p01, p11 (as `kalman_step`)
IMM_CV = 0
IMM_CT = 30
IMM_MU = 60
IMM_Z = 62
SWITCH_RATE = -math.log(0.9) / (2.0 * 0.05)  # 1/s: IMM mode switches, stay 0.95 per 0.05 s
IMM_WIDTH = 67
IMM_MU_MIN = 1e-9  # floor on a mode probability (then renormalised)
TURN_SERIES = 0.05  # |w * dt| below which the turn terms use their series


def arc_terms(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """S = sin(a)/a and C = (1 - cos a)/a, elementwise (S(0) = 1, C(0) = 0).

    A coordinated turn at rate w moves in time h by ``h * (S v + C v_perp)``, a = w h, where
    v_perp is v turned by +90 degrees. Below |a| < TURN_SERIES the Taylor series is used
    (no division by ~0; truncation error < 1e-15 relative), above it the closed forms.
    """
    s, c, _, _ = turn_terms(a, derivatives=False)
    return s, c


def turn_terms(a: np.ndarray, derivatives: bool = True):
    """`arc_terms` (S, C) and their derivatives dS/da, dC/da (S'(0) = 0, C'(0) = 1/2;
    series below TURN_SERIES with truncation error < 1e-12 relative), elementwise.
    With `derivatives` False the last two are None."""
    a = np.asarray(a, dtype=np.float64)
    small = np.abs(a) < TURN_SERIES
    b = np.where(small, 1.0, a)
    sb, cb = np.sin(b), np.cos(b)
    h2 = 1.0 - cb  # |b| >= TURN_SERIES: relative error <~ 1e-13
    a2 = a * a
    s = np.where(small, 1.0 - a2 / 6.0 * (1.0 - a2 / 20.0 * (1.0 - a2 / 42.0)), sb / b)
    c = np.where(small, 0.5 * a * (1.0 - a2 / 12.0 * (1.0 - a2 / 30.0 * (1.0 - a2 / 56.0))), h2 / b)
    if not derivatives:
        return s, c, None, None
    ds = np.where(small, -a / 3.0 * (1.0 - a2 / 10.0 * (1.0 - a2 / 28.0)), (b * cb - sb) / (b * b))
    dc = np.where(
        small,
        0.5 * (1.0 - a2 / 4.0 * (1.0 - a2 / 18.0 * (1.0 - a2 / 40.0))),
        (b * sb - h2) / (b * b),
    )
    return s, c, ds, dc


def _switch_prob(dt: np.ndarray, switch_rate) -> np.ndarray:
    """P(mode differs after dt) for a symmetric two-state Markov chain of rate `switch_rate`."""
    return 0.5 * -np.expm1(-2.0 * switch_rate * dt)


def imm_step(
    old: np.ndarray,
    new: np.ndarray,
    z: np.ndarray,
    dt: np.ndarray,
    reset: np.ndarray,
    *,
    q_cv,
    q_ct,
    q_w,
    r,
    switch_rate,
    init_vel_std,
    init_omega_std,
) -> None:
    """One IMM cycle (mix, predict, update, mode probabilities) for n rows, into `new`.

    `old`/`new` are (IMM_WIDTH, n) field-major (layout above); `z` (3, n) the samples,
    `dt` (n,) seconds since each row's previous sample (> 0; ignored on reset rows),
    `reset` (n,) bool rows that start over. Parameters are floats or (n,) arrays:
    `q_cv` / `q_ct` white-noise acceleration density of each model (m^2/s^3; `q_cv` also
    drives the vertical filter), `q_w` the turn-rate random-walk density of CT
    (rad^2/s^3), `r` measurement std (m), `switch_rate` (1/s) of the symmetric mode chain
    (switch probability (1 - exp(-2 rate dt)) / 2 over dt), the velocity / turn-rate std at
    a reset. CV moves straight and carries w unchanged (unused, no noise); CT turns the
    velocity at rate w (EKF). Covariance update P = (I - K H) P^-, symmetrised; mode
    probabilities floored at IMM_MU_MIN. A reset: see `imm_reset`. `new` must not alias `old`.
    """
    n = old.shape[1]
    dt = np.where(reset, 0.0, dt)
    kw = {"r": r, "init_vel_std": init_vel_std, "init_omega_std": init_omega_std}
    if reset.any():  # reset rows run the cycle from a sane state (no NaN from garbage)
        old = old.copy()
        imm_reset(old, z, reset, **kw)
    r2 = np.asarray(r, dtype=np.float64) ** 2

    # Mixing: c_j = sum_i pi_ij mu_i, weights mu_{i|j} = pi_ij mu_i / c_j.
    p = _switch_prob(dt, switch_rate)
    mu_cv, mu_ct = old[IMM_MU], old[IMM_MU + 1]
    c_cv = (1.0 - p) * mu_cv + p * mu_ct
    c_ct = p * mu_cv + (1.0 - p) * mu_ct
    x_cv, x_ct = old[IMM_CV : IMM_CV + 5], old[IMM_CT : IMM_CT + 5]
    P_cv = old[IMM_CV + 5 : IMM_CV + 30].reshape(5, 5, n)
    P_ct = old[IMM_CT + 5 : IMM_CT + 30].reshape(5, 5, n)
    d = x_cv - x_ct
    spread = d[:, None] * d[None, :]  # two components: sum_i w_i (x_i - x0)(.)^T = w (1-w) d d^T

    def mixed(w):  # w: weight of CV in the mix (CT's is 1 - w)
        return w * x_cv + (1.0 - w) * x_ct, w * P_cv + (1.0 - w) * P_ct + (w * (1.0 - w)) * spread

    # Predict. Both models: F = [[1, 0, f02, f03, f04], [0, 1, f12, f13, f14],
    # [0, 0, f22, f23, f24], [0, 0, f32, f33, f34], [0, 0, 0, 0, 1]]; Q = q * [[dt^3/3,
    # dt^2/2], [dt^2/2, dt]] per axis on (pos, vel), plus q_w dt on w for CT.
    dt2 = dt * dt
    qa, qb = dt2 * dt / 3.0, dt2 / 2.0

    def predict(x0, P0, turn, q, qw):
        x, y, vx, vy, w = x0
        F = np.zeros((5, 5, n))
        F[0, 0] = F[1, 1] = F[4, 4] = 1.0
        if turn:
            a = w * dt
            s, c, ds, dc = turn_terms(a)
            co, si = np.cos(a), np.sin(a)
            F[0, 2], F[0, 3], F[0, 4] = dt * s, -dt * c, dt2 * (ds * vx - dc * vy)
            F[1, 2], F[1, 3], F[1, 4] = dt * c, dt * s, dt2 * (dc * vx + ds * vy)
            F[2, 2], F[2, 3], F[2, 4] = co, -si, -dt * (si * vx + co * vy)
            F[3, 2], F[3, 3], F[3, 4] = si, co, dt * (co * vx - si * vy)
            xp = np.stack(
                [
                    x + dt * (s * vx - c * vy),
                    y + dt * (c * vx + s * vy),
                    co * vx - si * vy,
                    si * vx + co * vy,
                    w,
                ]
            )
        else:
            F[0, 2] = F[1, 3] = dt
            F[2, 2] = F[3, 3] = 1.0
            xp = np.stack([x + dt * vx, y + dt * vy, vx, vy, w])
        FP = np.einsum("ijn,jkn->ikn", F, P0)
        Pp = np.einsum("ijn,kjn->ikn", FP, F)
        for i in (0, 1):
            Pp[i, i] += q * qa
            Pp[i, i + 2] += q * qb
            Pp[i + 2, i] += q * qb
            Pp[i + 2, i + 2] += q * dt
        Pp[4, 4] += qw * dt
        return xp, Pp

    # Update with the (x, y) sample, std r; returns the log-likelihood of the innovation.
    def update(xp, Pp, out):
        s00 = Pp[0, 0] + r2
        s01 = 0.5 * (Pp[0, 1] + Pp[1, 0])
        s11 = Pp[1, 1] + r2
        det = s00 * s11 - s01 * s01
        i00, i01, i11 = s11 / det, -s01 / det, s00 / det
        e0, e1 = z[0] - xp[0], z[1] - xp[1]
        k0 = Pp[:, 0] * i00 + Pp[:, 1] * i01  # (5, n): gain columns
        k1 = Pp[:, 0] * i01 + Pp[:, 1] * i11
        np.add(xp, k0 * e0 + k1 * e1, out=out[0:5])
        P = Pp - k0[:, None] * Pp[None, 0] - k1[:, None] * Pp[None, 1]
        np.multiply(0.5, P + P.transpose(1, 0, 2), out=out[5:30].reshape(5, 5, n))
        maha = e0 * (i00 * e0 + i01 * e1) + e1 * (i01 * e0 + i11 * e1)
        return -0.5 * (maha + np.log(det)) - np.log(2.0 * np.pi)

    x0, P0 = mixed((1.0 - p) * mu_cv / c_cv)
    ll_cv = update(*predict(x0, P0, False, q_cv, 0.0), new[IMM_CV : IMM_CV + 30])
    x0, P0 = mixed(p * mu_cv / c_ct)
    ll_ct = update(*predict(x0, P0, True, q_ct, q_w), new[IMM_CT : IMM_CT + 30])

    # Mode probabilities: mu_j ~ c_j L_j (log-sum-exp), floored at IMM_MU_MIN.
    l_cv, l_ct = np.log(c_cv) + ll_cv, np.log(c_ct) + ll_ct
    m = np.maximum(l_cv, l_ct)
    u_cv, u_ct = np.exp(l_cv - m), np.exp(l_ct - m)
    tot = u_cv + u_ct
    u_cv, u_ct = np.maximum(u_cv / tot, IMM_MU_MIN), np.maximum(u_ct / tot, IMM_MU_MIN)
    tot = u_cv + u_ct
    new[IMM_MU], new[IMM_MU + 1] = u_cv / tot, u_ct / tot

    # Vertical: the CV Kalman filter of `kalman_step` on z alone, with q_cv and r.
    zp00, zp01, zp11 = old[IMM_Z + 2], old[IMM_Z + 3], old[IMM_Z + 4]
    a00 = zp00 + dt * (2.0 * zp01 + dt * zp11) + q_cv * qa
    a01 = zp01 + dt * zp11 + q_cv * qb
    a11 = zp11 + q_cv * dt
    k0 = a00 / (a00 + r2)
    k1 = a01 / (a00 + r2)
    e = z[2] - (old[IMM_Z] + dt * old[IMM_Z + 1])
    new[IMM_Z] = old[IMM_Z] + dt * old[IMM_Z + 1] + k0 * e
    new[IMM_Z + 1] = old[IMM_Z + 1] + k1 * e
    new[IMM_Z + 2] = (1.0 - k0) * a00
    new[IMM_Z + 3] = (1.0 - k0) * a01
    new[IMM_Z + 4] = a11 - k1 * a01

    if reset.any():
        imm_reset(new, z, reset, **kw)


def imm_reset(state: np.ndarray, z: np.ndarray, rows, *, r, init_vel_std, init_omega_std) -> None:
    """Start `rows` (bool (n,) or indices) of an (IMM_WIDTH, n) state over at samples `z`
    (3, n): both models at the sample with velocity 0, w 0, covariance diag(r^2, r^2, v0^2,
    v0^2, w0^2); mode probabilities (1/2, 1/2); the vertical filter as `kalman_step`'s reset.
    Parameters are floats or (n,) arrays (indexed by `rows`)."""
    n = state.shape[1]

    def at(v):
        v = np.asarray(v, dtype=np.float64)
        return np.broadcast_to(v, (n,))[rows]

    r2, v2, w2 = at(r) ** 2, at(init_vel_std) ** 2, at(init_omega_std) ** 2
    for base in (IMM_CV, IMM_CT):
        state[base : base + 30, rows] = 0.0
        state[base : base + 2, rows] = z[0:2, rows]
        state[base + 5 + 0, rows] = state[base + 5 + 6, rows] = r2
        state[base + 5 + 12, rows] = state[base + 5 + 18, rows] = v2
        state[base + 5 + 24, rows] = w2
    state[IMM_MU : IMM_MU + 2, rows] = 0.5
    state[IMM_Z, rows] = z[2, rows]
    state[IMM_Z + 1, rows] = 0.0
    state[IMM_Z + 2, rows] = r2
    state[IMM_Z + 3, rows] = 0.0
    state[IMM_Z + 4, rows] = v2


def imm_offsets(
    state: np.ndarray, horizons: np.ndarray, anchor: np.ndarray | None = None
) -> np.ndarray:
    """The IMM's predicted positions at `horizons` (H,) s ahead, minus `anchor` (3, n)
    (default 0: absolute positions). Returns (n, H, 3).

    Horizontal: each model's mean moved by its own deterministic motion (CV: straight at
    its velocity; CT: the arc at its turn rate), weighted by the mode probabilities.
    Vertical: z + vz * h.
    """
    h = np.asarray(horizons, dtype=np.float64)[None, :]
    x, y, vx, vy = (state[IMM_CV + i][:, None] for i in range(4))
    mu_cv, mu_ct = state[IMM_MU][:, None], state[IMM_MU + 1][:, None]
    px = mu_cv * (x + vx * h)
    py = mu_cv * (y + vy * h)
    x, y, vx, vy, w = (state[IMM_CT + i][:, None] for i in range(5))
    s, c = arc_terms(w * h)
    px = px + mu_ct * (x + h * (s * vx - c * vy))
    py = py + mu_ct * (y + h * (c * vx + s * vy))
    pz = state[IMM_Z][:, None] + state[IMM_Z + 1][:, None] * h
    out = np.stack([px, py, np.broadcast_to(pz, px.shape)], axis=-1)
    if anchor is not None:
        out = out - np.asarray(anchor, dtype=np.float64).T[:, None, :]
    return out
