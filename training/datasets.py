"""Trajectory data: the `Track` type, loaders for the seed CSV and ETH/UCY, splits, windows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import CubicSpline


@dataclass
class Track:
    """One avatar's observed samples plus, optionally, its dense ground truth.

    `t` (N,) float64 seconds, strictly increasing; `p` (N, 3) float64 metres (z up).
    `truth_t`/`truth_p` (M,) / (M, 3): dense true motion (the simulator's); when absent,
    the truth between samples is the cubic spline through the samples.
    """

    user: str
    t: np.ndarray
    p: np.ndarray
    truth_t: np.ndarray | None = None
    truth_p: np.ndarray | None = None
    _spline: CubicSpline | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.t)

    @property
    def start(self) -> float:
        return float(self.truth_t[0] if self.truth_t is not None else self.t[0])

    @property
    def end(self) -> float:
        return float(self.truth_t[-1] if self.truth_t is not None else self.t[-1])

    def truth_at(self, times: np.ndarray) -> np.ndarray:
        """True positions (M, 3) at `times` (M,); NaN rows outside [start, end]."""
        times = np.asarray(times, dtype=np.float64)
        out = np.full((times.size, 3), np.nan)
        inside = (times >= self.start - 1e-9) & (times <= self.end + 1e-9)
        if not inside.any():
            return out
        ti = times[inside]
        if self.truth_t is not None:
            for k in range(3):
                out[inside, k] = np.interp(ti, self.truth_t, self.truth_p[:, k])
        elif len(self.t) == 1:
            out[inside] = self.p[0]
        else:
            if self._spline is None:
                self._spline = CubicSpline(self.t, self.p, axis=0)
            out[inside] = self._spline(ti)
        return out
