"""Non-learned path predictors (hold, constant velocity, Kalman) and their error metric.

A *path predictor* is any callable ``predict(t, p, horizons) -> paths`` with `t` (N,) seconds
(strictly increasing), `p` (N, 3) metres and `horizons` (H,) seconds; ``paths[k, i]`` is the
predicted ABSOLUTE position at ``t[k] + horizons[i]`` using only samples ``0..k`` (causal).
A time gap ``> max_gap`` or a jump faster than ``max_speed`` starts a new segment (reset): the
first sample of a segment has zero velocity, so its path holds position. The IMM (constant
velocity + coordinated turn) is in `training.imm`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from server.core.features import FeatureConfig, reset_mask
from training.datasets import Track

MAX_GAP = FeatureConfig.max_gap  # the served reset rule (server.features)
MAX_SPEED = FeatureConfig.max_speed

Q_GRID = tuple(np.logspace(-2, 2, 6).tolist())  # m²/s³
R_GRID = tuple(np.logspace(-3, math.log10(0.3), 6).tolist())  # m

PathPredictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def check_stream(
    t: np.ndarray, p: np.ndarray, horizons: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t, p, horizons) as float64 arrays. Raises ValueError unless `t` is (N,) strictly
    increasing, `p` (N, 3) and `horizons` 1-D."""
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


def reset_flags(t: np.ndarray, p: np.ndarray, max_gap: float, max_speed: float) -> np.ndarray:
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
    t, p, _ = check_stream(t, p, np.zeros(0))
    if t.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.cumsum(reset_flags(t, p, max_gap, max_speed)) - 1


def _along(p: np.ndarray, v: np.ndarray, h: np.ndarray) -> np.ndarray:
    return p[:, None, :] + v[:, None, :] * h[None, :, None]


def hold(t: np.ndarray, p: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """Hold the latest position: ``paths[k, i] = p[k]``. Returns (N, H, 3)."""
    t, p, h = check_stream(t, p, horizons)
    return np.repeat(p[:, None, :], h.size, axis=1)


def cv_last(
    t: np.ndarray,
    p: np.ndarray,
    horizons: np.ndarray,
    max_gap: float = MAX_GAP,
    max_speed: float = MAX_SPEED,
) -> np.ndarray:
    """Constant velocity from the last interval (zero at a segment start). Returns (N, H, 3)."""
    t, p, h = check_stream(t, p, horizons)
    v = np.zeros_like(p)
    if t.size > 1:
        v[1:] = np.diff(p, axis=0) / np.diff(t)[:, None]
        v[reset_flags(t, p, max_gap, max_speed)] = 0.0
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
    t, p, h = check_stream(t, p, horizons)
    n = t.size
    k = np.arange(n)
    start = _segment_starts(reset_flags(t, p, max_gap, max_speed))
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
        t, p, _ = check_stream(t, p, np.zeros(0))
        n = t.size
        pos = np.empty((n, 3))
        vel = np.empty((n, 3))
        if n == 0:
            return pos, vel
        reset = reset_flags(t, p, self.max_gap, self.max_speed).tolist()
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
        _, _, h = check_stream(t, p, horizons)
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
        truths = [truth_paths(tr, h) for tr in tracks]
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


def truth_paths(track: Track, h: np.ndarray) -> np.ndarray:
    """True positions (N, H, 3) at ``t[k] + h[i]`` for the track's N samples (NaN outside
    its span)."""
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
    truth = truth_paths(track, h)
    err = np.linalg.norm(paths - truth, axis=-1)
    # A future out of physical reach (a teleport ahead) is unpredictable for every
    # predictor alike: it is left out (NaN), as in training.
    err[out_of_reach(truth, track.p[:, None, :], h)] = np.nan
    return err


BASELINES: dict[str, PathPredictor] = {"hold": hold, "cv": cv_last, "cv_window": cv_window}
