"""Client-side dead reckoning: where to draw each remote avatar, by one of four methods.

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
paths of `client_demo.kalman_paths.KalmanPaths` (a constant-velocity Kalman filter per
remote avatar, run on the received samples), it draws the classical Kalman dead
reckoning the same way.

The clock mapping is `client_demo.clock.ClockMap`; when to send ``pos`` is
`client_demo.send_policy`.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import deque
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from client_demo.paths import (
    CV_MAX_GAP,
    PredictedPath,
    as_offsets,
    as_vec3,
    check_horizons,
    check_nonneg,
)


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
        self.path: PredictedPath | None = None
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
        h = check_horizons(horizons)
        if int(history) != history or history < 2:
            raise ValueError(f"history must be an integer >= 2, got {history!r}")
        self.mode = mode
        self.horizons = h
        self.extrapolate = check_nonneg("extrapolate", extrapolate)
        self.convergence = check_nonneg("convergence", convergence)
        self.interp_delay = check_nonneg("interp_delay", interp_delay)
        self.history = int(history)
        self.same_anchor = check_nonneg("same_anchor", same_anchor)
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
        p = as_vec3(pos)
        off = as_offsets(offsets, len(self._knots) - 1) if self.mode == "gru" else None
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
            st.path = PredictedPath(anchor, p, off, self._dh)
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
