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
   keeps ``L``: the avatar is the same person. A new avatar (join) starts from its
   **room's** ``L``: per room, each scored avatar-sample moves the room's estimate
   `room_rate` of the way to its relative losses, so a newcomer is weighed like the
   people around it until its own predictions come due (a new room starts at ``L = 0``,
   the prior weights). The room learns from a tick's scores after the tick is served,
   so the order of the avatars within a tick does not matter.
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
The room's start changes only where that stretch begins (a start ``L_0`` is a prior of
``prior[e] * exp(-eta * L_0[e])``; the bound's ``ln(1 / prior_min)`` grows by at most
``eta * max(L_0)``, which `memory` forgets like any other past loss).

**Experts** (`EXPERTS`), all as offsets from the sample: the network (its own path, which
is a gated residual over the Kalman prior), the Kalman prior alone (the model's filter, a
smooth one), a responsive Kalman filter (`fast_q`, `fast_r`: the tuning the offline
evaluation picks on stream-rate game and sports motion), constant velocity over the last
interval, a turning model (the prior's velocity turned at a smoothed turn rate:
constant turn rate and velocity), and two IMMs of constant velocity and coordinated turn
(`server.core.priors.imm_step`, a manoeuvring-target filter), a smooth and a responsive one.
Together the filters span the tunings the offline evaluation picks per data set, so the
weighting tunes the classical side per avatar online as well.

