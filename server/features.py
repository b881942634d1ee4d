"""One feature pipeline for training and serving.

Samples `(t, p[3])` arrive per avatar at irregular times. `FeatureState` holds, per row
(an avatar slot in serving, a sequence in training), what the pipeline needs from the
previous sample. `step()` turns one new sample per selected row into a model input
vector and updates the rows in place; `decode()` turns the model's output back into
absolute positions at the horizons.

Everything is expressed in the avatar's *heading frame* (x along its smoothed direction
of travel, y to its left, z up), so the model is invariant to translation and rotation
by construction and mirroring the world is `y -> -y`. The model predicts a *residual*
over constant-velocity extrapolation (CV prior): a zero output is exactly CV dead
reckoning from the last interval's velocity.

A time gap longer than `max_gap` or a jump faster than `max_speed` (a teleport) is a
*reset*: the row starts over as if this were its first sample, and the caller must zero
that row's hidden state (the reset flag is input feature `RESET`).
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
N_FEATURES = 14
MIRROR_FLIP = (VY, PVY, TURN_SIN, TURN_RATE, ACC_LAT)  # features that change sign when y -> -y
FEATURE_CLIP = 10.0


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "horizons", tuple(float(h) for h in self.horizons))
        object.__setattr__(self, "out_scale", tuple(float(s) for s in self.out_scale))
        if not self.horizons or any(h <= 0 for h in self.horizons):
            raise ValueError("horizons must be positive")
        if self.out_scale and len(self.out_scale) != len(self.horizons):
            raise ValueError("out_scale needs one entry per horizon")

    @property
    def n_horizons(self) -> int:
        return len(self.horizons)

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
    """Per-row memory of the pipeline: last sample, last velocity, smoothed heading.

    One (11, n) float64 array, field-major so that every batch operation runs on
    contiguous memory; a batch step is one gather and one scatter. `t`, `p`, `v`, `ema`
    and `head` are (row-major) views. Rows are created "empty" (no previous sample), so
    the first `step` on a row is a reset.
    """

    WIDTH = 11  # t | p xyz | v xyz | ema xy | head cos sin

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


@dataclass
class StepOutput:
    """What `step` returns for n rows; `decode` needs `p`, `v` and `head`."""

    x: np.ndarray  # (n, N_FEATURES) float32 model input
    reset: np.ndarray  # (n,) bool: the caller must zero these rows' hidden states
    p: np.ndarray  # (n, 3) anchor position (the sample)
    v: np.ndarray  # (n, 3) CV-prior velocity
    head: np.ndarray  # (n, 2) cos, sin of the heading frame


def _rotate_in(vx: np.ndarray, vy: np.ndarray, c: np.ndarray, s: np.ndarray):
    """World -> heading frame."""
    return c * vx + s * vy, -s * vx + c * vy


def reset_mask(dt: np.ndarray, v: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Bool (n,): the sample starts a new segment (no previous sample, gap, teleport).

    `dt` (n,) is the time since the previous sample (NaN where there is none) and `v`
    (3, n) the velocity over that interval. The one reset rule of the project: the
    classical baselines segment tracks with it too.
    """
    with np.errstate(invalid="ignore"):
        reset = np.isnan(dt) | (dt > cfg.max_gap) | (np.hypot(v[0], v[1]) > cfg.max_speed)
    return reset | (np.abs(v[2]) > cfg.max_speed)


def step(
    state: FeatureState,
    rows: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    cfg: FeatureConfig,
) -> StepOutput:
    """Consume one sample for each of `rows` and return the model input for them.

    The caller must pass unique `rows` (int array, shape (n,)), times `t` (n,) and
    finite positions `p` (n, 3); a time not after the row's last one is treated as an
    interval of `cfg.min_dt`. Updates `state` in place. Raises nothing for finite input.
    """
    t = np.asarray(t, dtype=np.float64)
    pT = np.asarray(p, dtype=np.float64).T  # (3, n)
    n = len(rows)
    old = state.data[:, rows]  # (11, n): one gather, field-major
    new = np.empty_like(old)
    new[0] = t
    new[1:4] = pT
    dt_raw = t - old[0]  # NaN for rows without a previous sample
    dt = np.maximum(np.nan_to_num(dt_raw, nan=cfg.min_dt), cfg.min_dt)
    v = new[4:7]  # (3, n) velocity over the last interval
    np.subtract(pT, old[1:4], out=v)
    v /= dt
    reset = reset_mask(dt_raw, v, cfg)
    v[:, reset] = 0.0
    dt_feat = np.where(reset, 0.0, np.minimum(dt, cfg.max_gap))

    # Smoothed velocity sets the frame; below heading_min_speed the heading is held.
    keep = np.exp(-dt / cfg.heading_tau)
    ema = new[7:9]
    np.multiply(old[7:9], keep, out=ema)
    ema += (1.0 - keep) * v[:2]
    ema[:, reset] = 0.0
    ema_speed = np.hypot(ema[0], ema[1])
    moving = ema_speed > cfg.heading_min_speed
    head = new[9:11]
    np.divide(ema, np.where(moving, ema_speed, 1.0), out=head)
    head[:, ~moving] = old[9:11, ~moving]
    c, s = head[0], head[1]

    x = np.empty((N_FEATURES, n), dtype=np.float64)
    x[VX], x[VY] = _rotate_in(v[0], v[1], c, s)
    x[VZ] = v[2]
    x[SPEED_EMA] = ema_speed
    x[PVX], x[PVY] = _rotate_in(old[4], old[5], c, s)
    x[:6] *= 1.0 / cfg.v_scale
    x[PVX : PVY + 1, reset] = 0.0
    x[DT_LIN] = dt_feat / 0.4
    x[DT_LOG] = np.log(np.maximum(dt_feat, cfg.min_dt) / 0.1) / 2.0
    # Frame rotation since the last sample: old heading expressed in the new frame.
    turn_c, turn_s = _rotate_in(old[9], old[10], c, s)
    x[TURN_SIN] = -turn_s
    x[TURN_COS] = turn_c - 1.0
    x[TURN_RATE] = np.arctan2(-turn_s, turn_c) / (dt * np.pi)
    # Change of the smoothed velocity, both expressed in the new frame.
    new_ema_x, new_ema_y = _rotate_in(ema[0], ema[1], c, s)
    old_ema_x, old_ema_y = _rotate_in(old[7], old[8], c, s)
    x[ACC_ALONG] = (new_ema_x - old_ema_x) / (4.0 * dt)
    x[ACC_LAT] = (new_ema_y - old_ema_y) / (4.0 * dt)
    x[DT_LOG : TURN_COS + 1, reset] = 0.0
    x[TURN_RATE : ACC_LAT + 1, reset] = 0.0
    x[RESET] = reset
    np.clip(x, -FEATURE_CLIP, FEATURE_CLIP, out=x)

    state.data[:, rows] = new  # one scatter
    return StepOutput(x=x.T.astype(np.float32), reset=reset, p=pT.T, v=v.T, head=head.T)


