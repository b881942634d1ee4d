"""The IMM path predictor: an Interacting Multiple Model filter (constant velocity +
coordinated turn), its many-track vectorised run, its grid tuning and its textbook oracle.

It runs `server.core.priors.imm_step` (the served filter) over rows of tracks; `imm_cycle`
is the plain per-sample matrix form that `IMM.reference` uses as the test oracle. The reset
rule, input checks and the error metric are those of `training.baselines`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.core import priors
from training.baselines import (
    MAX_GAP,
    MAX_SPEED,
    Q_GRID,
    R_GRID,
    KalmanCV,
    check_stream,
    reset_flags,
    truth_paths,
)
from training.datasets import Track

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
    pays numpy's overhead of a one-row step per sample; `paths_many` runs many tracks at
    once (docs/performance.md has the figures).
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
        t, p, _ = check_stream(t, p, np.zeros(0))
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
        _, _, h = check_stream(t, p, horizons)
        return priors.imm_offsets(self.states(t, p).T, h)

    def paths_many(self, streams: Sequence[tuple[np.ndarray, np.ndarray]], horizons):
        """`self(t, p, horizons)` for every (t, p) of `streams` in one vectorised pass (the
        streams laid end to end in rows). Returns a list of (N_i, H, 3)."""
        streams = [check_stream(t, p, horizons)[:2] for t, p in streams]
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
        t, p, h = check_stream(t, p, horizons)
        n = t.size
        paths = np.empty((n, h.size, 3))
        modes = np.empty((n, 2))
        if n == 0:
            return paths, modes
        reset = reset_flags(t, p, self.max_gap, self.max_speed)
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
    streams = [check_stream(tr.t, tr.p, h)[:2] for tr in tracks]
    place, steps = _imm_steps(streams, grid, grid[0].max_gap, grid[0].max_speed)
    n_rows = 1 + max((row for row, _ in place), default=-1)
    length = max((len(t) for t, _ in streams), default=0)
    truth = np.full((length, n_rows, h.size, 3), np.nan)
    for tr, (row, s0) in zip(tracks, place, strict=True):
        truth[s0 : s0 + len(tr.t), row] = truth_paths(tr, h)
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
        reset[s0 : s0 + len(t), row] = reset_flags(t, p, max_gap, max_speed)
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
