"""Online expert weighting: per avatar and per horizon, serve a blend of the predictors
that have been right for *that* avatar lately.

The network was trained offline; whether it beats the classical filters on an avatar it
has never seen (a VR user, a mouse-driven FPS player) only shows once its predictions come
due. The server sees that for every avatar, so each tick, per avatar (row) and horizon k:

1. **Score** (strictly causal). Each row keeps one prediction in flight per horizon: the
   experts' predicted positions for ``t_a + h_k``, made at an earlier sample time ``t_a``.
   Once a sample arrives at or after ``t_a + h_k`` it is due: the truth at ``t_a + h_k``
   is interpolated between the previous sample and this one (both later than, or at,
   ``t_a``; nothing newer than this sample is used), each expert's squared error is
   divided by the mean squared error of the experts taking part (prior weight > 0) at
   that event (a *relative* loss in [0, E], the same for every scale of motion), and folded into a decaying average
   ``L[e, k]`` with time constant `memory` seconds (weight ``1 - exp(-dt / memory)`` for
   a prediction ``dt`` seconds old). A new prediction is then put in flight from this
   sample. A reset (gap, teleport) drops the flights but keeps ``L``: the avatar is the
   same person; a new avatar (join) starts from ``L = 0``.
2. **Weigh**: ``w[e, k] = prior[e] * exp(-eta * L[e, k])``, normalised over e
   (exponentially weighted average forecaster / Hedge).
3. **Serve** ``sum_e w[e, k] * offset_e[k]``.

**Why it tracks the best expert.** The squared distance is convex, so the blend's loss is
at most the weighted mean of the experts' losses (Jensen); and for exponential weights on
losses bounded in [0, E], the weighted mean's cumulative (here: discounted, over the last
~`memory` seconds) relative loss exceeds the best single expert's by at most
``ln(1 / prior_min) / eta' + eta' * E**2 / 8`` per unit of effective sample count, where
``eta' = eta / N_eff`` and ``N_eff`` is the number of scorings within `memory`
(Cesa-Bianchi & Lugosi, *Prediction, Learning, and Games*, Thm 2.2 with discounting). The
term does not grow with time, so over any stretch the blend is, per avatar and horizon,
within a bounded term of whichever expert was best for that avatar over that stretch.

**Experts** (`EXPERTS`), all as offsets from the sample: the network (its own path, which
is a gated residual over the Kalman prior), the Kalman prior alone, constant velocity
over the last interval, and a turning model (the Kalman velocity turned at a smoothed turn
rate: constant turn rate and velocity).

Pure numpy, no per-row Python; `BlendState` is field-major like
`server.features.FeatureState`. `replay` runs the same `step` over recorded streams, for
the offline evaluation (`training.evaluate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

EXPERTS: tuple[str, ...] = ("net", "kalman", "cv", "turn")
_EPS2 = 1e-6  # m^2: an error below ~1 mm counts as exact (relative losses stay defined)


@dataclass(frozen=True)
class BlendConfig:
    """Parameters of the online weighting (see the module docstring)."""

    prior: tuple[float, ...] = (0.55, 0.25, 0.05, 0.15)  # weights before any scoring
    eta: float = 4.0  # learning rate on the relative losses
    memory: float = 3.0  # s, time constant of the loss averages
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
        if self.eta < 0 or self.memory <= 0 or self.turn_tau <= 0:
            raise ValueError("need eta >= 0, memory > 0 and turn_tau > 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BlendConfig:
        return cls(**d)


class BlendState:
    """Per-row memory of the weighting: losses, predictions in flight, the turn rate.

    One (width, n) float64 array, field-major. Views: `loss` (E, H, n), `fl_t` (H, n) the
    anchor time of each horizon's prediction in flight (NaN: none), `fl_pos` (E, H, 3, n)
    its predicted absolute positions, `prev` (4, n) the previous sample (t, x, y, z; t NaN:
    none), `turn` (2, n) the turn rate and the heading it was last measured at.
    """

    def __init__(self, n: int, n_horizons: int) -> None:
        self.E, self.H = len(EXPERTS), n_horizons
        self.width = self.E * self.H * 4 + self.H + 6
        self.data = np.zeros((self.width, n))
        self.clear(slice(None))

    def _views(self) -> None:
        E, H, d = self.E, self.H, self.data
        n = d.shape[1]
        a = E * H
        self.loss = d[:a].reshape(E, H, n)
        self.fl_t = d[a : a + H]
        self.fl_pos = d[a + H : a + H + 3 * a].reshape(E, H, 3, n)
        self.prev = d[a + H + 3 * a : a + H + 3 * a + 4]
        self.turn = d[a + H + 3 * a + 4 :]

    def __len__(self) -> int:
        return self.data.shape[1]

    def clear(self, rows: np.ndarray | slice | int) -> None:
        """Forget rows (a new avatar): prior weights, nothing in flight."""
        self._views()
        self.data[:, rows] = 0.0
        self.fl_t[:, rows] = np.nan
        self.prev[0, rows] = np.nan

    def grow(self, n: int) -> None:
        """Extend to `n` rows; new rows are clear."""
        old = len(self)
        if n <= old:
            return
        self.data = np.concatenate([self.data, BlendState(n - old, self.H).data], axis=1)
        self._views()

    def weights(self, rows: np.ndarray, cfg: BlendConfig) -> np.ndarray:
        """Current weights (n, E, H) of `rows`."""
        return _weights(self.loss[:, :, rows], cfg)


def _weights(loss: np.ndarray, cfg: BlendConfig) -> np.ndarray:
    """(E, H, n) losses -> (n, E, H) weights."""
    with np.errstate(divide="ignore"):  # a zero prior weight: the expert is left out
        logit = np.log(np.asarray(cfg.prior))[:, None, None] - cfg.eta * loss
    logit -= logit.max(axis=0, keepdims=True)
    w = np.exp(logit)
    w /= w.sum(axis=0, keepdims=True)
    return w.transpose(2, 0, 1)


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
    w = omega[:, None]
    wh = w * h
    small = np.abs(wh) < 1e-4
    safe = np.where(small, 1.0, w)
    # S = sin(wh)/w, C = (1 - cos(wh))/w, with their series near w = 0
    S = np.where(small, h - w * w * h**3 / 6.0, np.sin(wh) / safe)
    C = np.where(small, w * h * h / 2.0, (1.0 - np.cos(wh)) / safe)
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
    omega: np.ndarray,
    horizons: np.ndarray,
) -> np.ndarray:
    """Every expert's offsets (n, E, H, 3) in `EXPERTS` order.

    `net` (n, H, 3) the network's offsets; `v` (n, 3) the last interval's velocity (zero at
    a reset); `prior_dp`, `prior_v` (n, 3) the Kalman prior (`server.features.StepOutput`);
    `omega` (n,) the turn rate (`BlendState.turn[0]` after `update_turn`).
    """
    h = np.asarray(horizons, dtype=np.float64)[None, :, None]
    out = np.empty((len(net), len(EXPERTS), h.shape[1], 3))
    out[:, 0] = net
    out[:, 1] = prior_dp[:, None, :] + prior_v[:, None, :] * h
    out[:, 2] = v[:, None, :] * h
    out[:, 3] = turn_offsets(prior_dp, prior_v, omega, horizons)
    return out


def update_turn(
    state: BlendState,
    rows: np.ndarray,
    t: np.ndarray,
    prior_v: np.ndarray,
    reset: np.ndarray,
    cfg: BlendConfig,
) -> np.ndarray:
    """Advance the turn rate of `rows` by one sample and return it (n,).

    The heading of the Kalman velocity `prior_v` (n, 3); its change since the row's last
    sample over the interval is the raw rate, smoothed with time constant `turn_tau`. Below
    `turn_min_speed` the heading is not measured and the rate decays to zero. A reset (or a
    row's first sample) starts at zero.
    """
    old = state.turn[:, rows]
    dt = np.nan_to_num(t - state.prev[0, rows], nan=1.0)
    dt = np.maximum(dt, 1e-3)
    speed = np.hypot(prior_v[:, 0], prior_v[:, 1])
    theta = np.arctan2(prior_v[:, 1], prior_v[:, 0])
    moving = speed > cfg.turn_min_speed
    fresh = reset | np.isnan(state.prev[0, rows])
    raw = np.where(moving & ~fresh, _wrap(theta - old[1]) / dt, 0.0)
    keep = np.exp(-dt / cfg.turn_tau)
    omega = np.where(fresh, 0.0, keep * old[0] + (1.0 - keep) * raw)
    omega = np.clip(omega, -cfg.max_turn_rate, cfg.max_turn_rate)
    state.turn[0, rows] = omega
    state.turn[1, rows] = np.where(moving | fresh, theta, old[1])
    return omega


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
    `p` (n, 3) their positions, `reset` (n,) bool segment starts, `experts` (n, E, H, 3)
    every expert's offsets from `p` (`expert_offsets`). Call `update_turn` first (it reads
    the previous sample time this updates). Returns the served offsets (n, H, 3) and the
    weights used (n, E, H). Updates `state` in place. Raises nothing for finite input.
    """
    h = np.asarray(horizons, dtype=np.float64)
    pT = np.asarray(p, dtype=np.float64).T  # (3, n)
    loss = state.loss[:, :, rows]  # (E, H, n) copies (fancy index)
    fl_t = state.fl_t[:, rows]  # (H, n)
    prev = state.prev[:, rows]  # (4, n)
    due = (fl_t + h[:, None] <= t[None, :] + 1e-9) & ~reset[None, :]  # NaN -> False
    if due.any():
        hk, r = np.nonzero(due)
        rr = rows[r]
        tau = fl_t[hk, r] + h[hk]
        span = t[r] - prev[0, r]
        a = np.clip((tau - prev[0, r]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
        truth = prev[1:4, r] + a * (pT[:, r] - prev[1:4, r])  # (3, m)
        pred = state.fl_pos[:, hk, :, rr]  # (m, E, 3)
        err2 = ((pred - truth.T[:, None, :]) ** 2).sum(axis=2)  # (m, E)
        on = np.asarray(cfg.prior) > 0  # the experts taking part
        rel = err2 / (err2[:, on].mean(axis=1, keepdims=True) + _EPS2)
        alpha = 1.0 - np.exp(-(t[r] - fl_t[hk, r]) / cfg.memory)  # (m,)
        loss[:, hk, r] += alpha[None, :] * (rel.T - loss[:, hk, r])
        state.loss[:, :, rows] = loss
    w = _weights(loss, cfg)  # (n, E, H)
    off = w[:, 0, :, None] * experts[:, 0]  # a fixed order of sums: bit-for-bit anywhere
    for e in range(1, w.shape[1]):
        off += w[:, e, :, None] * experts[:, e]
    # Put new predictions in flight where the old one was scored, or none flies.
    arm = due | np.isnan(fl_t) | reset[None, :]
    hk, r = np.nonzero(arm)
    state.fl_t[hk, rows[r]] = t[r]
    state.fl_pos[:, hk, :, rows[r]] = experts[r, :, hk, :] + p[r][:, None, :]
    state.prev[0, rows] = t
    state.prev[1:4, rows] = pT
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
    state = BlendState(m, H)
    order = np.argsort(-lengths, kind="stable")
    for k in range(T):
        rows = order[: int((lengths > k).sum())]
        omega = update_turn(state, rows, tt[rows, k], pv[rows, k], rs[rows, k], cfg)
        ex = expert_offsets(net[rows, k], v[rows, k], dp[rows, k], pv[rows, k], omega, horizons)
        off, w = step(state, rows, tt[rows, k], pp[rows, k], rs[rows, k], ex, horizons, cfg)
        off_all[rows, k] = off
        w_all[rows, k] = w
    return [(off_all[i, : lengths[i]], w_all[i, : lengths[i]]) for i in range(m)]
