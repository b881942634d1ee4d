"""Non-learned path predictors (hold, constant velocity, Kalman, IMM) and their error metric.

A *path predictor* is any callable ``predict(t, p, horizons) -> paths`` with `t` (N,) seconds
(strictly increasing), `p` (N, 3) metres and `horizons` (H,) seconds; ``paths[k, i]`` is the
predicted ABSOLUTE position at ``t[k] + horizons[i]`` using only samples ``0..k`` (causal).
A time gap ``> max_gap`` or a jump faster than ``max_speed`` starts a new segment (reset): the
first sample of a segment has zero velocity, so its path holds position.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from server.core import priors
from server.core.features import FeatureConfig, reset_mask
from training.datasets import Track

MAX_GAP = FeatureConfig.max_gap  # the served reset rule (server.features)
MAX_SPEED = FeatureConfig.max_speed

Q_GRID = tuple(np.logspace(-2, 2, 6).tolist())  # m²/s³
R_GRID = tuple(np.logspace(-3, math.log10(0.3), 6).tolist())  # m

PathPredictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _check(t: np.ndarray, p: np.ndarray, horizons: np.ndarray):
    t = np.asarray(t, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    h = np.asarray(horizons, dtype=np.float64)
    if t.ndim != 1 or p.shape != (t.size, 3):
        raise ValueError(f"expected t (N,) and p (N, 3); got {t.shape} and {p.shape}")
    if h.ndim != 1:
        raise ValueError(f"horizons must be 1-D; got shape {h.shape}")
    if t.size > 1 and not np.all(np.diff(t) > 0):
        raise ValueError("t must be strictly increasing")
    return t, p, h


def _resets(t: np.ndarray, p: np.ndarray, max_gap: float, max_speed: float) -> np.ndarray:
    """Bool (N,): sample k starts a new segment (k = 0 always does), by the served rule."""
    dt = np.concatenate([[np.nan], np.diff(t)])
    v = np.zeros((3, t.size))
    if t.size > 1:
        v[:, 1:] = (np.diff(p, axis=0) / dt[1:, None]).T
    return reset_mask(dt, v, FeatureConfig(max_gap=max_gap, max_speed=max_speed))


def out_of_reach(
    truth: np.ndarray, anchor: np.ndarray, elapsed: np.ndarray | float, max_speed: float = MAX_SPEED
) -> np.ndarray:
    """Bool mask: `truth` lies farther from `anchor` than `max_speed` allows in `elapsed`
    seconds (plus 0.5 m): a teleport happened in between. Such futures are unpredictable
    for every predictor alike; training and scoring leave them out."""
    return np.linalg.norm(truth - anchor, axis=-1) > max_speed * elapsed + 0.5


def _segment_starts(reset: np.ndarray) -> np.ndarray:
    """Index of the first sample of each sample's segment."""
    return np.maximum.accumulate(np.where(reset, np.arange(reset.size), 0))


def segment_ids(
    t: np.ndarray, p: np.ndarray, max_gap: float = MAX_GAP, max_speed: float = MAX_SPEED
) -> np.ndarray:
    """Segment index (N,) int64, 0 for the first sample, +1 at each reset.

    A reset happens at sample k when ``t[k] - t[k-1] > max_gap`` or the jump from k-1 to k
    is faster than `max_speed` (m/s). Raises ValueError on malformed `t`/`p`.
    """
    t, p, _ = _check(t, p, np.zeros(0))
    if t.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.cumsum(_resets(t, p, max_gap, max_speed)) - 1


def _along(p: np.ndarray, v: np.ndarray, h: np.ndarray) -> np.ndarray:
    return p[:, None, :] + v[:, None, :] * h[None, :, None]


