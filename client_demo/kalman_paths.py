"""The classical Kalman baseline run online: paths a `DeadReckoner` draws as it draws the GRU's.

A constant-velocity Kalman filter per remote avatar over the samples a plain relay
delivers (`KalmanPaths`); the demo compares it with the server's GRU paths. Pure: numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np

from client_demo.paths import check_horizons, check_nonneg
from server.core.features import FeatureConfig, reset_mask
from server.core.priors import kalman_step


class KalmanPaths:
    """A constant-velocity Kalman filter per key over received samples, batched per frame.

    The offline baseline `training.baselines.KalmanCV` run online, one sample at a time:
    the same filter (`server.core.priors.kalman_step`) and the same reset rule
    (`server.core.features.reset_mask`: a gap over ``max_gap`` or a jump faster than
    ``max_speed`` starts over at the sample with zero velocity). After each new sample
    the predicted path is ``pos + vel * h`` from the filtered state, returned as offsets
    from the sample (what `DeadReckoner` in mode ``"gru"`` draws). Numpy only.
    """

    def __init__(
        self,
        horizons: Sequence[float],
        q: float,
        r: float,
        *,
        init_vel_std: float = 10.0,
        max_gap: float = FeatureConfig.max_gap,
        max_speed: float = FeatureConfig.max_speed,
        same_anchor: float = 0.002,
    ) -> None:
        """q: white-noise acceleration density (m^2/s^3), r: measurement noise std (m),
        init_vel_std: velocity std at a reset (m/s), all > 0; same_anchor: as in
        `DeadReckoner` (a sample no newer than this is a repeat). ValueError otherwise."""
        self.horizons = check_horizons(horizons)
        for name, v in (("q", q), ("r", r), ("init_vel_std", init_vel_std)):
            if not (math.isfinite(float(v)) and float(v) > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        self.q, self.r, self.init_vel_std = float(q), float(r), float(init_vel_std)
        self.same_anchor = check_nonneg("same_anchor", same_anchor)
        self._rule = FeatureConfig(max_gap=float(max_gap), max_speed=float(max_speed))
        self._tracks: dict[Hashable, tuple[float, np.ndarray, np.ndarray]] = {}  # t, p, (9,)

    def update(
        self, keys: Sequence[Hashable], t: object, p: object
    ) -> tuple[list[int], np.ndarray]:
        """Samples for ``keys`` (unique) at server times ``t`` (n,), positions ``p`` (n, 3).

        Returns (rows, offsets): the indices into ``keys`` whose sample was new (a repeat
        or an older one is skipped, as `DeadReckoner.update` skips it) and their paths'
        offsets (len(rows), H, 3) from the sample, metres. ValueError for bad shapes or
        non-finite values.
        """
        t = np.asarray(t, dtype=np.float64).reshape(-1)
        p = np.asarray(p, dtype=np.float64)
        if len(keys) != len(t) or p.shape != (len(t), 3):
            raise ValueError("need n keys, t (n,) and p (n, 3)")
        if not (np.isfinite(t).all() and np.isfinite(p).all()):
            raise ValueError("t and p must be finite")
        rows, prev = [], []
        for i, key in enumerate(keys):
            st = self._tracks.get(key)
            if st is None or t[i] > st[0] + self.same_anchor:
                rows.append(i)
                prev.append(st)
        m = len(rows)
        h = self.horizons
        if m == 0:
            return rows, np.zeros((0, len(h), 3))
        old = np.zeros((9, m))
        last_t = np.full(m, np.nan)
        last_p = np.zeros((m, 3))
        for j, st in enumerate(prev):
            if st is not None:
                last_t[j], last_p[j], old[:, j] = st
        tj, pj = t[rows], p[rows]
        dt = tj - last_t
        with np.errstate(invalid="ignore", divide="ignore"):
            v = ((pj - last_p) / dt[:, None]).T
        reset = reset_mask(dt, v, self._rule)
        new = np.empty((9, m))
        kalman_step(
            old, new, pj.T, np.where(reset, 1.0, dt), reset, self.q, self.r, self.init_vel_std
        )
        for j, i in enumerate(rows):
            self._tracks[keys[i]] = (float(tj[j]), pj[j].copy(), new[:, j].copy())
        path = new[0:3].T[:, None, :] + new[3:6].T[:, None, :] * h[None, :, None]
        return rows, path - pj[:, None, :]

    def remove(self, key: Hashable) -> None:
        """Forget ``key`` (no error if unknown)."""
        self._tracks.pop(key, None)

    def clear(self) -> None:
        """Forget every key."""
        self._tracks.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._tracks
