"""The feature layout: what each column of the model input is, and what a row remembers.

Shared by the feature pipeline (`server.core.features`), the neighbour search
(`server.core.neighbours`) and the model (`server.core.model`), so that none of them
imports another for it:

- the per-avatar input columns (`VX` ... `KSTD`, `N_FEATURES` of them) and the
  per-neighbour block that follows them k times (`NB_DX` ... `NB_ON`, `NB_WIDTH` wide);
  `FEATURE_CLIP` bounds every input;
- `FeatureConfig`, the pipeline's parameters (stored in every checkpoint);
- `FeatureState`, the per-row memory the pipeline steps (one field-major float64 array).

Pure numpy: no torch, no asyncio, no sockets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

DEFAULT_HORIZONS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 11))

# Input feature layout (all in the heading frame; velocities divided by v_scale).
VX, VY, VZ = 0, 1, 2  # velocity over the last interval
SPEED_EMA = 3  # smoothed speed (|EMA velocity|)
PVX, PVY = 4, 5  # previous interval's velocity, rotated into the current frame
DT_LIN, DT_LOG = 6, 7  # time since the previous sample: dt / 0.4 s and log(dt / 0.1 s) / 2
TURN_SIN, TURN_COS = 8, 9  # rotation of the frame since the previous sample (cos - 1)
RESET = 10  # 1.0 on the first sample of a segment (join, gap, teleport)
TURN_RATE = 11  # turn rate of the frame, rad/s / pi
ACC_ALONG, ACC_LAT = 12, 13  # acceleration of the smoothed velocity in the frame, / 4 m/s^2
KVX, KVY = 14, 15  # Kalman velocity (the prior's), / v_scale
KDX, KDY = 16, 17  # Kalman position minus the sample (the filter's noise estimate), / 0.1 m
KSTD = 18  # the filter's velocity std, / v_scale (how settled the prior is)
N_FEATURES = 19  # per-avatar features; neighbour features follow (see `n_features`)
MIRROR_FLIP = (VY, PVY, TURN_SIN, TURN_RATE, ACC_LAT, KVY, KDY)  # sign flips when y -> -y
FEATURE_CLIP = 10.0

# Per-neighbour block (after the N_FEATURES per-avatar features), nearest first:
NB_DX, NB_DY = 0, 1  # its position relative to the avatar, heading frame, / nb_pos_scale
NB_VX, NB_VY = 2, 3  # its velocity minus the avatar's, heading frame, / v_scale
NB_ON = 4  # 1.0 if this neighbour exists
NB_WIDTH = 5
NB_MIRROR = (NB_DY, NB_VY)


@dataclass(frozen=True)
class FeatureConfig:
    """Parameters of the feature pipeline; stored in every checkpoint."""

    horizons: tuple[float, ...] = DEFAULT_HORIZONS  # seconds after the sample's time
    max_speed: float = 20.0  # m/s; a faster jump is a teleport -> reset
    max_gap: float = 1.0  # s; a longer silence -> reset
    min_dt: float = 1e-3  # s; intervals are clamped to at least this
    heading_tau: float = 0.2  # s; time constant of the velocity EMA that sets the frame
    heading_min_speed: float = 0.1  # m/s; below this the frame keeps its last heading
    v_scale: float = 2.0  # m/s; input velocity normalisation
    out_scale: tuple[float, ...] = field(default_factory=tuple)  # m per horizon; () = 1.0
    kalman_q: float = 1.0  # m^2/s^3, the prior's white-noise acceleration density
    kalman_r: float = 0.02  # m, the prior's measurement noise std
    kalman_init_vel_std: float = 10.0  # m/s, velocity std at a reset
    neighbours: int = 0  # k nearest avatars given to the model (0 = none)
    nb_radius: float = 8.0  # m; farther avatars are not neighbours (also the grid cell)
    nb_cell_cap: int = 8  # candidates read per grid cell (a denser cell is cut)
    nb_pos_scale: float = 4.0  # m; relative position normalisation

    def __post_init__(self) -> None:
        object.__setattr__(self, "horizons", tuple(float(h) for h in self.horizons))
        object.__setattr__(self, "out_scale", tuple(float(s) for s in self.out_scale))
        if not self.horizons or any(h <= 0 for h in self.horizons):
            raise ValueError("horizons must be positive")
        if self.out_scale and len(self.out_scale) != len(self.horizons):
            raise ValueError("out_scale needs one entry per horizon")
        if self.kalman_q <= 0 or self.kalman_r <= 0 or self.kalman_init_vel_std <= 0:
            raise ValueError("kalman_q, kalman_r and kalman_init_vel_std must be > 0")
        if self.neighbours < 0 or self.nb_radius <= 0 or self.nb_cell_cap < 1:
            raise ValueError("need neighbours >= 0, nb_radius > 0 and nb_cell_cap >= 1")

    @property
    def n_horizons(self) -> int:
        return len(self.horizons)

    @property
    def n_features(self) -> int:
        """Model input width: per-avatar features plus the neighbour blocks."""
        return N_FEATURES + NB_WIDTH * self.neighbours

    def mirror_signs(self) -> np.ndarray:
        """(n_features,) +1/-1: the input under the reflection y -> -y."""
        s = np.ones(self.n_features, dtype=np.float32)
        s[list(MIRROR_FLIP)] = -1.0
        for j in range(self.neighbours):
            s[[N_FEATURES + NB_WIDTH * j + k for k in NB_MIRROR]] = -1.0
        return s

    def scales(self) -> np.ndarray:
        """Residual scale per horizon, shape (H,)."""
        if self.out_scale:
            return np.asarray(self.out_scale, dtype=np.float64)
        return np.ones(self.n_horizons)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        return cls(**d)


class FeatureState:
    """Per-row memory of the pipeline: last sample, last velocity, heading, the prior.

    One (20, n) float64 array, field-major so that every batch operation runs on
    contiguous memory; a batch step is one gather and one scatter. `t`, `p`, `v`, `ema`,
    `head`, `kx`, `kv` and `kp` are (row-major) views. Rows are created "empty" (no
    previous sample), so the first `step` on a row is a reset.
    """

    WIDTH = 20  # t | p xyz | v xyz | ema xy | head cos sin | kalman pos xyz, vel xyz, P 00 01 11

    def __init__(self, n: int) -> None:
        self.data = np.zeros((self.WIDTH, n))
        self.clear(slice(None))

    def _views(self) -> None:
        d = self.data
        self.t = d[0]  # (n,) time of the last sample, NaN = none
        self.p = d[1:4].T  # (n, 3) last position
        self.v = d[4:7].T  # (n, 3) velocity over the last interval
        self.ema = d[7:9].T  # (n, 2) smoothed horizontal velocity
        self.head = d[9:11].T  # (n, 2) cos, sin of the frame heading
        self.kx = d[11:14].T  # (n, 3) the prior's filtered position
        self.kv = d[14:17].T  # (n, 3) the prior's filtered velocity
        self.kp = d[17:20].T  # (n, 3) the prior's covariance (pos var, cross, vel var)

    def __len__(self) -> int:
        return self.data.shape[1]

    def clear(self, rows: np.ndarray | slice | int) -> None:
        """Forget rows (an avatar left): their next sample is a reset."""
        self.data[:, rows] = 0.0
        self.data[0, rows] = np.nan
        self.data[9, rows] = 1.0
        self._views()

    def grow(self, n: int) -> None:
        """Extend to `n` rows; new rows are empty."""
        old = len(self)
        if n <= old:
            return
        self.data = np.concatenate([self.data, FeatureState(n - old).data], axis=1)
        self._views()
