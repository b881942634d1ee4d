"""The online blend's per-row work, compiled (numba): the classical experts' filters, their
offsets, and the scoring, weighting, blending and arming of `server.core.blend`.

Each kernel loops over the rows of one tick and updates the per-slot state arrays of
`server.core.blend.BlendState` in place (no gathers or scatters of whole rows; what that costs
against the numpy version it replaced: docs/performance.md). The arithmetic is that of
`server.core.priors` (the Kalman filter, the IMM: their numpy versions are these kernels' test
oracles, to rounding) and of the algorithm in `server.core.blend`'s docstring; the callers are
`server.core.blend`'s public functions, and `server.core.blend.warm_up` compiles them at startup
(then cached beside this file, `cache=True`); with ``NUMBA_DISABLE_JIT=1`` the same code
runs as plain (slow) Python.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from server.core.priors import IMM_CT, IMM_CV, IMM_MU, IMM_MU_MIN, IMM_Z, TURN_SERIES

_LOG_2PI = math.log(2.0 * math.pi)
# cached on disk; numpy's error model: a division by zero gives inf/NaN as in numpy (no
# per-division check; every division here has a nonzero divisor by construction)
_jit = njit(cache=True, error_model="numpy")
_jit_inline = njit(cache=True, error_model="numpy", inline="always")


@_jit_inline
def _turn_terms(a):
    """S = sin(a)/a, C = (1 - cos a)/a and their derivatives (`priors.turn_terms`)."""
    if abs(a) < TURN_SERIES:
        a2 = a * a
        s = 1.0 - a2 / 6.0 * (1.0 - a2 / 20.0 * (1.0 - a2 / 42.0))
        c = 0.5 * a * (1.0 - a2 / 12.0 * (1.0 - a2 / 30.0 * (1.0 - a2 / 56.0)))
        ds = -a / 3.0 * (1.0 - a2 / 10.0 * (1.0 - a2 / 28.0))
        dc = 0.5 * (1.0 - a2 / 4.0 * (1.0 - a2 / 18.0 * (1.0 - a2 / 40.0)))
        return s, c, ds, dc
    sb, cb = math.sin(a), math.cos(a)
    h2 = 1.0 - cb
    return sb / a, h2 / a, (a * cb - sb) / (a * a), (a * sb - h2) / (a * a)


@_jit
def arcs(w, h, uniform, S, C):
    """`_turn_terms`' S and C at a = w * h[k] for every horizon, into S, C (H,). With
    `uniform` (h[k] = (k + 1) * h[0]) sin and cos come from one rotation repeated (two
    transcendental calls, not 2 H; the closed forms are used only where |a| >=
    TURN_SERIES, so the error stays ~1e-13 relative)."""
    if uniform:
        c1, s1 = math.cos(w * h[0]), math.sin(w * h[0])
        ck, sk = 1.0, 0.0
        for k in range(len(h)):
            ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
            a = w * h[k]
            if abs(a) < TURN_SERIES:
                S[k], C[k], _, _ = _turn_terms(a)
            else:
                S[k], C[k] = sk / a, (1.0 - ck) / a
    else:
        for k in range(len(h)):
            S[k], C[k], _, _ = _turn_terms(w * h[k])


@_jit
def kalman_row(old, new, z, dt, reset, q, r, init_vel_std):
    """`priors.kalman_step` for one row: `old`, `new` (9,), `z` (3,)."""
    if reset:
        new[0:3] = z
        new[3:6] = 0.0
        new[6] = r * r
        new[7] = 0.0
        new[8] = init_vel_std * init_vel_std
        return
    p00, p01, p11 = old[6], old[7], old[8]
    a00 = p00 + dt * (2.0 * p01 + dt * p11) + q * dt**3 / 3.0
    a01 = p01 + dt * p11 + q * dt * dt / 2.0
    a11 = p11 + q * dt
    s = a00 + r * r
    k0 = a00 / s
    k1 = a01 / s
    for i in range(3):
        pred = old[i] + dt * old[3 + i]
        e = z[i] - pred
        new[i] = pred + k0 * e
        new[3 + i] = old[3 + i] + k1 * e
    new[6] = (1.0 - k0) * a00
    new[7] = (1.0 - k0) * a01
    new[8] = a11 - k1 * a01


@_jit
def _imm_reset_row(s, z, r, init_vel_std, init_omega_std):
    s[:] = 0.0
    r2, v2 = r * r, init_vel_std * init_vel_std
    for base in (IMM_CV, IMM_CT):
        s[base] = z[0]
        s[base + 1] = z[1]
        s[base + 5 + 0] = s[base + 5 + 6] = r2
        s[base + 5 + 12] = s[base + 5 + 18] = v2
        s[base + 5 + 24] = init_omega_std * init_omega_std
    s[IMM_MU] = s[IMM_MU + 1] = 0.5
    s[IMM_Z] = z[2]
    s[IMM_Z + 2] = r2
    s[IMM_Z + 4] = v2


@_jit
def _imm_model(old, new, base, w, dt, turn, q, qw, r2, z, F, P0, FP, v5):
    """Mix (CV weight `w`), predict and update one IMM model into new[base : base + 30].
    Returns the log-likelihood of the innovation. F, P0, FP: (5, 5) scratch, v5 (5, 5)."""
    d, x0, xp, k0, k1 = v5[0], v5[1], v5[2], v5[3], v5[4]
    for i in range(5):
        d[i] = old[IMM_CV + i] - old[IMM_CT + i]
        x0[i] = w * old[IMM_CV + i] + (1.0 - w) * old[IMM_CT + i]
    ww = w * (1.0 - w)
    for i in range(5):
        for j in range(5):
            P0[i, j] = (
                w * old[IMM_CV + 5 + 5 * i + j]
                + (1.0 - w) * old[IMM_CT + 5 + 5 * i + j]
                + ww * (d[i] * d[j])
            )
    x, y, vx, vy, om = x0[0], x0[1], x0[2], x0[3], x0[4]
    F[:, :] = 0.0
    F[0, 0] = F[1, 1] = F[4, 4] = 1.0
    dt2 = dt * dt
    if turn:
        a = om * dt
        s, c, ds, dc = _turn_terms(a)
        co, si = math.cos(a), math.sin(a)
        F[0, 2], F[0, 3], F[0, 4] = dt * s, -dt * c, dt2 * (ds * vx - dc * vy)
        F[1, 2], F[1, 3], F[1, 4] = dt * c, dt * s, dt2 * (dc * vx + ds * vy)
        F[2, 2], F[2, 3], F[2, 4] = co, -si, -dt * (si * vx + co * vy)
        F[3, 2], F[3, 3], F[3, 4] = si, co, dt * (co * vx - si * vy)
        xp[0] = x + dt * (s * vx - c * vy)
        xp[1] = y + dt * (c * vx + s * vy)
        xp[2] = co * vx - si * vy
        xp[3] = si * vx + co * vy
    else:
        F[0, 2] = F[1, 3] = dt
        F[2, 2] = F[3, 3] = 1.0
        xp[0] = x + dt * vx
        xp[1] = y + dt * vy
        xp[2] = vx
        xp[3] = vy
    xp[4] = om
    for i in range(5):
        for k in range(5):
            acc = 0.0
            for j in range(5):
                acc += F[i, j] * P0[j, k]
            FP[i, k] = acc
    Pp = P0  # P0 is consumed: reuse it for the predicted covariance
    for i in range(5):
        for k in range(5):
            acc = 0.0
            for j in range(5):
                acc += FP[i, j] * F[k, j]
            Pp[i, k] = acc
    qa, qb = dt2 * dt / 3.0, dt2 / 2.0
    for i in (0, 1):
        Pp[i, i] += q * qa
        Pp[i, i + 2] += q * qb
        Pp[i + 2, i] += q * qb
        Pp[i + 2, i + 2] += q * dt
    Pp[4, 4] += qw * dt
    # update with the (x, y) sample
    s00 = Pp[0, 0] + r2
    s01 = 0.5 * (Pp[0, 1] + Pp[1, 0])
    s11 = Pp[1, 1] + r2
    det = s00 * s11 - s01 * s01
    i00, i01, i11 = s11 / det, -s01 / det, s00 / det
    e0, e1 = z[0] - xp[0], z[1] - xp[1]
    for i in range(5):
        k0[i] = Pp[i, 0] * i00 + Pp[i, 1] * i01
        k1[i] = Pp[i, 0] * i01 + Pp[i, 1] * i11
        new[base + i] = xp[i] + (k0[i] * e0 + k1[i] * e1)
    for i in range(5):
        for j in range(5):
            FP[i, j] = Pp[i, j] - k0[i] * Pp[0, j] - k1[i] * Pp[1, j]
    for i in range(5):
        for j in range(5):
            new[base + 5 + 5 * i + j] = 0.5 * (FP[i, j] + FP[j, i])
    maha = e0 * (i00 * e0 + i01 * e1) + e1 * (i01 * e0 + i11 * e1)
    return -0.5 * (maha + math.log(det)) - _LOG_2PI


@_jit
def imm_row(old, new, z, dt, reset, q_cv, q_ct, q_w, r, switch_rate, init_vel_std, scratch):
    """`priors.imm_step` for one row: `old`, `new` (IMM_WIDTH,), `z` (3,); `scratch` (4, 5,
    5). A reset row starts over (`priors.imm_reset`, turn-rate std 1 rad/s)."""
    if reset:
        _imm_reset_row(new, z, r, init_vel_std, 1.0)
        return
    F, P0, FP, v5 = scratch[0], scratch[1], scratch[2], scratch[3]
    r2 = r * r
    p = 0.5 * -math.expm1(-2.0 * switch_rate * dt)
    mu_cv, mu_ct = old[IMM_MU], old[IMM_MU + 1]
    c_cv = (1.0 - p) * mu_cv + p * mu_ct
    c_ct = p * mu_cv + (1.0 - p) * mu_ct
    ll_cv = _imm_model(old, new, IMM_CV, (1.0 - p) * mu_cv / c_cv, dt, False, q_cv, 0.0, r2, z, F, P0, FP, v5)  # fmt: skip
    ll_ct = _imm_model(old, new, IMM_CT, p * mu_cv / c_ct, dt, True, q_ct, q_w, r2, z, F, P0, FP, v5)  # fmt: skip
    l_cv, l_ct = math.log(c_cv) + ll_cv, math.log(c_ct) + ll_ct
    m = max(l_cv, l_ct)
    u_cv, u_ct = math.exp(l_cv - m), math.exp(l_ct - m)
    tot = u_cv + u_ct
    u_cv, u_ct = max(u_cv / tot, IMM_MU_MIN), max(u_ct / tot, IMM_MU_MIN)
    tot = u_cv + u_ct
    new[IMM_MU], new[IMM_MU + 1] = u_cv / tot, u_ct / tot
    # vertical: the CV Kalman filter on z alone, with q_cv and r
    dt2 = dt * dt
    zp00, zp01, zp11 = old[IMM_Z + 2], old[IMM_Z + 3], old[IMM_Z + 4]
    a00 = zp00 + dt * (2.0 * zp01 + dt * zp11) + q_cv * (dt2 * dt / 3.0)
    a01 = zp01 + dt * zp11 + q_cv * (dt2 / 2.0)
    a11 = zp11 + q_cv * dt
    k0 = a00 / (a00 + r2)
    k1 = a01 / (a00 + r2)
    e = z[2] - (old[IMM_Z] + dt * old[IMM_Z + 1])
    new[IMM_Z] = old[IMM_Z] + dt * old[IMM_Z + 1] + k0 * e
    new[IMM_Z + 1] = old[IMM_Z + 1] + k1 * e
    new[IMM_Z + 2] = (1.0 - k0) * a00
    new[IMM_Z + 3] = (1.0 - k0) * a01
    new[IMM_Z + 4] = a11 - k1 * a01


@_jit
def imm_offsets_row(s, h, uniform, anchor, out, S, C):
    """`priors.imm_offsets` for one row: state `s` (IMM_WIDTH,), horizons `h` (H,) (see
    `arcs` for `uniform`), the anchor (3,); writes out (H, 3). S, C: (H,) scratch."""
    mu_cv, mu_ct = s[IMM_MU], s[IMM_MU + 1]
    arcs(s[IMM_CT + 4], h, uniform, S, C)
    for k in range(len(h)):
        hk = h[k]
        px = mu_cv * (s[IMM_CV] + s[IMM_CV + 2] * hk)
        py = mu_cv * (s[IMM_CV + 1] + s[IMM_CV + 3] * hk)
        a, c = S[k], C[k]
        vx, vy = s[IMM_CT + 2], s[IMM_CT + 3]
        px = px + mu_ct * (s[IMM_CT] + hk * (a * vx - c * vy))
        py = py + mu_ct * (s[IMM_CT + 1] + hk * (c * vx + a * vy))
        out[k, 0] = px - anchor[0]
        out[k, 1] = py - anchor[1]
        out[k, 2] = s[IMM_Z] + s[IMM_Z + 1] * hk - anchor[2]


def _wrap(a):
    return (a + math.pi) % (2.0 * math.pi) - math.pi


_wrap_jit = _jit_inline(_wrap)


@_jit
def filters(
    prev,
    turn,
    kf,
    imm,
    rows,
    t,
    p,
    prior_v,
    reset,
    h,
    uniform,
    par,
    omega,
    fast_dp,
    fast_v,
    imm_off,
):
    """`server.core.blend.update_filters` for `rows`: the state arrays (BlendState's `prev`,
    `turn`, `kf`, `imm`) in place; `par` the parameters (see `blend._filter_params`);
    writes omega (n,), fast_dp, fast_v (n, 3), imm_off (2, n, H, 3)."""
    turn_tau, turn_min_speed, max_turn_rate, fast_q, fast_r = par[0], par[1], par[2], par[3], par[4]
    switch_rate = par[5]
    scratch = np.empty((4, 5, 5))
    kf_new = np.empty(9)
    old = np.empty(imm.shape[2])
    S, C = np.empty(len(h)), np.empty(len(h))
    for i in range(len(rows)):
        s = rows[i]
        prev_t = prev[s, 0]
        fresh = reset[i] or math.isnan(prev_t)
        dt = 1.0 if math.isnan(prev_t) else t[i] - prev_t
        dt = max(dt, 1e-3)
        speed = math.hypot(prior_v[i, 0], prior_v[i, 1])
        theta = math.atan2(prior_v[i, 1], prior_v[i, 0])
        moving = speed > turn_min_speed
        raw = _wrap_jit(theta - turn[s, 1]) / dt if moving and not fresh else 0.0
        keep = math.exp(-dt / turn_tau)
        w = 0.0 if fresh else keep * turn[s, 0] + (1.0 - keep) * raw
        w = min(max(w, -max_turn_rate), max_turn_rate)
        omega[i] = w
        turn[s, 0] = w
        if moving or fresh:
            turn[s, 1] = theta
        z = p[i]
        kalman_row(kf[s], kf_new, z, dt, fresh, fast_q, fast_r, 10.0)
        for d in range(9):
            kf[s, d] = kf_new[d]
        for d in range(3):
            fast_dp[i, d] = kf_new[d] - z[d]
            fast_v[i, d] = kf_new[3 + d]
        for j in range(2):
            o = 6 + 4 * j  # q_cv, q_ct, q_w, r of IMM j
            for d in range(len(old)):
                old[d] = imm[s, j, d]
            imm_row(old, imm[s, j], z, dt, fresh, par[o], par[o + 1], par[o + 2], par[o + 3], switch_rate, 10.0, scratch)  # fmt: skip
            imm_offsets_row(imm[s, j], h, uniform, z, imm_off[j, i], S, C)


@_jit
def experts(net, v, prior_dp, prior_v, omega, fast_dp, fast_v, imm_off, h, uniform, out):
    """`server.core.blend.expert_offsets`: writes out (n, H, E, 3) float32."""
    Sa, Ca = np.empty(len(h)), np.empty(len(h))
    for i in range(len(net)):
        arcs(omega[i], h, uniform, Sa, Ca)
        for k in range(len(h)):
            hk = h[k]
            a, c = Sa[k], Ca[k]
            S, C = a * hk, c * hk
            for d in range(3):
                out[i, k, 0, d] = net[i, k, d]
                out[i, k, 1, d] = prior_dp[i, d] + prior_v[i, d] * hk
                out[i, k, 2, d] = fast_dp[i, d] + fast_v[i, d] * hk
                out[i, k, 3, d] = v[i, d] * hk
                out[i, k, 5, d] = imm_off[0, i, k, d]
                out[i, k, 6, d] = imm_off[1, i, k, d]
            vx, vy = prior_v[i, 0], prior_v[i, 1]
            out[i, k, 4, 0] = prior_dp[i, 0] + S * vx - C * vy
            out[i, k, 4, 1] = prior_dp[i, 1] + C * vx + S * vy
            out[i, k, 4, 2] = prior_dp[i, 2] + prior_v[i, 2] * hk


@_jit
def weights_row(loss, log_prior, eta, out):
    """Exponential weights (H, E) of one row's losses (H, E) into out (H, E)."""
    H, E = loss.shape
    for k in range(H):
        top = -np.inf
        for e in range(E):
            out[k, e] = log_prior[e] - eta * loss[k, e]
            top = max(top, out[k, e])
        total = 0.0
        for e in range(E):
            out[k, e] = math.exp(out[k, e] - top)
            total += out[k, e]
        for e in range(E):
            out[k, e] /= total