def hold(t: np.ndarray, p: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """Hold the latest position: ``paths[k, i] = p[k]``. Returns (N, H, 3)."""
    t, p, h = _check(t, p, horizons)
    return np.repeat(p[:, None, :], h.size, axis=1)


def cv_last(
    t: np.ndarray,
    p: np.ndarray,
    horizons: np.ndarray,
    max_gap: float = MAX_GAP,
    max_speed: float = MAX_SPEED,
) -> np.ndarray:
    """Constant velocity from the last interval (zero at a segment start). Returns (N, H, 3)."""
    t, p, h = _check(t, p, horizons)
    v = np.zeros_like(p)
    if t.size > 1:
        v[1:] = np.diff(p, axis=0) / np.diff(t)[:, None]
        v[_resets(t, p, max_gap, max_speed)] = 0.0
    return _along(p, v, h)


def cv_window(
    t: np.ndarray,
    p: np.ndarray,
    horizons: np.ndarray,
    window: float = 0.3,
    max_gap: float = MAX_GAP,
    max_speed: float = MAX_SPEED,
) -> np.ndarray:
    """Constant velocity over the trailing `window` seconds. Returns (N, H, 3).

    ``v_k = (p_k - p_j) / (t_k - t_j)`` with j the earliest sample of k's segment with
    ``t_j >= t_k - window``; the previous sample if that is k itself; zero at a segment start.
    """
    t, p, h = _check(t, p, horizons)
    n = t.size
    k = np.arange(n)
    start = _segment_starts(_resets(t, p, max_gap, max_speed))
    j = np.maximum(np.searchsorted(t, t - window, side="left"), start)
    j = np.where((j == k) & (k > start), k - 1, j)
    dt = t - t[j]
    v = np.zeros_like(p)
    ok = j < k
    v[ok] = (p[ok] - p[j[ok]]) / dt[ok, None]
    return _along(p, v, h)


@dataclass
class KalmanCV:
    """Constant-velocity Kalman filter, independent per axis (shared covariance).

    Process model: white-noise acceleration with spectral density `q` (m²/s³); measurement
    noise std `r` (m); `init_vel_std` (m/s) is the velocity std at each reset. Calling it is a
    path predictor: ``pos + vel * h`` from the filtered state after sample k.
    """

    q: float = 1.0
    r: float = 0.01
    max_gap: float = MAX_GAP
    max_speed: float = MAX_SPEED
    init_vel_std: float = 10.0

    def filter(self, t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filtered (position, velocity), each (N, 3), after each sample. Raises ValueError."""
        t, p, _ = _check(t, p, np.zeros(0))
        n = t.size
        pos = np.empty((n, 3))
        vel = np.empty((n, 3))
        if n == 0:
            return pos, vel
        reset = _resets(t, p, self.max_gap, self.max_speed).tolist()
        ts = t.tolist()
        zs = p.tolist()
        q, r2, v2 = float(self.q), float(self.r) ** 2, float(self.init_vel_std) ** 2
        x0 = x1 = x2 = v0 = v1 = v2_ = 0.0
        p00 = p01 = p11 = 0.0
        out = [None] * n
        prev_t = 0.0
        for k in range(n):
            tk = ts[k]
            z0, z1, z2 = zs[k]
            if reset[k]:
                x0, x1, x2 = z0, z1, z2
                v0 = v1 = v2_ = 0.0
                p00, p01, p11 = r2, 0.0, v2
            else:
                dt = tk - prev_t
                # predict
                a00 = p00 + dt * (2.0 * p01 + dt * p11) + q * dt**3 / 3.0
                a01 = p01 + dt * p11 + q * dt * dt / 2.0
                a11 = p11 + q * dt
                x0 += dt * v0
                x1 += dt * v1
                x2 += dt * v2_
                # update
                s = a00 + r2
                k0 = a00 / s
                k1 = a01 / s
                e0, e1, e2 = z0 - x0, z1 - x1, z2 - x2
                x0 += k0 * e0
                x1 += k0 * e1
                x2 += k0 * e2
                v0 += k1 * e0
                v1 += k1 * e1
                v2_ += k1 * e2
                p00 = (1.0 - k0) * a00
                p01 = (1.0 - k0) * a01
                p11 = a11 - k1 * a01
            prev_t = tk
            out[k] = (x0, x1, x2, v0, v1, v2_)
        arr = np.asarray(out, dtype=np.float64)
        pos[:] = arr[:, :3]
        vel[:] = arr[:, 3:]
        return pos, vel

    def __call__(self, t: np.ndarray, p: np.ndarray, horizons: np.ndarray) -> np.ndarray:
        """Path predictor: (N, H, 3) absolute positions. Raises ValueError on bad shapes."""
        _, _, h = _check(t, p, horizons)
        pos, vel = self.filter(t, p)
        return _along(pos, vel, h)

    @classmethod
    def tune(
        cls,
        tracks: Sequence[Track],
        horizons: np.ndarray,
        q_grid: Sequence[float] | np.ndarray = Q_GRID,
        r_grid: Sequence[float] | np.ndarray = R_GRID,
        **kwargs,
    ) -> KalmanCV:
        """Grid-search (q, r) minimising mean displacement error over all samples and horizons.

        Errors are against ``track.truth_at(t + h)`` (undefined ones ignored); `kwargs` are
        passed to the constructor (max_gap, max_speed, init_vel_std). Ties keep the first
        grid point (q outer, r inner). Raises ValueError if no error is defined at all.
        """
        h = np.asarray(horizons, dtype=np.float64)
        truths = [_truth(tr, h) for tr in tracks]
        best, best_err = None, math.inf
        for q in q_grid:
            for r in r_grid:
                kf = cls(q=float(q), r=float(r), **kwargs)
                total, count = 0.0, 0
                for tr, truth in zip(tracks, truths, strict=True):
                    err = np.linalg.norm(kf(tr.t, tr.p, h) - truth, axis=-1)
                    ok = ~np.isnan(err)
                    total += float(err[ok].sum())
                    count += int(ok.sum())
                if count == 0:
                    raise ValueError("no defined truth for any sample/horizon")
                if total / count < best_err:
                    best, best_err = kf, total / count
        if best is None:
            raise ValueError("empty q_grid/r_grid")
        return best


SWITCH_RATE = priors.SWITCH_RATE  # 1/s: stay probability 0.95 per 0.05 s
IMM_Q_GRID = Q_GRID  # m²/s³, q_cv
IMM_QCT_RATIOS = (1.0, 10.0)  # q_ct / q_cv
IMM_QW_GRID = (3.0, 30.0)  # rad²/s³
IMM_R_GRID = R_GRID  # m


@dataclass
class IMM:
    """Interacting Multiple Model filter (Blom & Bar-Shalom): constant velocity (CV) and
    coordinated turn (CT) on the horizontal state [x, y, vx, vy, w]; z by its own CV Kalman.

    CV: straight motion, white-noise acceleration `q_cv` (m²/s³); it carries w unchanged
    and unused (what it hands CT when the modes mix). CT (an EKF): the velocity turns at
    rate w, white-noise acceleration `q_ct` on position/velocity and a random walk of w
    with density `q_w` (rad²/s³); near w dt = 0 its terms use their series. Samples measure (x, y) with std `r` (m). The modes switch as a
    symmetric Markov chain of rate `switch_rate` (1/s): switch probability
    ``(1 - exp(-2 rate dt)) / 2`` over a step of dt (0.05 at dt = 0.05 s by default), so
    irregular steps work. z: `KalmanCV` with `q_cv` and `r`. A reset (the rule of
    `KalmanCV`) puts both models at the sample, velocity 0 (std `init_vel_std`), w 0 (std
    `init_omega_std`), mode probabilities (1/2, 1/2). Covariances update as
    ``(I - K H) P`` symmetrised; mode probabilities are floored at 1e-9.

    Calling it is a path predictor: each model's filtered mean moved by that model's own
    motion (CV: the line; CT: the arc at its w) for each horizon, the positions weighted by
    the mode probabilities after sample k (the standard IMM prediction; no switching is
    assumed within the horizon). It runs `server.core.priors.imm_step` (rows = tracks);
    `reference` is a plain per-sample textbook implementation, its test oracle. One call
    costs ~0.4 ms per sample (numpy overhead of a one-row step); `paths_many` runs many
    tracks at once (~1 s for 100k samples in 300 tracks).
    """

    q_cv: float = 0.5
    q_ct: float = 0.5
    q_w: float = 3.0
    r: float = 0.01
    switch_rate: float = SWITCH_RATE
    max_gap: float = MAX_GAP
    max_speed: float = MAX_SPEED
    init_vel_std: float = 10.0
    init_omega_std: float = 1.0

    STEP_PARAMS = ("q_cv", "q_ct", "q_w", "r", "switch_rate", "init_vel_std", "init_omega_std")

    def states(self, t: np.ndarray, p: np.ndarray) -> np.ndarray:
        """The `server.core.priors` state (N, IMM_WIDTH) after each sample. Raises ValueError."""
        t, p, _ = _check(t, p, np.zeros(0))
        _, steps = _imm_steps([(t, p)], [self], self.max_gap, self.max_speed)
        out = np.empty((t.size, priors.IMM_WIDTH))
        for k, state in steps:
            out[k] = state[:, 0]
        return out

    def filter(self, t: np.ndarray, p: np.ndarray):
        """Filtered (position (N, 3), velocity (N, 3), turn rate (N,), mode probabilities
        (N, 2) [CV, CT]) after each sample; position/velocity are the mode-weighted means
        (z from the vertical filter), the turn rate the CT model's. Raises ValueError."""
        st = self.states(t, p)
        mu = st[:, priors.IMM_MU : priors.IMM_MU + 2]
        xy = mu[:, 0:1] * st[:, priors.IMM_CV : priors.IMM_CV + 4]
        xy += mu[:, 1:2] * st[:, priors.IMM_CT : priors.IMM_CT + 4]
        pos = np.column_stack([xy[:, 0], xy[:, 1], st[:, priors.IMM_Z]])
        vel = np.column_stack([xy[:, 2], xy[:, 3], st[:, priors.IMM_Z + 1]])
        return pos, vel, st[:, priors.IMM_CT + 4].copy(), mu.copy()

    def __call__(self, t: np.ndarray, p: np.ndarray, horizons: np.ndarray) -> np.ndarray:
        """Path predictor: (N, H, 3) absolute positions. Raises ValueError on bad shapes."""
        _, _, h = _check(t, p, horizons)
        return priors.imm_offsets(self.states(t, p).T, h)

    def paths_many(self, streams: Sequence[tuple[np.ndarray, np.ndarray]], horizons):
        """`self(t, p, horizons)` for every (t, p) of `streams` in one vectorised pass (the
        streams laid end to end in rows). Returns a list of (N_i, H, 3)."""
        streams = [_check(t, p, horizons)[:2] for t, p in streams]
        h = np.asarray(horizons, dtype=np.float64)
        place, steps = _imm_steps(streams, [self], self.max_gap, self.max_speed)
        n_rows = 1 + max((row for row, _ in place), default=-1)
        length = max((len(t) for t, _ in streams), default=0)
        hist = np.empty((length, priors.IMM_WIDTH, n_rows))
        for k, state in steps:
            hist[k] = state
        flat = hist.transpose(1, 0, 2).reshape(priors.IMM_WIDTH, length * n_rows)
        paths = priors.imm_offsets(flat, h).reshape(length, n_rows, h.size, 3)
        return [
            paths[s0 : s0 + len(t), row] for (t, _), (row, s0) in zip(streams, place, strict=True)
        ]

    def reference(self, t: np.ndarray, p: np.ndarray, horizons: np.ndarray):
        """The same predictor, per sample and per model in plain matrix form (the oracle of
        `__call__` and `server.core.priors.imm_step`): returns (paths (N, H, 3), modes (N, 2))."""
        t, p, h = _check(t, p, horizons)
        n = t.size
        paths = np.empty((n, h.size, 3))
        modes = np.empty((n, 2))
        if n == 0:
            return paths, modes
        reset = _resets(t, p, self.max_gap, self.max_speed)
        zpos, zvel = KalmanCV(
            q=self.q_cv,
            r=self.r,
            max_gap=self.max_gap,
            max_speed=self.max_speed,
            init_vel_std=self.init_vel_std,
        ).filter(t, p)
        for k in range(n):
            if reset[k]:
                xs, Ps, mu = self.initial(p[k, :2])
            else:
                xs, Ps, mu = imm_cycle(self, xs, Ps, mu, p[k, :2], t[k] - t[k - 1])
            modes[k] = mu
            for i, hi in enumerate(h):
                paths[k, i, :2] = sum(mu[j] * _imm_motion(j, xs[j], hi)[0][:2] for j in (0, 1))
            paths[k, :, 2] = zpos[k, 2] + zvel[k, 2] * h
        return paths, modes

    def initial(self, xy: np.ndarray):
        """Reset state: means (2, 5), covariances (2, 5, 5), mode probabilities (2,)."""
        x = np.array([xy[0], xy[1], 0.0, 0.0, 0.0])
        P = np.diag([self.r**2, self.r**2, self.init_vel_std**2, self.init_vel_std**2, 0.0])
        P[4, 4] = self.init_omega_std**2
        return np.stack([x, x]), np.stack([P, P]), np.array([0.5, 0.5])

    @classmethod
    def tune(
        cls,
        tracks: Sequence[Track],
        horizons: np.ndarray,
        q_grid: Sequence[float] | np.ndarray = IMM_Q_GRID,
        q_ct_ratios: Sequence[float] | np.ndarray = IMM_QCT_RATIOS,
        q_w_grid: Sequence[float] | np.ndarray = IMM_QW_GRID,
        r_grid: Sequence[float] | np.ndarray = IMM_R_GRID,
        **kwargs,
    ) -> IMM:
        """Grid-search (q_cv, q_ct = q_cv * ratio, q_w, r) minimising the mean displacement
        error, as `KalmanCV.tune`: errors against ``track.truth_at(t + h)`` (undefined ones
        ignored), `kwargs` to the constructor (not the tuned fields), ties keep the first
        grid point (q outermost, then ratio, q_w, r). All grid points run in one vectorised
        pass. Raises ValueError if no error is defined at all or a grid is empty.
        """
        h = np.asarray(horizons, dtype=np.float64)
        grid = [
            cls(q_cv=float(q), q_ct=float(q * m), q_w=float(w), r=float(r), **kwargs)
            for q in q_grid
            for m in q_ct_ratios
            for w in q_w_grid
            for r in r_grid
        ]
        if not grid:
            raise ValueError("empty q_grid/q_ct_ratios/q_w_grid/r_grid")
        return grid[int(np.argmin(_imm_grid_errors(grid, tracks, h)))]


def _imm_grid_errors(grid: Sequence[IMM], tracks: Sequence[Track], h: np.ndarray) -> np.ndarray:
    """Mean displacement error (len(grid),) of each IMM over all samples and horizons of
    `tracks` with a defined truth, all filters in one vectorised pass (they must share
    max_gap and max_speed). Raises ValueError if no truth is defined."""
    streams = [_check(tr.t, tr.p, h)[:2] for tr in tracks]
    place, steps = _imm_steps(streams, grid, grid[0].max_gap, grid[0].max_speed)
    n_rows = 1 + max((row for row, _ in place), default=-1)
    length = max((len(t) for t, _ in streams), default=0)
    truth = np.full((length, n_rows, h.size, 3), np.nan)
    for tr, (row, s0) in zip(tracks, place, strict=True):
        truth[s0 : s0 + len(tr.t), row] = _truth(tr, h)
    defined = ~np.isnan(truth[..., 0])
    truth = np.nan_to_num(truth)
    count = int(defined.sum())
    if count == 0:
        raise ValueError("no defined truth for any sample/horizon")
    total = np.zeros(len(grid))
    for k, state in steps:
        if not defined[k].any():
            continue
        pred = priors.imm_offsets(state, h).reshape(len(grid), n_rows, h.size, 3)
        err = np.sqrt(((pred - truth[k]) ** 2).sum(-1))
        total += np.where(defined[k], err, 0.0).sum(axis=(1, 2))
    return total / count


def _pack(lengths: Sequence[int]) -> tuple[list[tuple[int, int]], int]:
    """Lay streams end to end in rows no longer than the longest (first fit, longest
    first). Returns (row, first step) per stream and the row count."""
    cap = max(lengths, default=0)
    fill: list[int] = []
    place: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, f in enumerate(fill) if f + lengths[i] <= cap), len(fill))
        if row == len(fill):
            fill.append(0)
        place[i] = (row, fill[row])
        fill[row] += lengths[i]
    return place, len(fill)


