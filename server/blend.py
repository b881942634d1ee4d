"""Online expert weighting: per avatar and per horizon, serve a blend of the predictors
that have been right for *that* avatar lately.

The network was trained offline; whether it beats the classical filters on an avatar it
has never seen (a VR user, a mouse-driven FPS player) only shows once its predictions come
due. The server sees that for every avatar, so each tick, per avatar (row) and horizon k:

1. **Score** (strictly causal). Each sample puts the experts' predictions for
   ``t_a + h_k`` in flight, one per horizon (``t_a`` the sample's time; each horizon has
   up to `max_lanes` in flight, so at the tick rate every sample scores one). Once a later
   sample arrives at or after ``t_a + h_k`` that prediction is due: the truth at
   ``t_a + h_k`` is interpolated between the previous sample and this one (both at or
   after ``t_a``; nothing newer than this sample is used), each expert's squared error is
   divided by the mean squared error of the experts taking part (prior weight > 0) at
   that prediction (a *relative* loss in [0, E], the same for every scale of motion), and
   the sample's mean relative loss per horizon is folded into a decaying average
   ``L[e, k]`` with time constant `memory` seconds (weight ``1 - exp(-dt / memory)`` for
   a sample ``dt`` after the previous one). A reset (gap, teleport) drops the flights but
   keeps ``L``: the avatar is the same person; a new avatar (join) starts from ``L = 0``.
2. **Weigh**: ``w[e, k] = prior[e] * exp(-eta * L[e, k])``, normalised over e
   (exponentially weighted average forecaster / Hedge).
3. **Serve** ``sum_e w[e, k] * offset_e[k]``.

**Why it tracks the best expert.** The squared distance is convex, so the blend's loss is
at most the weighted mean of the experts' losses (Jensen); and for exponential weights on
losses bounded in [0, E], the weighted mean's cumulative (here: discounted, over the last
~`memory` seconds) relative loss exceeds the best single expert's by at most
``ln(1 / prior_min) / eta' + eta' * E**2 / 8`` per unit of effective sample count, where
``eta' = eta / N_eff`` and ``N_eff`` is the number of samples within `memory`
(Cesa-Bianchi & Lugosi, *Prediction, Learning, and Games*, Thm 2.2 with discounting). The
term does not grow with time, so over any stretch the blend is, per avatar and horizon,
within a bounded term of whichever expert was best for that avatar over that stretch.

**Experts** (`EXPERTS`), all as offsets from the sample: the network (its own path, which
is a gated residual over the Kalman prior), the Kalman prior alone (the model's filter, a
smooth one), a responsive Kalman filter (`fast_q`, `fast_r`: the tuning the offline
evaluation picks on stream-rate game and sports motion), constant velocity over the last
interval, a turning model (the prior's velocity turned at a smoothed turn rate:
constant turn rate and velocity), and two IMMs of constant velocity and coordinated turn
(`server.priors.imm_step`, a manoeuvring-target filter), a smooth and a responsive one.
Together the filters span the tunings the offline evaluation picks per data set, so the
weighting tunes the classical side per avatar online as well.

Pure numpy, no per-row Python; `BlendState` is row-major (a batch's rows are one
contiguous gather per field). `replay` runs the same `step` over recorded streams, for the
offline evaluation (`training.evaluate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from server import priors

EXPERTS: tuple[str, ...] = ("net", "kalman", "kalman_fast", "cv", "turn", "imm_smooth", "imm_fast")
_EPS2 = 1e-6  # m^2: an error below ~1 mm counts as exact (relative losses stay defined)


@dataclass(frozen=True)
class BlendConfig:
    """Parameters of the online weighting (see the module docstring)."""

    prior: tuple[float, ...] = (0.6,) + (0.4 / 6,) * 6  # weights before any scoring
    eta: float = 16.0  # learning rate on the relative losses
    memory: float = 3.0  # s, time constant of the loss averages
    lane_dt: float = 0.05  # s, the sample interval every sample is scored at (the tick)
    max_lanes: int = 64  # predictions in flight per horizon at most (fewer: cheaper, sparser)
    fast_q: float = 25.0  # m^2/s^3, the responsive Kalman filter's white-noise acceleration
    fast_r: float = 0.003  # m, its measurement noise std
    # two IMMs (q_cv m^2/s^3, q_ct m^2/s^3, q_w rad^2/s^3, r m): the smooth and the responsive
    # ends of what the offline evaluation tunes on held-out football and simulated avatars
    imm_smooth_q: tuple[float, float, float, float] = (0.01, 0.1, 30.0, 0.001)
    imm_fast_q: tuple[float, float, float, float] = (15.8, 15.8, 30.0, 0.031)
    turn_tau: float = 0.25  # s, smoothing of the turning expert's turn rate
    turn_min_speed: float = 0.3  # m/s; slower, the turn rate decays to zero
    max_turn_rate: float = 4.0  # rad/s

    def __post_init__(self) -> None:
        object.__setattr__(self, "prior", tuple(float(w) for w in self.prior))
        if len(self.prior) != len(EXPERTS) or min(self.prior) < 0 or max(self.prior) <= 0:
            raise ValueError(
                f"prior needs {len(EXPERTS)} weights >= 0, one > 0 ({', '.join(EXPERTS)}); "
                "a zero weight leaves that expert out"
            )
        if (
            self.eta < 0
            or self.memory <= 0
            or self.turn_tau <= 0
            or self.lane_dt <= 0
            or self.max_lanes < 1
        ):
            raise ValueError("need eta >= 0, memory, turn_tau, lane_dt > 0 and max_lanes >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BlendConfig:
        return cls(**d)


class BlendState:
    """Per-row memory of the weighting: losses, predictions in flight, the turn rate.

    Each row keeps, per horizon k, up to ``ceil(h_k / lane_dt) + 1`` predictions in
    flight (its *lanes*: one a sample when samples come every `lane_dt` s, so that every
    sample scores one prediction per horizon), laid flat: flight f is of horizon
    ``hk[f]``. Row-major arrays (a batch's rows are one contiguous gather each): `loss`
    (n, H, E), `fl_t` (n, F) each flight's anchor time (NaN: the lane is free),
    `fl_anchor` (n, F, 3) the anchor sample's position, `fl_off` (n, F, E, 3) float32 the
    experts' predicted offsets from it, `prev` (n, 4) the previous sample (t, x, y, z; t
    NaN: none), `turn` (n, 2) the turn rate and the heading it was last measured at, `kf`
    (n, 9) the responsive Kalman filter (`server.priors.kalman_step`'s fields), `imm` (n, 2,
    67) the two IMM filters (`server.priors.imm_step`'s).
    """

    FIELDS = ("loss", "fl_t", "fl_anchor", "fl_off", "prev", "turn", "kf", "imm")

    def __init__(self, n: int, horizons, lane_dt: float = 0.05, max_lanes: int = 64) -> None:
        h = np.asarray(horizons, dtype=np.float64)
        self.horizons, self.lane_dt, self.max_lanes = h, float(lane_dt), int(max_lanes)
        lanes = np.ceil(h / self.lane_dt - 1e-9).astype(np.int64) + 1
        lanes = np.minimum(lanes, self.max_lanes)
        self.hk = np.repeat(np.arange(len(h)), lanes)  # (F,) horizon of each flight
        self.lane_start = np.concatenate([[0], np.cumsum(lanes)[:-1]])  # (H,)
        self.lanes = lanes
        E, H, F = len(EXPERTS), len(h), len(self.hk)
        self.E, self.H, self.F = E, H, F
        self.loss = np.zeros((n, H, E))
        self.fl_t = np.zeros((n, F))
        self.fl_anchor = np.zeros((n, F, 3))
        self.fl_off = np.zeros((n, F, E, 3), dtype=np.float32)
        self.prev = np.zeros((n, 4))
        self.turn = np.zeros((n, 2))
        self.kf = np.zeros((n, 9))
        self.imm = np.zeros((n, 2, priors.IMM_WIDTH))
        self.clear(slice(None))

    def __len__(self) -> int:
        return len(self.loss)

    def clear(self, rows: np.ndarray | slice | int) -> None:
        """Forget rows (a new avatar): prior weights, nothing in flight."""
        for name in self.FIELDS:
            getattr(self, name)[rows] = 0.0
        self.fl_t[rows] = np.nan
        self.prev[rows, 0] = np.nan

    def grow(self, n: int) -> None:
        """Extend to `n` rows; new rows are clear."""
        old = len(self)
        if n <= old:
            return
        new = BlendState(n - old, self.horizons, self.lane_dt, self.max_lanes)
        for name in self.FIELDS:
            setattr(self, name, np.concatenate([getattr(self, name), getattr(new, name)]))

    def weights(self, rows: np.ndarray, cfg: BlendConfig) -> np.ndarray:
        """Current weights (n, E, H) of `rows`."""
        return _weights(self.loss[rows], cfg).transpose(0, 2, 1)


def _weights(loss: np.ndarray, cfg: BlendConfig) -> np.ndarray:
    """(n, H, E) losses -> (n, H, E) weights (the reductions over the E experts unrolled:
    numpy is slow on a short last axis)."""
    with np.errstate(divide="ignore"):  # a zero prior weight: the expert is left out
        logit = np.log(np.asarray(cfg.prior)) - cfg.eta * loss
    top = logit[..., 0].copy()
    for e in range(1, logit.shape[2]):
        np.maximum(top, logit[..., e], out=top)
    logit -= top[..., None]
    w = np.exp(logit, out=logit)
    total = w[..., 0].copy()
    for e in range(1, w.shape[2]):
        total += w[..., e]
    w /= total[..., None]
    return w


def _rows_of(a: np.ndarray) -> np.ndarray:
    """A C-contiguous array (m, ...) seen as m opaque rows (one void element each; m may
    be 0)."""
    per_row = int(np.prod(a.shape[1:]))
    return a.reshape(len(a), per_row).view(np.dtype((np.void, a.itemsize * per_row))).ravel()


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2.0 * np.pi) - np.pi


def turn_offsets(
    prior_dp: np.ndarray, prior_v: np.ndarray, omega: np.ndarray, horizons: np.ndarray
) -> np.ndarray:
    """The turning expert: from the Kalman position, its velocity turned at `omega`.

    `prior_dp` (n, 3) the Kalman position minus the sample, `prior_v` (n, 3) its velocity,
    `omega` (n,) rad/s (counter-clockwise, z up). Returns offsets (n, H, 3): the integral of
    the horizontal velocity rotated by ``omega * s`` over ``s in [0, h]``; z at constant
    velocity.
    """
    h = np.asarray(horizons, dtype=np.float64)[None, :]  # (1, H)
    a, c = priors.arc_terms(omega[:, None] * h)  # sin(wh)/(wh), (1 - cos wh)/(wh)
    S, C = a * h, c * h  # sin(wh)/w, (1 - cos wh)/w
    vx, vy = prior_v[:, 0:1], prior_v[:, 1:2]
    off = np.empty((len(omega), h.shape[1], 3))
    off[..., 0] = prior_dp[:, 0:1] + S * vx - C * vy
    off[..., 1] = prior_dp[:, 1:2] + C * vx + S * vy
    off[..., 2] = prior_dp[:, 2:3] + prior_v[:, 2:3] * h
    return off


def expert_offsets(
    net: np.ndarray,
    v: np.ndarray,
    prior_dp: np.ndarray,
    prior_v: np.ndarray,
    filters: tuple[np.ndarray, ...],
    horizons: np.ndarray,
) -> np.ndarray:
    """Every expert's offsets (n, H, E, 3) float32, experts in `EXPERTS` order.

    `net` (n, H, 3) the network's offsets; `v` (n, 3) the last interval's velocity (zero at
    a reset); `prior_dp`, `prior_v` (n, 3) the Kalman prior (`server.features.StepOutput`);
    `filters` what `update_filters` returned: the turn rate (n,), the responsive Kalman
    filter's position minus the sample and velocity (n, 3) each, the IMM's offsets (n, H, 3).
    """
    omega, fast_dp, fast_v, imm_smooth, imm_fast = filters
    h = np.asarray(horizons, dtype=np.float64)[None, :, None]
    out = np.empty((len(net), h.shape[1], len(EXPERTS), 3), dtype=np.float32)
    out[:, :, 0] = net
    out[:, :, 1] = prior_dp[:, None, :] + prior_v[:, None, :] * h
    out[:, :, 2] = fast_dp[:, None, :] + fast_v[:, None, :] * h
    out[:, :, 3] = v[:, None, :] * h
    out[:, :, 4] = turn_offsets(prior_dp, prior_v, omega, horizons)
    out[:, :, 5] = imm_smooth
    out[:, :, 6] = imm_fast
    return out


def update_filters(
    state: BlendState,
    rows: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    prior_v: np.ndarray,
    reset: np.ndarray,
    horizons: np.ndarray,
    cfg: BlendConfig,
) -> tuple[np.ndarray, ...]:
    """Advance the classical experts' own filters of `rows` by one sample and return what
    `expert_offsets` takes of them: the turn rate (n,); the responsive Kalman filter
    (`fast_q`, `fast_r`), its position minus the sample `p` and velocity (n, 3) each; the
    two IMMs (`imm_smooth_q`, `imm_fast_q`), their predicted offsets from `p` (n, H, 3) each.

    The heading of the Kalman velocity `prior_v` (n, 3); its change since the row's last
    sample over the interval is the raw rate, smoothed with time constant `turn_tau`. Below
    `turn_min_speed` the heading is not measured and the rate decays to zero. A reset (or a
    row's first sample) starts at zero.
    """
    old = state.turn[rows].T  # (2, n)
    prev_t = state.prev[rows, 0]
    dt = np.nan_to_num(t - prev_t, nan=1.0)
    dt = np.maximum(dt, 1e-3)
    speed = np.hypot(prior_v[:, 0], prior_v[:, 1])
    theta = np.arctan2(prior_v[:, 1], prior_v[:, 0])
    moving = speed > cfg.turn_min_speed
    fresh = reset | np.isnan(prev_t)
    raw = np.where(moving & ~fresh, _wrap(theta - old[1]) / dt, 0.0)
    keep = np.exp(-dt / cfg.turn_tau)
    omega = np.where(fresh, 0.0, keep * old[0] + (1.0 - keep) * raw)
    omega = np.clip(omega, -cfg.max_turn_rate, cfg.max_turn_rate)
    state.turn[rows, 0] = omega
    state.turn[rows, 1] = np.where(moving | fresh, theta, old[1])
    kf_old = state.kf[rows].T  # (9, n), the fields of priors.kalman_step
    kf_new = np.empty_like(kf_old)
    pT = np.asarray(p, dtype=np.float64).T
    priors.kalman_step(kf_old, kf_new, pT, dt, fresh, cfg.fast_q, cfg.fast_r, 10.0)
    state.kf[rows] = kf_new.T
    imm_offsets = []
    for j, (q_cv, q_ct, q_w, r) in enumerate((cfg.imm_smooth_q, cfg.imm_fast_q)):
        imm_old = state.imm[rows, j].T  # (67, n)
        imm_new = np.empty_like(imm_old)
        priors.imm_step(
            imm_old, imm_new, pT, dt, fresh, q_cv=q_cv, q_ct=q_ct, q_w=q_w, r=r,
            switch_rate=priors.SWITCH_RATE, init_vel_std=10.0, init_omega_std=1.0,
        )  # fmt: skip
        state.imm[rows, j] = imm_new.T
        imm_offsets.append(priors.imm_offsets(imm_new, horizons, pT))
    return omega, (kf_new[0:3] - pT).T, kf_new[3:6].T, *imm_offsets


def step(
    state: BlendState,
    rows: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    reset: np.ndarray,
    experts: np.ndarray,
    horizons: np.ndarray,
    cfg: BlendConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Score the due predictions of `rows` on their new sample, then blend the experts.

    `rows` (n,) distinct, `t` (n,) the new samples' times (after each row's previous one),
    `p` (n, 3) their positions, `reset` (n,) bool segment starts, `experts` (n, H, E, 3)
    every expert's offsets from `p` (`expert_offsets`). Call `update_filters` first (it reads
    the previous sample time this updates). Returns the served offsets (n, H, 3) float64
    and the weights used (n, E, H). Updates `state` in place. Raises nothing for finite
    input.
    """
    h = np.asarray(horizons, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    n, H = len(rows), len(h)
    loss = state.loss[rows]  # (n, H, E): one contiguous gather per field
    fl_t = state.fl_t[rows]  # (n, F)
    prev = state.prev[rows]  # (n, 4)
    with np.errstate(invalid="ignore"):  # NaN: a free lane -> not due
        due = fl_t + h[state.hk] <= t[:, None] + 1e-9  # (n, F)
    due &= ~reset[:, None]
    F = state.F
    fl_anchor = state.fl_anchor.reshape(-1, 3)  # flat views: (slot * F + flight, ...)
    fl_off = state.fl_off.reshape(-1, state.E, 3)
    r, f = np.nonzero(due)
    if len(r):
        k = state.hk[f]
        at = rows[r] * F + f
        span = t[r] - prev[r, 0]
        a = np.clip((fl_t[r, f] + h[k] - prev[r, 0]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
        # the truth at t_a + h_k (between the previous sample and this one), from the anchor
        pr = prev[r, 1:]
        truth = pr + a[:, None] * (p[r] - pr) - np.take(fl_anchor, at, axis=0)
        d = np.take(fl_off, at, axis=0) - truth[:, None, :]  # (m, E, 3)
        err2 = d[..., 0] ** 2 + d[..., 1] ** 2 + d[..., 2] ** 2  # (m, E)
        on = np.asarray(cfg.prior) > 0  # the experts taking part
        rel = err2 / (err2[:, on].mean(axis=1, keepdims=True) + _EPS2)
        # this sample's relative loss per (row, horizon): the mean over its due flights
        cell = r * H + k
        count = np.bincount(cell, minlength=n * H).reshape(n, H)
        total = np.stack(
            [np.bincount(cell, weights=rel[:, e], minlength=n * H) for e in range(rel.shape[1])],
            axis=1,
        )  # (n * H, E): bincount per expert, far faster than np.add.at
        scored = count > 0
        mean_rel = total.reshape(n, H, -1) / np.maximum(count, 1)[..., None]
        dt = np.nan_to_num(t - prev[:, 0], nan=0.0)
        alpha = np.where(scored, (1.0 - np.exp(-dt / cfg.memory))[:, None], 0.0)  # (n, H)
        loss += alpha[..., None] * (mean_rel - loss)
        state.loss[rows] = loss
        fl_t[r, f] = np.nan  # scored: the lane is free again
    w = _weights(loss, cfg)  # (n, H, E)
    off = w[:, :, 0, None] * experts[:, :, 0]  # a fixed order of sums: bit-for-bit anywhere
    for e in range(1, w.shape[2]):
        off += w[:, :, e, None] * experts[:, :, e]
    # Put this sample's predictions in flight: per horizon in its first free lane (a
    # reset drops every flight first).
    fl_t[reset] = np.nan
    ar, af, ak = [], [], []
    free = np.isnan(fl_t)
    for kk in range(H):
        a0, lanes = state.lane_start[kk], state.lanes[kk]
        block = free[:, a0 : a0 + lanes]
        lane = block.argmax(axis=1)
        ok = block[np.arange(n), lane]
        ar.append(np.flatnonzero(ok))
        af.append(a0 + lane[ok])
        ak.append(np.full(int(ok.sum()), kk))
    r, f, k = np.concatenate(ar), np.concatenate(af), np.concatenate(ak)
    fl_t[r, f] = t[r]
    state.fl_t[rows] = fl_t
    if len(r):  # (none when every lane is busy: samples faster than lane_dt)
        at = rows[r] * F + f
        fl_anchor[at] = p[r]
        new = np.take(experts.reshape(n * H, state.E, 3), r * H + k, axis=0).astype(np.float32)
        _rows_of(fl_off)[at] = _rows_of(new)  # a row copy per flight (fancy assignment: slower)
    state.prev[rows, 0] = t
    state.prev[rows, 1:] = p
    return off, w.transpose(0, 2, 1)


def replay(
    t: np.ndarray,
    p: np.ndarray,
    reset: np.ndarray,
    net: np.ndarray,
    v: np.ndarray,
    prior_dp: np.ndarray,
    prior_v: np.ndarray,
    horizons: np.ndarray,
    cfg: BlendConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """`step` over one recorded stream of N samples, exactly as the engine serves it.

    Inputs are per sample (N, ...): times, positions, resets, the network's offsets
    (N, H, 3) and the feature pipeline's `v`, `prior_dp`, `prior_v` (N, 3). Returns the
    served offsets (N, H, 3) and weights (N, E, H).
    """
    return replay_many([(t, p, reset, net, v, prior_dp, prior_v)], horizons, cfg)[0]


def replay_many(streams: list[tuple], horizons: np.ndarray, cfg: BlendConfig) -> list[tuple]:
    """`replay` for many streams at once (one row each, stepped by sample index)."""
    m = len(streams)
    if m == 0:
        return []
    H, E = len(horizons), len(EXPERTS)
    lengths = np.array([len(s[0]) for s in streams], dtype=np.int64)
    T = int(lengths.max())

    def pad(j: int, shape: tuple, dtype=np.float64) -> np.ndarray:
        a = np.zeros((m, T, *shape), dtype=dtype)
        for i, s in enumerate(streams):
            a[i, : lengths[i]] = s[j]
        return a

    tt, pp, rs = pad(0, ()), pad(1, (3,)), pad(2, (), bool)
    net, v, dp, pv = pad(3, (H, 3)), pad(4, (3,)), pad(5, (3,)), pad(6, (3,))
    off_all = np.zeros((m, T, H, 3))
    w_all = np.zeros((m, T, E, H))
    state = BlendState(m, horizons, cfg.lane_dt, cfg.max_lanes)
    order = np.argsort(-lengths, kind="stable")
    for k in range(T):
        rows = order[: int((lengths > k).sum())]
        filt = update_filters(
            state, rows, tt[rows, k], pp[rows, k], pv[rows, k], rs[rows, k], horizons, cfg
        )
        ex = expert_offsets(net[rows, k], v[rows, k], dp[rows, k], pv[rows, k], filt, horizons)
        off, w = step(state, rows, tt[rows, k], pp[rows, k], rs[rows, k], ex, horizons, cfg)
        off_all[rows, k] = off
        w_all[rows, k] = w
    return [(off_all[i, : lengths[i]], w_all[i, : lengths[i]]) for i in range(m)]
