"""One feature pipeline for training and serving.

Samples `(t, p[3])` arrive per avatar at irregular times. `FeatureState` holds, per row
(an avatar slot in serving, a sequence in training), what the pipeline needs from the
previous sample. `step()` turns one new sample per selected row into a model input
vector and updates the rows in place; `decode()` turns the model's output back into
absolute positions at the horizons.

Everything is expressed in the avatar's *heading frame* (x along its smoothed direction
of travel, y to its left, z up), so the model is invariant to translation and rotation
by construction and mirroring the world is `y -> -y`.

**The prior.** Every row runs a causal constant-velocity Kalman filter (white-noise
acceleration `kalman_q`, measurement noise `kalman_r`; `server.core.priors`). The model
predicts a *residual* over that filter's extrapolation: a zero output is exactly the
tuned Kalman filter's path (`training.baselines.KalmanCV` with the same q and r), so the
learned model starts from the best classical dead reckoning rather than from
last-interval constant velocity.

**Neighbours.** With `neighbours = k > 0` the input also carries, per avatar, its k
nearest avatars of the same group (room) from the same tick's state
(`server.core.neighbours`); `tick_features` is the one function that serving and training
call for a tick.

**Layout.** What each input column is, the parameters (`FeatureConfig`) and the per-row
memory (`FeatureState`) live in `server.core.layout`, which the neighbour search reads too.

A time gap longer than `max_gap` or a jump faster than `max_speed` (a teleport) is a
*reset*: the row starts over as if this were its first sample, and the caller must zero
that row's hidden state (the reset flag is input feature `RESET`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from server.core import priors
from server.core.layout import (
    ACC_ALONG,
    ACC_LAT,
    DT_LIN,
    DT_LOG,
    FEATURE_CLIP,
    KDX,
    KDY,
    KSTD,
    KVX,
    KVY,
    N_FEATURES,
    PVX,
    PVY,
    RESET,
    SPEED_EMA,
    TURN_COS,
    TURN_RATE,
    TURN_SIN,
    VX,
    VY,
    VZ,
    FeatureConfig,
    FeatureState,
)
from server.core.neighbours import neighbour_features


@dataclass
class StepOutput:
    """What `step` returns for n rows; `decode` needs `p`, `prior_dp`, `prior_v`, `head`."""

    x: np.ndarray  # (n, n_features) float32 model input
    reset: np.ndarray  # (n,) bool: the caller must zero these rows' hidden states
    p: np.ndarray  # (n, 3) anchor position (the sample)
    v: np.ndarray  # (n, 3) last-interval velocity (constant-velocity dead reckoning)
    head: np.ndarray  # (n, 2) cos, sin of the heading frame
    prior_dp: np.ndarray  # (n, 3) the prior's position minus the anchor
    prior_v: np.ndarray  # (n, 3) the prior's velocity

    def rows(self, k: np.ndarray | slice) -> StepOutput:
        """The same output restricted to rows `k`."""
        return StepOutput(
            self.x[k],
            self.reset[k],
            self.p[k],
            self.v[k],
            self.head[k],
            self.prior_dp[k],
            self.prior_v[k],
        )


def _rotate_in(vx, vy, c, s):
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
    """Consume one sample for each of `rows` and return the per-avatar model input.

    The caller must pass unique `rows` (int array, shape (n,)), times `t` (n,) and
    finite positions `p` (n, 3); a time not after the row's last one is treated as an
    interval of `cfg.min_dt`. Updates `state` in place. `x` holds the N_FEATURES
    per-avatar features only (`tick_features` appends the neighbours). Raises nothing
    for finite input.
    """
    t = np.asarray(t, dtype=np.float64)
    pT = np.asarray(p, dtype=np.float64).T  # (3, n)
    n = len(rows)
    old = state.data[:, rows]  # (20, n): one gather, field-major
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

    # The prior: one Kalman predict + update per row (a reset re-initialises it).
    priors.kalman_step(
        old[11:20], new[11:20], pT, dt, reset, cfg.kalman_q, cfg.kalman_r, cfg.kalman_init_vel_std
    )
    kx, kv = new[11:14], new[14:17]

    x = np.empty((N_FEATURES, n), dtype=np.float64)
    x[VX], x[VY] = _rotate_in(v[0], v[1], c, s)
    x[VZ] = v[2]
    x[SPEED_EMA] = ema_speed
    x[PVX], x[PVY] = _rotate_in(old[4], old[5], c, s)
    x[KVX], x[KVY] = _rotate_in(kv[0], kv[1], c, s)
    x[KSTD] = np.sqrt(new[19])
    x[[VX, VY, VZ, SPEED_EMA, PVX, PVY, KVX, KVY, KSTD]] *= 1.0 / cfg.v_scale
    x[KDX], x[KDY] = _rotate_in(kx[0] - pT[0], kx[1] - pT[1], c, s)
    x[KDX : KDY + 1] *= 10.0
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
    return StepOutput(
        x=x.T.astype(np.float32),
        reset=reset,
        p=pT.T,
        v=v.T,
        head=head.T,
        prior_dp=(kx - pT).T,
        prior_v=kv.T,
    )


def tick_features(
    state: FeatureState,
    rows: np.ndarray,
    t: np.ndarray,
    p: np.ndarray,
    cfg: FeatureConfig,
    *,
    live: np.ndarray | None = None,
    group: np.ndarray | None = None,
    clock: np.ndarray | None = None,
) -> StepOutput:
    """One tick's model input for `rows`: `step`, then the neighbour blocks.

    The one function serving (`TickEngine.tick`) and training (`scene_features`) call
    per tick. `live` (len(state),) bool marks the rows that exist (joined avatars) and
    `group` (len(state),) int64 their room; both are required when `cfg.neighbours > 0`
    (ValueError otherwise). `clock` (len(state),) is each row's newest sample time on a
    clock shared by all rows (default: the rows' own sample times, `state.t`); the caller
    must have updated it for `rows`. Neighbours are read from the state *after* this
    tick's step, so every avatar sees the others' newest samples.
    """
    out = step(state, rows, t, p, cfg)
    if cfg.neighbours == 0:
        return out
    if live is None or group is None:
        raise ValueError("cfg.neighbours > 0 needs `live` and `group`")
    clock = state.t if clock is None else clock
    nb = neighbour_features(state, rows, live, group, clock, cfg)
    out.x = np.concatenate([out.x, nb], axis=1)
    return out


def decode_offsets(y, prior_dp, prior_v, head, horizons, scale):
    """Model output -> predicted offsets from the anchor, (n, H, 3).

    offset = prior_dp + prior_v * h + (y * scale) rotated from the heading frame to the
    world. Works on numpy arrays or torch tensors alike (the one decode of the project):
    `y` (n, H, 3) normalised residual, `prior_dp`/`prior_v` (n, 3), `head` (n, 2),
    `horizons` (H,) and `scale` (H,) of the same kind and dtype.
    """
    r = y * scale[None, :, None]
    c, s = head[:, 0:1], head[:, 1:2]
    dp, v = prior_dp[:, None, :], prior_v[:, None, :]
    h = horizons[None, :]
    return _stack(
        [
            c * r[..., 0] - s * r[..., 1] + dp[..., 0] + v[..., 0] * h,
            s * r[..., 0] + c * r[..., 1] + dp[..., 1] + v[..., 1] * h,
            r[..., 2] + dp[..., 2] + v[..., 2] * h,
        ],
        y,
    )


def _stack(parts, like):
    if isinstance(like, np.ndarray):
        return np.stack(parts, axis=-1)
    import torch

    return torch.stack(parts, dim=-1)


def decode(y: np.ndarray, out: StepOutput, cfg: FeatureConfig) -> np.ndarray:
    """Model output -> absolute positions (n, H, 3) float64 at `t + horizons`.

    `y` (n, H, 3) is the model's normalised residual in the heading frame for the rows
    of `out`; a zero `y` is the Kalman prior's path.
    """
    off = decode_offsets(
        np.asarray(y, dtype=np.float64),
        out.prior_dp,
        out.prior_v,
        out.head,
        np.asarray(cfg.horizons),
        cfg.scales(),
    )
    return out.p[:, None, :] + off


def encode_targets(truth: np.ndarray, out: StepOutput, cfg: FeatureConfig) -> np.ndarray:
    """Inverse of `decode`: true future positions (n, H, 3) -> normalised residual (n, H, 3).

    NaN in `truth` (future unknown) stays NaN: the caller masks it out of the loss.
    """
    h = np.asarray(cfg.horizons)
    d = truth - (out.p + out.prior_dp)[:, None, :] - out.prior_v[:, None, :] * h[None, :, None]
    c, s = out.head[:, 0:1], out.head[:, 1:2]
    res = np.empty_like(d)
    res[..., 0], res[..., 1] = _rotate_in(d[..., 0], d[..., 1], c, s)
    res[..., 2] = d[..., 2]
    return res / cfg.scales()[None, :, None]


@dataclass
class SequenceFeatures:
    """Features of whole sequences, time-major per sequence, as lists of arrays."""

    x: list[np.ndarray]  # each (T_i, n_features) float32
    out: list[StepOutput]  # each with arrays of length T_i
    tick: list[np.ndarray]  # each (T_i,) int64: the step (tick) that served each sample


def _collect(m: int, lengths: np.ndarray, nf: int):
    tmax = int(lengths.max()) if m else 0
    return {
        "x": np.zeros((m, tmax, nf), dtype=np.float32),
        "reset": np.zeros((m, tmax), dtype=bool),
        "p": np.zeros((m, tmax, 3)),
        "v": np.zeros((m, tmax, 3)),
        "head": np.zeros((m, tmax, 2)),
        "prior_dp": np.zeros((m, tmax, 3)),
        "prior_v": np.zeros((m, tmax, 3)),
    }


def _split(acc: dict, lengths: np.ndarray, tick: list[np.ndarray]) -> SequenceFeatures:
    outs = [
        StepOutput(**{k: a[i, : lengths[i]] for k, a in acc.items()}) for i in range(len(lengths))
    ]
    return SequenceFeatures(x=[o.x for o in outs], out=outs, tick=tick)


def sequence_features(
    times: list[np.ndarray], positions: list[np.ndarray], cfg: FeatureConfig
) -> SequenceFeatures:
    """Run `step` over whole sequences, batched across sequences, exactly as serving does.

    Each sequence is alone (no neighbours: with `cfg.neighbours > 0` the neighbour blocks
    are absent, as for an avatar alone in its room). `times[i]` (T_i,) strictly
    increasing, `positions[i]` (T_i, 3) finite. Returns the per-step model inputs and
    decode state of every sequence.
    """
    m = len(times)
    lengths = np.array([len(t) for t in times], dtype=np.int64)
    tmax = int(lengths.max()) if m else 0
    state = FeatureState(m)
    T = np.zeros((m, tmax))
    P = np.zeros((m, tmax, 3))
    for i in range(m):
        T[i, : lengths[i]] = times[i]
        P[i, : lengths[i]] = positions[i]
    acc = _collect(m, lengths, cfg.n_features)
    order = np.argsort(-lengths, kind="stable")
    for k in range(tmax):
        rows = order[: int((lengths > k).sum())]
        o = step(state, rows, T[rows, k], P[rows, k], cfg)
        for name, a in acc.items():
            if name == "x":
                a[rows, k, :N_FEATURES] = o.x
            else:
                a[rows, k] = getattr(o, name)
    return _split(acc, lengths, [np.arange(n, dtype=np.int64) for n in lengths])


def scene_features(
    times: list[np.ndarray],
    positions: list[np.ndarray],
    cfg: FeatureConfig,
    *,
    group: np.ndarray | None = None,
    tick: float = 0.05,
) -> SequenceFeatures:
    """Replay sequences that share a clock through `tick_features`, as the engine serves them.

    Sequence i exists (is joined) from its first sample to its last; time is cut into
    ticks of `tick` seconds, and each tick steps every sequence with a sample in it (a
    sequence with two samples in one tick sees both, one tick after the other, which is
    what a server sees when it ticks at the sample rate). `group` (m,) puts sequences in
    rooms (default: all in one). Same inputs as `sequence_features`; with
    `cfg.neighbours == 0` the result equals it.
    """
    m = len(times)
    lengths = np.array([len(t) for t in times], dtype=np.int64)
    group = np.zeros(m, dtype=np.int64) if group is None else np.asarray(group, np.int64)
    acc = _collect(m, lengths, cfg.n_features)
    if m == 0:
        return _split(acc, lengths, [])
    seq = np.concatenate([np.full(n, i, dtype=np.int64) for i, n in enumerate(lengths)])
    idx = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
    tt = np.concatenate([np.asarray(t, np.float64) for t in times])
    pp = np.concatenate([np.asarray(p, np.float64).reshape(-1, 3) for p in positions])
    t0 = float(tt.min())
    # A sequence's k-th sample goes to the first tick at or after its time that is later
    # than its (k-1)-th sample's tick.
    slot = np.floor((tt - t0) / tick + 1e-9).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    clash = np.flatnonzero((np.diff(slot) <= 0) & (seq[1:] == seq[:-1]))
    for i in np.unique(seq[clash]):
        a, b = starts[i], starts[i + 1]
        k = np.arange(b - a)
        slot[a:b] = np.maximum.accumulate(slot[a:b] - k) + k
    order = np.lexsort((seq, slot))
    bounds = np.flatnonzero(np.diff(slot[order])) + 1
    first = np.full(m, np.iinfo(np.int64).max)
    last = np.zeros(m, dtype=np.int64)
    np.minimum.at(first, seq, slot)
    np.maximum.at(last, seq, slot)
    state = FeatureState(m)
    for chunk in np.split(order, bounds):
        k = slot[chunk[0]]
        live = (first <= k) & (last >= k)
        rows = seq[chunk]
        o = tick_features(state, rows, tt[chunk], pp[chunk], cfg, live=live, group=group)
        j = idx[chunk]
        for name, a in acc.items():
            a[rows, j] = getattr(o, name)
    return _split(acc, lengths, [slot[a:b] for a, b in itertools.pairwise(starts)])