def _imm_steps(streams, imms: Sequence[IMM], max_gap: float, max_speed: float):
    """Run `server.core.priors.imm_step` for every filter of `imms` (a block of rows each) over
    `streams` ((t, p) pairs, laid out by `_pack`; a stream's first sample resets its row).
    Returns (placement, iterator of (k, state (IMM_WIDTH, len(imms) * rows)))."""
    place, n_rows = _pack([len(t) for t, _ in streams])
    length = max((len(t) for t, _ in streams), default=0)
    z = np.zeros((length, 3, n_rows))
    dt = np.zeros((length, n_rows))
    reset = np.ones((length, n_rows), dtype=bool)  # idle steps just restart
    for (t, p), (row, s0) in zip(streams, place, strict=True):
        z[s0 : s0 + len(t), :, row] = p
        dt[s0 + 1 : s0 + len(t), row] = np.diff(t)
        reset[s0 : s0 + len(t), row] = _resets(t, p, max_gap, max_speed)
    g = len(imms)
    kw = {k: np.repeat([float(getattr(m, k)) for m in imms], n_rows) for k in IMM.STEP_PARAMS}

    def run():
        state = np.zeros((priors.IMM_WIDTH, g * n_rows))
        new = np.empty_like(state)
        for k in range(length):
            zk = np.tile(z[k], (1, g))
            priors.imm_step(state, new, zk, np.tile(dt[k], g), np.tile(reset[k], g), **kw)
            state, new = new, state
            yield k, state

    return place, run()