def decode_offsets(y: np.ndarray, out: StepOutput, cfg: FeatureConfig) -> np.ndarray:
    """Model output -> predicted offsets from the anchor `out.p`, (n, H, 3) float32.

    `y` (n, H, 3) is the model's normalised residual in the heading frame for the rows
    of `out`: offset = CV prior (v * h) + residual rotated to the world frame.
    """
    h = np.asarray(cfg.horizons, dtype=np.float32)  # (H,)
    r = np.asarray(y, dtype=np.float32) * cfg.scales().astype(np.float32)[None, :, None]
    c = out.head[:, 0:1].astype(np.float32)  # (n, 1)
    s = out.head[:, 1:2].astype(np.float32)
    v = out.v.astype(np.float32)
    off = np.empty_like(r)
    off[..., 0] = c * r[..., 0] - s * r[..., 1] + v[:, 0:1] * h
    off[..., 1] = s * r[..., 0] + c * r[..., 1] + v[:, 1:2] * h
    off[..., 2] = r[..., 2] + v[:, 2:3] * h
    return off


def decode(y: np.ndarray, out: StepOutput, cfg: FeatureConfig) -> np.ndarray:
    """Model output -> absolute positions (n, H, 3) float64 at `t + horizons`.

    `y` (n, H, 3) is the model's normalised residual in the heading frame for the rows
    of `out`.
    """
    return out.p[:, None, :] + decode_offsets(y, out, cfg)


def encode_targets(truth: np.ndarray, out: StepOutput, cfg: FeatureConfig) -> np.ndarray:
    """Inverse of `decode`: true future positions (n, H, 3) -> normalised residual (n, H, 3).

    NaN in `truth` (future unknown) stays NaN: the caller masks it out of the loss.
    """
    h = np.asarray(cfg.horizons)
    d = truth - out.p[:, None, :] - out.v[:, None, :] * h[None, :, None]
    c, s = out.head[:, 0:1], out.head[:, 1:2]
    res = np.empty_like(d)
    res[..., 0], res[..., 1] = _rotate_in(d[..., 0], d[..., 1], c, s)
    res[..., 2] = d[..., 2]
    return res / cfg.scales()[None, :, None]


@dataclass
class SequenceFeatures:
    """Features of whole sequences, time-major per sequence, as lists of arrays."""

    x: list[np.ndarray]  # each (T_i, N_FEATURES) float32
    out: list[StepOutput]  # each with arrays of length T_i


def sequence_features(
    times: list[np.ndarray], positions: list[np.ndarray], cfg: FeatureConfig
) -> SequenceFeatures:
    """Run `step` over whole sequences, batched across sequences, exactly as serving does.

    `times[i]` (T_i,) strictly increasing, `positions[i]` (T_i, 3) finite. Returns the
    per-step model inputs and decode state of every sequence.
    """
    m = len(times)
    lengths = np.array([len(t) for t in times])
    tmax = int(lengths.max()) if m else 0
    state = FeatureState(m)
    T = np.zeros((m, tmax))
    P = np.zeros((m, tmax, 3))
    for i in range(m):
        T[i, : lengths[i]] = times[i]
        P[i, : lengths[i]] = positions[i]
    xs = np.zeros((m, tmax, N_FEATURES), dtype=np.float32)
    reset = np.zeros((m, tmax), dtype=bool)
    anchor = np.zeros((m, tmax, 3))
    vel = np.zeros((m, tmax, 3))
    head = np.zeros((m, tmax, 2))
    order = np.argsort(-lengths, kind="stable")
    for k in range(tmax):
        rows = order[: int((lengths > k).sum())]
        o = step(state, rows, T[rows, k], P[rows, k], cfg)
        xs[rows, k], reset[rows, k] = o.x, o.reset
        anchor[rows, k], vel[rows, k], head[rows, k] = o.p, o.v, o.head
    outs = []
    for i in range(m):
        n = lengths[i]
        outs.append(StepOutput(xs[i, :n], reset[i, :n], anchor[i, :n], vel[i, :n], head[i, :n]))
    return SequenceFeatures(x=[o.x for o in outs], out=outs)