@_jit
def weights_rows(loss, log_prior, eta, out):
    """`weights_row` for every row of loss (n, H, E) into out (n, H, E)."""
    for i in range(len(loss)):
        weights_row(loss[i], log_prior, eta, out[i])


@_jit
def step(
    loss, fl_t, fl_anchor, fl_off, prev, hk, lane_start, lanes, rows, t, p, reset, ex, h,
    log_prior, on, eta, memory, eps2, room_loss, room, ids, local, room_rate, off, w_out,
):  # fmt: skip
    """`server.core.blend.step` for `rows`: score the due flights, weigh, blend into off (n, H, 3)
    and w_out (n, E, H), put this sample's predictions in flight, record the sample. A
    row's first sample (no previous one) starts from `room_loss[room[i]]`; then the rooms
    `ids` (local index `local[i]` of row i) learn this call's scores."""
    H, E = loss.shape[1], loss.shape[2]
    n_on = 0
    for e in range(E):
        n_on += on[e]
    count = np.empty(H)
    total = np.empty((H, E))
    err2 = np.empty(E)
    truth = np.empty(3)
    w = np.empty((H, E))
    rsum = np.zeros((len(ids), H, E))
    rcnt = np.zeros((len(ids), H))
    for i in range(len(rows)):
        s = rows[i]
        ti = t[i]
        prev_t = prev[s, 0]
        if math.isnan(prev_t):  # a new avatar: what its room has learned so far
            for k in range(H):
                for e in range(E):
                    loss[s, k, e] = room_loss[room[i], k, e]
        for k in range(H):
            count[k] = 0.0
            for e in range(E):
                total[k, e] = 0.0
        if not reset[i]:
            span = ti - prev_t
            for f in range(fl_t.shape[1]):
                ta = fl_t[s, f]
                if math.isnan(ta):
                    continue
                k = hk[f]
                if not ta + h[k] <= ti + 1e-9:
                    continue
                a = (ta + h[k] - prev_t) / (span if span > 0 else 1.0)
                a = min(max(a, 0.0), 1.0)
                for d in range(3):  # the truth at t_a + h_k, from the anchor
                    pr = prev[s, 1 + d]
                    truth[d] = pr + a * (p[i, d] - pr) - fl_anchor[s, f, d]
                fo = fl_off[s, f]
                mean = 0.0
                for e in range(E):
                    d0 = fo[e, 0] - truth[0]
                    d1 = fo[e, 1] - truth[1]
                    d2 = fo[e, 2] - truth[2]
                    acc = d0 * d0 + d1 * d1 + d2 * d2
                    err2[e] = acc
                    if on[e]:
                        mean += acc
                mean = mean / n_on + eps2
                count[k] += 1.0
                for e in range(E):
                    total[k, e] += err2[e] / mean
                fl_t[s, f] = np.nan  # scored: the lane is free again
        dts = 0.0 if math.isnan(prev_t) else ti - prev_t
        alpha = 1.0 - math.exp(-dts / memory)
        j = local[i]
        for k in range(H):
            if count[k] > 0:
                rcnt[j, k] += 1.0
                for e in range(E):
                    mean_rel = total[k, e] / count[k]
                    loss[s, k, e] += alpha * (mean_rel - loss[s, k, e])
                    rsum[j, k, e] += mean_rel
        weights_row(loss[s], log_prior, eta, w)
        for k in range(H):
            exk = ex[i, k]
            for d in range(3):
                acc = w[k, 0] * np.float64(exk[0, d])
                for e in range(1, E):
                    acc += w[k, e] * np.float64(exk[e, d])
                off[i, k, d] = acc
            for e in range(E):
                w_out[i, e, k] = w[k, e]
        # this sample's predictions in flight: per horizon its first free lane
        if reset[i]:
            for f in range(fl_t.shape[1]):
                fl_t[s, f] = np.nan
        for k in range(H):
            for f in range(lane_start[k], lane_start[k] + lanes[k]):
                if math.isnan(fl_t[s, f]):
                    fl_t[s, f] = ti
                    for d in range(3):
                        fl_anchor[s, f, d] = p[i, d]
                    for e in range(E):
                        for d in range(3):
                            fl_off[s, f, e, d] = ex[i, k, e, d]
                    break
        prev[s, 0] = ti
        for d in range(3):
            prev[s, 1 + d] = p[i, d]
    for j in range(len(ids)):
        for k in range(H):
            if rcnt[j, k] > 0:
                a = 1.0 - (1.0 - room_rate) ** rcnt[j, k]
                for e in range(E):
                    rl = room_loss[ids[j], k, e]
                    room_loss[ids[j], k, e] = rl + a * (rsum[j, k, e] / rcnt[j, k] - rl)