def _imm_motion(model: int, x: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Model `model` (0 CV, 1 CT) moving the mean `x` [x, y, vx, vy, w] by `h` s: the new
    mean and the Jacobian (5, 5). CV keeps the velocity (and w); CT turns the velocity by
    w h along the arc (series near w h = 0, `server.core.priors.turn_terms`)."""
    px, py, vx, vy, w = x
    F = np.eye(5)
    if model == 0:
        F[0, 2] = F[1, 3] = h
        return np.array([px + h * vx, py + h * vy, vx, vy, w]), F
    a = w * h
    s, c, ds, dc = (float(v) for v in priors.turn_terms(np.array(a)))
    co, si = math.cos(a), math.sin(a)
    out = np.array(
        [
            px + h * (s * vx - c * vy),
            py + h * (c * vx + s * vy),
            co * vx - si * vy,
            si * vx + co * vy,
            w,
        ]
    )
    F[0, 2:5] = [h * s, -h * c, h * h * (ds * vx - dc * vy)]
    F[1, 2:5] = [h * c, h * s, h * h * (dc * vx + ds * vy)]
    F[2, 2:5] = [co, -si, -h * (si * vx + co * vy)]
    F[3, 2:5] = [si, co, h * (co * vx - si * vy)]
    return out, F


def imm_cycle(imm: IMM, xs: np.ndarray, Ps: np.ndarray, mu: np.ndarray, z, dt: float):
    """One textbook IMM cycle for one track: mixing, mode-matched predict and update with
    the horizontal sample `z` (2,) after `dt` s, mode probabilities. `xs` (2, 5) means,
    `Ps` (2, 5, 5) covariances, `mu` (2,) mode probabilities [CV, CT]. Returns the new
    (xs, Ps, mu)."""
    p = 0.5 * (1.0 - math.exp(-2.0 * imm.switch_rate * dt))
    Pi = np.array([[1.0 - p, p], [p, 1.0 - p]])  # Pi[i, j] = P(mode j now | mode i before)
    c = Pi.T @ mu
    W = Pi * mu[:, None] / c[None, :]  # W[i, j] = mu_{i|j}
    H = np.eye(2, 5)
    R = imm.r**2 * np.eye(2)
    block = np.array([[dt**3 / 3.0, dt**2 / 2.0], [dt**2 / 2.0, dt]])
    new_x, new_P, loglik = [], [], []
    for j in (0, 1):
        x0 = sum(W[i, j] * xs[i] for i in (0, 1))
        P0 = sum(W[i, j] * (Ps[i] + np.outer(xs[i] - x0, xs[i] - x0)) for i in (0, 1))
        xp, F = _imm_motion(j, x0, dt)
        Q = np.zeros((5, 5))
        q = imm.q_cv if j == 0 else imm.q_ct
        Q[np.ix_([0, 2], [0, 2])] = Q[np.ix_([1, 3], [1, 3])] = q * block
        Q[4, 4] = 0.0 if j == 0 else imm.q_w * dt
        Pp = F @ P0 @ F.T + Q
        S = H @ Pp @ H.T + R
        K = Pp @ H.T @ np.linalg.inv(S)
        nu = np.asarray(z, dtype=np.float64) - H @ xp
        P = (np.eye(5) - K @ H) @ Pp
        new_x.append(xp + K @ nu)
        new_P.append(0.5 * (P + P.T))
        loglik.append(
            -0.5 * (nu @ np.linalg.solve(S, nu) + math.log(np.linalg.det(S)))
            - math.log(2 * math.pi)
        )
    lw = np.log(c) + np.array(loglik)
    mu = np.exp(lw - lw.max())
    mu = np.maximum(mu / mu.sum(), priors.IMM_MU_MIN)
    return np.stack(new_x), np.stack(new_P), mu / mu.sum()


def _truth(track: Track, h: np.ndarray) -> np.ndarray:
    t = np.asarray(track.t, dtype=np.float64)
    return track.truth_at((t[:, None] + h[None, :]).ravel()).reshape(t.size, h.size, 3)


def horizon_errors(track: Track, paths: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """3D distance (N, H) between ``paths[k, i]`` and ``truth_at(t[k] + horizons[i])``.

    `paths` must be (N, H, 3) for the track's N samples; NaN where the truth is undefined
    or out of physical reach (farther than MAX_SPEED * h + 0.5 m: a teleport ahead).
    Raises ValueError on a shape mismatch.
    """
    h = np.asarray(horizons, dtype=np.float64)
    paths = np.asarray(paths, dtype=np.float64)
    if paths.shape != (len(track.t), h.size, 3):
        raise ValueError(f"paths shape {paths.shape} != {(len(track.t), h.size, 3)}")
    truth = _truth(track, h)
    err = np.linalg.norm(paths - truth, axis=-1)
    # A future out of physical reach (a teleport ahead) is unpredictable for every
    # predictor alike: it is left out (NaN), as in training.
    err[out_of_reach(truth, track.p[:, None, :], h)] = np.nan
    return err


BASELINES: dict[str, PathPredictor] = {"hold": hold, "cv": cv_last, "cv_window": cv_window}
