"""Client-side dead reckoning: clock mapping, rendering remote avatars, and send policies.

Pure: numpy only (no asyncio, no sockets, no torch), so the demo, the load test and the
tests share it. See ``docs/protocol.md`` ("Reconstructing predicted positions", "Clocks").

    clock = ClockMap()                      # on pong: clock.on_pong(t_send, t_recv, server_time)
    dr = DeadReckoner(welcome["horizons"])  # on each state record:
    dr.update(handle, anchor, pos, off_m, clock.to_server(t_recv))
    xyz = dr.positions_at(handles, clock.to_server(local_now))   # every rendered frame

Four render methods (``DeadReckoner.MODES``): ``"gru"`` follows the server's predicted
path, ``"cv"`` extrapolates at constant velocity from the received samples, ``"hold"``
draws the newest sample, ``"interp"`` interpolates the received samples ``interp_delay``
in the past. ``"gru"`` and ``"cv"`` blend from the displayed position to a new path over
``convergence`` seconds instead of snapping. ``"gru"`` follows any given path: fed the
paths of `KalmanPaths` (a constant-velocity Kalman filter per remote avatar, run on the
received samples), it draws the classical Kalman dead reckoning the same way.

A player decides when to send ``pos`` with a `SendPolicy`: `FixedRate`, or the DIS-style
`ThresholdPolicy` (send when the true position leaves the predicted one by a threshold,
with a heartbeat).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from server.core.features import FeatureConfig, reset_mask
from server.core.priors import kalman_step

CV_MAX_GAP = 1.0  # s: two samples further apart than this give no velocity
SEQ_MOD = 1 << 32  # pos seq wraps here (protocol: 0 … 2³²−1)
DEFAULT_HORIZONS = tuple(round(0.1 * k, 10) for k in range(1, 11))  # the server's default


def _check_horizons(horizons: Sequence[float]) -> np.ndarray:
    h = np.asarray(horizons, dtype=np.float64)
    if h.ndim != 1 or h.size == 0 or not np.isfinite(h).all() or h[0] <= 0:
        raise ValueError("horizons must be a non-empty 1-D sequence of positive finite seconds")
    if (np.diff(h) <= 0).any():
        raise ValueError("horizons must be strictly ascending")
    return h


def _check_nonneg(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return v


def _vec3(p: object, name: str = "pos") -> np.ndarray:
    """(3,) float64 copy of p; (2,) means z = 0."""
    a = np.asarray(p, dtype=np.float64)
    if a.shape == (2,):
        a = np.append(a, 0.0)
    elif a.shape != (3,):
        raise ValueError(f"{name} must have shape (3,) or (2,), got {a.shape}")
    else:
        a = a.copy()
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return a


def _offsets(offsets: object, nh: int) -> np.ndarray:
    """(nh, 3) float64 offsets; (nh, 2) means z offsets are 0 (a dims-2 frame)."""
    o = np.asarray(offsets, dtype=np.float64)
    if o.ndim != 2 or o.shape[0] != nh or o.shape[1] not in (2, 3):
        raise ValueError(f"offsets must have shape ({nh}, 3) or ({nh}, 2), got {o.shape}")
    if o.shape[1] == 2:
        o = np.concatenate([o, np.zeros((nh, 1))], axis=1)
    if not np.isfinite(o).all():
        raise ValueError("offsets must be finite")
    return o


def _seq_ge(a: int, b: int) -> bool:
    """a >= b in wrapping u32 sequence arithmetic."""
    return (a - b) % SEQ_MOD < SEQ_MOD // 2


# ---------------------------------------------------------------------------------------
# Clocks


class ClockMap:
    """Maps the server clock to the local clock.

    ``offset`` = server − local, so ``server = local + offset`` and ``local = server − offset``.
    Estimated NTP-style from ping/pong round trips (the sample with the smallest round trip
    among the last ``window`` wins); until the first pong, from ``state`` frames alone (the
    largest ``server_time − t_recv`` seen, i.e. the frame with the least one-way delay; this
    reads late by the one-way latency). All times in seconds.
    """

    def __init__(self, window: int = 16) -> None:
        """``window``: pong samples kept (>= 1); ValueError otherwise."""
        if int(window) != window or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        self._pongs: deque[tuple[float, float]] = deque(maxlen=int(window))  # (rtt, offset)
        self._best: tuple[float, float] | None = None  # min-rtt pong sample in the window
        self._frame_offset: float | None = None

    def on_pong(self, t_send_local: float, t_recv_local: float, server_time: float) -> None:
        """A pong answering a ping sent at ``t_send_local`` arrived at ``t_recv_local``.

        Raises ValueError for non-finite times or ``t_recv_local < t_send_local``.
        """
        ts, tr, s = float(t_send_local), float(t_recv_local), float(server_time)
        if not (math.isfinite(ts) and math.isfinite(tr) and math.isfinite(s)):
            raise ValueError("pong times must be finite")
        if tr < ts:
            raise ValueError("pong received before its ping was sent")
        self._pongs.append((tr - ts, s - (ts + tr) / 2))
        self._best = min(self._pongs, key=lambda x: x[0])  # first of equal rtts: the older

    def on_frame(self, server_time: float, t_recv_local: float) -> None:
        """A frame stamped ``server_time`` arrived at ``t_recv_local``; ignored once pongs exist.

        Raises ValueError for non-finite times.
        """
        s, tr = float(server_time), float(t_recv_local)
        if not (math.isfinite(s) and math.isfinite(tr)):
            raise ValueError("frame times must be finite")
        if self._best is None and (self._frame_offset is None or s - tr > self._frame_offset):
            self._frame_offset = s - tr

    @property
    def ready(self) -> bool:
        """True once any pong or frame sample exists."""
        return self._best is not None or self._frame_offset is not None

    @property
    def offset(self) -> float:
        """server − local, seconds (0.0 before any sample)."""
        if self._best is not None:
            return self._best[1]
        return 0.0 if self._frame_offset is None else self._frame_offset

    @property
    def rtt(self) -> float | None:
        """Smallest round trip among the kept pongs, seconds (None before any pong)."""
        return None if self._best is None else self._best[0]

    def to_server(self, t_local: float) -> float:
        """Local time -> server time."""
        return t_local + self.offset

    def to_local(self, t_server: float) -> float:
        """Server time -> local time."""
        return t_server - self.offset


# ---------------------------------------------------------------------------------------
# Paths


class _Path:
    """A predicted path: knots (anchor, pos), (anchor + h_k, pos + off_k)."""

    __slots__ = ("anchor", "p", "v")

    def __init__(self, anchor: float, pos: np.ndarray, off: np.ndarray, dh: np.ndarray) -> None:
        self.anchor = anchor
        self.p = np.empty((len(off) + 1, 3))
        self.p[0] = pos
        self.p[1:] = pos + off
        self.v = np.diff(self.p, axis=0) / dh[:, None]  # (H, 3) segment velocities

    def at(self, t: float, knots: list[float], extrapolate: float) -> np.ndarray:
        """Position at t; ``knots`` = [0, *horizons]. May return a view: do not mutate."""
        tau = t - self.anchor
        if tau <= 0.0:
            return self.p[0]
        if tau >= knots[-1]:  # last segment's velocity for at most `extrapolate`, then hold
            return self.p[-1] + self.v[-1] * min(tau - knots[-1], extrapolate)
        k = bisect_right(knots, tau) - 1
        return self.p[k] + self.v[k] * (tau - knots[k])


def _smoothstep(u: float) -> float:
    if u <= 0.0:
        return 0.0
    if u >= 1.0:
        return 1.0
    return u * u * (3.0 - 2.0 * u)


class _Track:
    """Everything kept for one remote avatar."""

    __slots__ = (
        "anchor",
        "blend_d",
        "blend_t0",
        "cv_v",
        "path",
        "pos",
        "sample_delay",
        "sample_p",
        "sample_t",
    )

    def __init__(self, history: int) -> None:
        self.anchor = -math.inf
        self.pos = np.zeros(3)
        self.path: _Path | None = None
        self.cv_v = np.zeros(3)
        self.sample_t: deque[float] = deque(maxlen=history)
        self.sample_p: deque[np.ndarray] = deque(maxlen=history)
        self.sample_delay: deque[float] = deque(maxlen=history)  # arrival - anchor
        self.blend_t0 = 0.0
        self.blend_d: np.ndarray | None = None


class DeadReckoner:
    """Where to draw each remote avatar at a given time (server clock), by one of four methods.

    Keys are any hashables (the demo uses handles). Times are seconds on the server clock,
    positions metres. ``positions_at`` is a Python loop over keys with no large temporaries.
    """

    MODES = ("gru", "cv", "hold", "interp")

    def __init__(
        self,
        horizons: Sequence[float],
        mode: str = "gru",
        *,
        extrapolate: float = 0.5,
        convergence: float = 0.1,
        interp_delay: float = 0.1,
        history: int = 8,
        same_anchor: float = 0.002,
    ) -> None:
        """Args (ValueError for any bad one):
        horizons: the prediction horizons, seconds, positive and strictly ascending
            (``welcome.horizons``).
        mode: one of `MODES`.
        extrapolate: seconds to keep moving past the end of a path ("gru": past the last
            horizon; "cv": past anchor + horizons[-1]) before holding; >= 0.
        convergence: seconds to blend from the displayed position to a new path ("gru",
            "cv"); 0 snaps; >= 0.
        interp_delay: "interp" renders this many seconds behind the arrival timeline: at
            t - (mean age of the recent samples when they arrived) - interp_delay, so a
            sample is normally there to interpolate towards (a playout buffer); >= 0.
        history: received samples kept for "interp" (and "cv"); >= 2.
        same_anchor: anchors within this many seconds of the newest are the same sample
            (the server repeats a prediction every tick; its anchor, rebuilt from a
            millisecond ``age``, jitters by up to 1 ms); >= 0.
        """
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        h = _check_horizons(horizons)
        if int(history) != history or history < 2:
            raise ValueError(f"history must be an integer >= 2, got {history!r}")
        self.mode = mode
        self.horizons = h
        self.extrapolate = _check_nonneg("extrapolate", extrapolate)
        self.convergence = _check_nonneg("convergence", convergence)
        self.interp_delay = _check_nonneg("interp_delay", interp_delay)
        self.history = int(history)
        self.same_anchor = _check_nonneg("same_anchor", same_anchor)
        self._knots: list[float] = [0.0, *h.tolist()]
        self._dh = np.diff(np.concatenate([[0.0], h]))
        self._cv_span = float(h[-1]) + self.extrapolate
        self._blends = mode in ("gru", "cv") and self.convergence > 0
        self._tracks: dict[Hashable, _Track] = {}

    # -- updates ------------------------------------------------------------------------

    def update(
        self, key: Hashable, anchor: float, pos: object, offsets: object, now: float
    ) -> None:
        """A received prediction for avatar ``key``.

        anchor: the sample's time, server clock (``server_time − age/1000``).
        pos: the sample's position, shape (3,) (or (2,): z = 0), metres.
        offsets: predicted position − pos at ``anchor + horizons[k]``, shape (H, 3) (or
            (H, 2): z = 0), metres (the record's ``off / 1000``).
        now: the server-clock time the prediction arrived; a blend to it starts there.

        The same anchor again (within ``same_anchor``) or an older one is ignored. Raises
        ValueError for a non-finite anchor/now/pos/offsets or a wrong shape.
        """
        anchor, now = float(anchor), float(now)
        if not (math.isfinite(anchor) and math.isfinite(now)):
            raise ValueError("anchor and now must be finite")
        st = self._tracks.get(key)
        if st is not None and anchor <= st.anchor + self.same_anchor:
            return  # a repeat of the current prediction, or an older one
        p = _vec3(pos)
        off = _offsets(offsets, len(self._knots) - 1) if self.mode == "gru" else None
        shown = self._eval(st, now) if st is not None and self._blends else None
        if shown is not None:
            shown = shown.copy()  # may be a view into the state replaced below
        if st is None:
            st = self._tracks[key] = _Track(self.history)
        st.anchor, st.pos = anchor, p
        st.sample_t.append(anchor)
        st.sample_p.append(p)
        st.sample_delay.append(max(0.0, now - anchor))
        if off is not None:
            st.path = _Path(anchor, p, off, self._dh)
        if len(st.sample_t) >= 2:
            gap = anchor - st.sample_t[-2]
            st.cv_v = (p - st.sample_p[-2]) / gap if gap <= CV_MAX_GAP else np.zeros(3)
        st.blend_d = None
        if shown is not None:
            st.blend_t0 = now
            st.blend_d = shown - self._base(st, now)

    def remove(self, key: Hashable) -> None:
        """Forget ``key`` (no error if unknown)."""
        self._tracks.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._tracks

    def __len__(self) -> int:
        return len(self._tracks)

    def keys(self) -> Iterable[Hashable]:
        """The known keys (a live view)."""
        return self._tracks.keys()

    # -- rendering ----------------------------------------------------------------------

    def _base(self, st: _Track, t: float) -> np.ndarray:
        """Position at t without blending; may be a view into the state."""
        mode = self.mode
        if mode == "gru":
            assert st.path is not None
            return st.path.at(t, self._knots, self.extrapolate)
        if mode == "cv":
            dt = t - st.anchor
            if dt <= 0.0:
                return st.pos
            return st.pos + st.cv_v * min(dt, self._cv_span)
        if mode == "hold":
            return st.pos
        # interp: play the samples back as they arrived, interp_delay later; clamp at the ends
        delay = sum(st.sample_delay) / len(st.sample_delay)
        ts, rt = st.sample_t, t - delay - self.interp_delay
        if rt >= ts[-1]:
            return st.sample_p[-1]
        if rt <= ts[0]:
            return st.sample_p[0]
        k = bisect_right(ts, rt) - 1
        f = (rt - ts[k]) / (ts[k + 1] - ts[k])
        p0 = st.sample_p[k]
        return p0 + (st.sample_p[k + 1] - p0) * f

    def _eval(self, st: _Track, t: float) -> np.ndarray:
        p = self._base(st, t)
        if st.blend_d is not None:
            w = 1.0 - _smoothstep((t - st.blend_t0) / self.convergence)
            if w > 0.0:
                p = p + st.blend_d * w
        return p

    def position_at(self, key: Hashable, t: float) -> np.ndarray:
        """Where to draw ``key`` at server time ``t``: a new (3,) float64 array.

        Raises KeyError if ``key`` is unknown.
        """
        return np.array(self._eval(self._tracks[key], float(t)), dtype=np.float64)

    def positions_at(
        self, keys: Sequence[Hashable], t: float, out: np.ndarray | None = None
    ) -> np.ndarray:
        """`position_at` for each key: (n, 3) float64, row i for keys[i].

        ``out``: an optional (n, 3) float64 array to fill and return (no allocation).
        Raises KeyError if a key is unknown, ValueError if ``out`` has the wrong shape.
        """
        n = len(keys)
        if out is None:
            out = np.empty((n, 3))
        elif out.shape != (n, 3):
            raise ValueError(f"out must have shape ({n}, 3), got {out.shape}")
        t = float(t)
        tracks = self._tracks
        for i, key in enumerate(keys):
            out[i] = self._eval(tracks[key], t)
        return out


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
        self.horizons = _check_horizons(horizons)
        for name, v in (("q", q), ("r", r), ("init_vel_std", init_vel_std)):
            if not (math.isfinite(float(v)) and float(v) > 0):
                raise ValueError(f"{name} must be finite and > 0, got {v!r}")
        self.q, self.r, self.init_vel_std = float(q), float(r), float(init_vel_std)
        self.same_anchor = _check_nonneg("same_anchor", same_anchor)
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


# ---------------------------------------------------------------------------------------
# Send policies


class SendPolicy:
    """When a player should send ``pos``.

    Call `should_send` at the client's sampling rate with local time and true position; when
    it returns True, send the sample and call `sent` with the same time, position and seq.
    """

    def __init__(self) -> None:
        self.last_sent: float | None = None  # local time of the last sent sample

    def should_send(self, t: float, p: object) -> bool:
        """True when the sample at local time ``t``, position ``p`` (3,) should be sent."""
        raise NotImplementedError

    def sent(self, t: float, p: object, seq: int = 0) -> None:
        """The sample (``t``, ``p``) was sent with ``seq``."""
        self.last_sent = float(t)


class FixedRate(SendPolicy):
    """Send ``rate`` samples a second on a fixed grid of due times (1/rate apart).

    A sample up to a tenth of a period early counts as due, so sampling jitter does not turn
    10 Hz into 8.6 Hz at 60 Hz sampling; a sender more than a period late restarts the grid.
    """

    def __init__(self, rate: float) -> None:
        """``rate``: samples per second, > 0; ValueError otherwise."""
        super().__init__()
        rate = float(rate)
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"rate must be finite and > 0, got {rate!r}")
        self.rate = rate
        self._period = 1.0 / rate
        self._due: float | None = None

    def should_send(self, t: float, p: object) -> bool:
        return self._due is None or t >= self._due - 0.1 * self._period

    def sent(self, t: float, p: object, seq: int = 0) -> None:
        super().sent(t, p, seq)
        t = float(t)
        late = self._due is None or t - self._due > self._period
        self._due = (t if late else self._due) + self._period


class ThresholdPolicy(SendPolicy):
    """DIS-style: send when the true position leaves the predicted one, plus a heartbeat.

    The prediction is the server's path for this client's own avatar (`on_own_path`) once
    it comes from the newest sent sample or a later one; until then, constant velocity from
    the last two sent samples (what any observer could do), held after
    ``horizons[-1] + extrapolate`` seconds. The stand-in has no velocity when the two sent
    samples are more than max(1 s, 2 heartbeats) apart (the sender paused).
    """

    def __init__(
        self,
        threshold: float = 0.1,
        heartbeat: float = 1.0,
        min_interval: float = 1 / 30,
        horizons: Sequence[float] = DEFAULT_HORIZONS,
        *,
        extrapolate: float = 0.5,
    ) -> None:
        """Args (ValueError for any bad one):
        threshold: metres of deviation that trigger a send; >= 0.
        heartbeat: seconds after which a sample is sent anyway; > 0.
        min_interval: seconds between sends, at least; >= 0.
        horizons: the server's prediction horizons (``welcome.horizons``).
        extrapolate: as in `DeadReckoner`; >= 0.
        """
        super().__init__()
        self.threshold = _check_nonneg("threshold", threshold)
        self.heartbeat = _check_nonneg("heartbeat", heartbeat)
        if self.heartbeat <= 0:
            raise ValueError("heartbeat must be > 0")
        self.min_interval = _check_nonneg("min_interval", min_interval)
        self.horizons = _check_horizons(horizons)
        self.extrapolate = _check_nonneg("extrapolate", extrapolate)
        self._knots: list[float] = [0.0, *self.horizons.tolist()]
        self._dh = np.diff(np.concatenate([[0.0], self.horizons]))
        self._cv_span = float(self.horizons[-1]) + self.extrapolate
        self._cv_gap = max(CV_MAX_GAP, 2 * self.heartbeat)
        self._sent: deque[tuple[float, np.ndarray]] = deque(maxlen=2)
        self._seq: int | None = None  # seq of the last sent sample
        self._own: _Path | None = None
        self._own_seq = 0

    def on_own_path(self, anchor_local: float, pos: object, offsets: object, seq: int) -> None:
        """The server's prediction for this client's own avatar.

        anchor_local: its sample time mapped to the local clock; pos (3,) metres; offsets
        (H, 3) (or (H, 2)) metres at the horizons; seq: the record's seq. A path from an
        older seq than the newest one received is ignored. ValueError for bad shapes or
        non-finite values.
        """
        seq = int(seq) % SEQ_MOD
        if self._own is not None and not _seq_ge(seq, self._own_seq):
            return
        a = float(anchor_local)
        if not math.isfinite(a):
            raise ValueError("anchor_local must be finite")
        off = _offsets(offsets, len(self._knots) - 1)
        self._own = _Path(a, _vec3(pos), off, self._dh)
        self._own_seq = seq

    def predicted(self, t: float) -> np.ndarray | None:
        """Where observers are expected to see this avatar at local time ``t``; None before
        the first send. May return a view: do not mutate."""
        if not self._sent:
            return None
        if self._own is not None and self._seq is not None and _seq_ge(self._own_seq, self._seq):
            return self._own.at(t, self._knots, self.extrapolate)
        t1, p1 = self._sent[-1]
        if len(self._sent) < 2:
            return p1
        t0, p0 = self._sent[0]
        if t1 - t0 > self._cv_gap or t <= t1:
            return p1
        return p1 + (p1 - p0) / (t1 - t0) * min(t - t1, self._cv_span)

    def should_send(self, t: float, p: object) -> bool:
        if self.last_sent is None:
            return True
        dt = t - self.last_sent
        if dt < self.min_interval:
            return False
        if dt >= self.heartbeat - 1e-9:
            return True
        pred = self.predicted(t)
        assert pred is not None
        d = _vec3(p, "p") - pred
        return float(np.sqrt(d @ d)) > self.threshold

    def sent(self, t: float, p: object, seq: int = 0) -> None:
        """The sample (``t``, ``p`` (3,) or (2,)) was sent with ``seq``. ValueError if ``p``
        is malformed."""
        super().sent(t, p, seq)
        if self._sent and t <= self._sent[-1][0]:
            self._sent.clear()  # time went backwards: no velocity from across it
        self._sent.append((float(t), _vec3(p, "p")))
        self._seq = int(seq) % SEQ_MOD