No per-row Python: the per-row work is compiled (`server.core.blend_kernels`, numba), in place
on `BlendState`'s row-major per-slot arrays. `replay` runs the same `step` over recorded
streams, for the offline evaluation (`training.evaluate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from server.core import blend_kernels as K
from server.core import priors

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
    # the room's prior: each scored avatar-sample moves its room's loss estimate this share of
    # the way; an avatar's first sample starts from its room's estimate (0: from the prior)
    room_rate: float = 0.01

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
            or not 0 <= self.room_rate <= 1
        ):
            raise ValueError(
                "need eta >= 0, memory, turn_tau, lane_dt > 0, max_lanes >= 1 and "
                "0 <= room_rate <= 1"
            )

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
    (n, 9) the responsive Kalman filter (`server.core.priors.kalman_step`'s fields), `imm` (n, 2,
    67) the two IMM filters (`server.core.priors.imm_step`'s). Per room (indexed by a room id
    below n, not by row): `room` (n, H, E) the room's loss estimate, where its avatars' first
    samples start.
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
        self.room = np.zeros((n, H, E))
        self.clear(slice(None))

    def __len__(self) -> int:
        return len(self.loss)

    def clear(self, rows: np.ndarray | slice | int) -> None:
        """Forget rows (a new avatar): nothing in flight; its first sample starts from its
        room's losses."""
        for name in self.FIELDS:
            getattr(self, name)[rows] = 0.0
        self.fl_t[rows] = np.nan
        self.prev[rows, 0] = np.nan

    def clear_rooms(self, ids: np.ndarray | slice | int) -> None:
        """Forget rooms (a new room; every room at a model swap): the prior weights."""
        self.room[ids] = 0.0

    def grow(self, n: int) -> None:
        """Extend to `n` rows; new rows are clear."""
        old = len(self)
        if n <= old:
            return
        new = BlendState(n - old, self.horizons, self.lane_dt, self.max_lanes)
        for name in (*self.FIELDS, "room"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(new, name)]))

    def weights(self, rows: np.ndarray, cfg: BlendConfig) -> np.ndarray:
        """Current weights (n, E, H) of `rows`."""
        return _weights(self.loss[rows], cfg).transpose(0, 2, 1)


def warm_up(horizons=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)) -> None:
    """Compile the kernels now (or load them from numba's cache: fast), so that no tick
    waits for it. Call at startup; the engine does, and so does a step worker before it
    says it is ready."""
    cfg, h = BlendConfig(), np.asarray(horizons, dtype=np.float64)
    state = BlendState(1, h)
    rows, t, p, reset = np.zeros(1, np.int64), np.zeros(1), np.zeros((1, 3)), np.ones(1, bool)
    filt = update_filters(state, rows, t, p, p, reset, h, cfg)
    ex = expert_offsets(np.zeros((1, len(h), 3)), p, p, p, filt, h)
    step(state, rows, t, p, reset, ex, h, cfg)
    state.weights(rows, cfg)


def _weights(loss: np.ndarray, cfg: BlendConfig) -> np.ndarray:
    """(n, H, E) losses -> (n, H, E) weights."""
    loss = np.ascontiguousarray(loss, dtype=np.float64)
    out = np.empty_like(loss)
    K.weights_rows(loss, _log_prior(cfg), float(cfg.eta), out)
    return out


def _log_prior(cfg: BlendConfig) -> np.ndarray:
    with np.errstate(divide="ignore"):  # a zero prior weight: the expert is left out
        return np.log(np.asarray(cfg.prior, dtype=np.float64))


def _filter_params(cfg: BlendConfig) -> np.ndarray:
    """The classical filters' parameters as `blend_kernels.filters` reads them."""
    return np.array(
        [cfg.turn_tau, cfg.turn_min_speed, cfg.max_turn_rate, cfg.fast_q, cfg.fast_r]
        + [priors.SWITCH_RATE, *cfg.imm_smooth_q, *cfg.imm_fast_q],
        dtype=np.float64,
    )


def _uniform(h: np.ndarray) -> bool:
    """Horizons at 1, 2, ... times the first (`blend_kernels.arcs` then rotates)."""
    return bool(np.allclose(h, h[0] * np.arange(1, len(h) + 1), rtol=0.0, atol=1e-12))


def _f64(a, shape=None) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a if shape is None else a.reshape(shape)


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

    `rows` (n,) distinct slots. The turn rate: the heading of the Kalman velocity `prior_v`
    (n, 3); its change since the row's last sample over the interval is the raw rate,
    smoothed with time constant `turn_tau`. Below `turn_min_speed` the heading is not
    measured and the rate decays to zero. A reset (or a row's first sample) starts every
    filter over (the turn rate at zero). Raises nothing for finite input.
    """
    h = _f64(horizons)
    n = len(rows)
    omega, fast_dp, fast_v = np.empty(n), np.empty((n, 3)), np.empty((n, 3))
    imm_off = np.empty((2, n, len(h), 3))
    K.filters(
        state.prev, state.turn, state.kf, state.imm, np.asarray(rows, dtype=np.int64),
        _f64(t), _f64(p, (n, 3)), _f64(prior_v, (n, 3)), np.asarray(reset, dtype=np.bool_),
        h, _uniform(h), _filter_params(cfg), omega, fast_dp, fast_v, imm_off,
    )  # fmt: skip
    return omega, fast_dp, fast_v, imm_off[0], imm_off[1]


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
    a reset); `prior_dp`, `prior_v` (n, 3) the Kalman prior (`server.core.features.StepOutput`);
    `filters` what `update_filters` returned: the turn rate (n,), the responsive Kalman
    filter's position minus the sample and velocity (n, 3) each, the IMM's offsets (n, H, 3).
    The turning expert moves from the Kalman position with its velocity turned at the turn
    rate w: offset ``dp + h (S v + C v_perp)`` with S = sin(wh)/(wh), C = (1 - cos wh)/(wh)
    (`server.core.priors.arc_terms`), z at constant velocity.
    """
    omega, fast_dp, fast_v, imm_smooth, imm_fast = filters
    h = _f64(horizons)
    n, H = len(net), len(h)
    out = np.empty((n, H, len(EXPERTS), 3), dtype=np.float32)
    K.experts(
        _f64(net, (n, H, 3)), _f64(v, (n, 3)), _f64(prior_dp, (n, 3)), _f64(prior_v, (n, 3)),
        _f64(omega), _f64(fast_dp, (n, 3)), _f64(fast_v, (n, 3)),
        np.stack([_f64(imm_smooth, (n, H, 3)), _f64(imm_fast, (n, H, 3))]), h, _uniform(h), out,
    )  # fmt: skip
    return out


def step(
    state: BlendState,
    rows: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    reset: np.ndarray,
    experts: np.ndarray,
    horizons: np.ndarray,
    cfg: BlendConfig,
    room: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score the due predictions of `rows` on their new sample, then blend the experts.

    `rows` (n,) distinct, `t` (n,) the new samples' times (after each row's previous one),
    `p` (n, 3) their positions, `reset` (n,) bool segment starts, `experts` (n, H, E, 3)
    every expert's offsets from `p` (`expert_offsets`; kept as float32), `room` (n,) each
    row's room id (< len(state); default 0). Call `update_filters` first (it reads the
    previous sample time this updates). A row's first sample starts from its room's losses;
    the rooms learn from this call's scores after every row is served (the order of the
    rows does not matter). Returns the served offsets (n, H, 3) float64 and the weights
    used (n, E, H). Updates `state` in place. Raises nothing for finite input.
    """
    h = _f64(horizons)
    n, H, E = len(rows), len(h), state.E
    off = np.empty((n, H, 3))
    w = np.empty((n, E, H))
    room = np.zeros(n, dtype=np.int64) if room is None else np.asarray(room, dtype=np.int64)
    ids, local = np.unique(room, return_inverse=True)
    K.step(
        state.loss, state.fl_t, state.fl_anchor, state.fl_off, state.prev, state.hk,
        state.lane_start, state.lanes, np.asarray(rows, dtype=np.int64), _f64(t),
        _f64(p, (n, 3)), np.asarray(reset, dtype=np.bool_),
        np.ascontiguousarray(experts, dtype=np.float32).reshape(n, H, E, 3), h,
        _log_prior(cfg), np.asarray(cfg.prior) > 0, float(cfg.eta), float(cfg.memory),
        _EPS2, state.room, room, ids, local.astype(np.int64), float(cfg.room_rate), off, w,
    )  # fmt: skip
    return off, w


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
    """`step` over one recorded stream of N samples (an avatar alone in its room), exactly
    as the engine serves it.

    Inputs are per sample (N, ...): times, positions, resets, the network's offsets
    (N, H, 3) and the feature pipeline's `v`, `prior_dp`, `prior_v` (N, 3). Returns the
    served offsets (N, H, 3) and weights (N, E, H).
    """
    return replay_many([(t, p, reset, net, v, prior_dp, prior_v)], horizons, cfg)[0]


def replay_many(
    streams: list[tuple],
    horizons: np.ndarray,
    cfg: BlendConfig,
    ticks: list[np.ndarray] | None = None,
    room: np.ndarray | None = None,
) -> list[tuple]:
    """`replay` for many streams at once, tick by tick as the engine serves them.

    `ticks[i]` (N_i,) strictly increasing: the tick that serves each sample of stream i
    (default: its index); `room` (m,) each stream's room id (ids below m; default: each
    stream alone in a room of its own). The rows of one tick are stepped together, as the
    engine steps them; a room's prior is shared by its streams (here a room never empties
    and comes back, so it is never cleared: give a new room a new id).
    """
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
    room = np.arange(m) if room is None else np.asarray(room, dtype=np.int64)
    seq = np.repeat(np.arange(m), lengths)
    idx = np.concatenate([np.arange(n) for n in lengths])
    tk = idx if ticks is None else np.concatenate([np.asarray(k, np.int64) for k in ticks])
    order = np.lexsort((seq, tk))
    for chunk in np.split(order, np.flatnonzero(np.diff(tk[order])) + 1):
        rows, k = seq[chunk], idx[chunk]
        filt = update_filters(
            state, rows, tt[rows, k], pp[rows, k], pv[rows, k], rs[rows, k], horizons, cfg
        )
        ex = expert_offsets(net[rows, k], v[rows, k], dp[rows, k], pv[rows, k], filt, horizons)
        off, w = step(
            state, rows, tt[rows, k], pp[rows, k], rs[rows, k], ex, horizons, cfg, room[rows]
        )
        off_all[rows, k] = off
        w_all[rows, k] = w
    return [(off_all[i, : lengths[i]], w_all[i, : lengths[i]]) for i in range(m)]


def serve(
    state: BlendState,
    cfg: BlendConfig,
    slots: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    out,
    net: np.ndarray,
    groups: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """One tick of the blend for `slots`: the filters updated, the experts' offsets (the
    network's `net` among them), scored and weighted. `out` is the tick's
    `features.StepOutput`, `groups` each row's room id. Returns the served offsets
    (n, H, 3) float32 and each row's expert weights averaged over the horizons (n, E)."""
    horizons = state.horizons
    filt = update_filters(state, slots, t, p, out.prior_v, out.reset, horizons, cfg)
    ex = expert_offsets(net, out.v, out.prior_dp, out.prior_v, filt, horizons)
    off, w = step(state, slots, t, p, out.reset, ex, horizons, cfg, groups)
    return off.astype(np.float32), w.mean(axis=2)
