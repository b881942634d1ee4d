"""Downlink dead reckoning: an avatar's record goes out only when its viewers' path is off.

Array code (numpy, and the per-row distances compiled in `server.core.downlink_kernels`),
no asyncio. Receivers draw each remote avatar along the last path they got
(`path_at`, the rule in ``docs/protocol.md``); the server keeps, per engine slot, that
same path (`DownlinkReckoner`) and each tick resends an avatar's record to its v2 viewers
only when the newest sample is more than ``threshold`` metres off it at the sample's
time, or the new predicted path is, anywhere up to ``lookahead`` seconds ahead, or when
``heartbeat`` seconds passed since it was sent (DIS's rule, applied to paths):

    dr = DownlinkReckoner(capacity, horizons, threshold=0.05, heartbeat=1.0, lookahead=0.3)
    due = dr.due(slots, anchor, pos, now, off)     # (n,) bool
    dr.commit(slots[due], anchor[due], pos[due], off[due], seq[due], now)

`select` runs the same rule over one recorded track, for offline measurement.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence

import numpy as np

from server.core import downlink_kernels as K

EXTRAPOLATE = 0.5  # s: receivers move on at the last segment's velocity this long, then hold


def path_at(
    pos: np.ndarray,
    off: np.ndarray,
    horizons: Sequence[float] | np.ndarray,
    d: np.ndarray,
    extrapolate: float = EXTRAPOLATE,
) -> np.ndarray:
    """Positions (M, 3) at elapsed times `d` (M,) along M paths, as a receiver draws them.

    Path m is piecewise linear through (0, pos[m]), (h_k, pos[m] + off[m, k-1]); before 0
    it is pos[m]; past h_H it goes on with the last segment's velocity for `extrapolate`
    s, then holds. `pos` (M, 3), `off` (M, H, 3) metres, `horizons` (H,) positive and
    strictly increasing (ValueError otherwise).
    """
    h = np.asarray(horizons, dtype=np.float64)
    if h.ndim != 1 or h.size == 0 or h[0] <= 0 or np.any(np.diff(h) <= 0):
        raise ValueError("horizons must be a non-empty, positive, strictly increasing 1-D array")
    pos = np.asarray(pos, dtype=np.float64)
    off = np.asarray(off, dtype=np.float64)
    knots = np.concatenate([[0.0], h])
    d = np.clip(np.asarray(d, dtype=np.float64), 0.0, h[-1] + extrapolate)
    seg = np.clip(np.searchsorted(knots, d, side="right") - 1, 0, h.size - 1)  # (M,)
    w = (d - knots[seg]) / (knots[seg + 1] - knots[seg])  # (M,) >1 past the last knot
    m = np.arange(len(pos))
    zero = np.zeros((len(pos), 1, 3))
    rel = np.concatenate([zero, off], axis=1)  # (M, H+1, 3) offsets at the knots
    a, b = rel[m, seg], rel[m, seg + 1]
    return pos + a + w[:, None] * (b - a)


class DownlinkReckoner:
    """Per engine slot, the path its v2 viewers last got, and the rule for resending it.

    Slots index the engine's arrays; `forget` a slot when a new avatar takes it. Times
    are the server clock (s), positions metres. threshold >= 0, heartbeat > 0 and
    lookahead >= 0 (ValueError otherwise); lookahead 0 compares the sample only.
    """

    def __init__(
        self,
        capacity: int,
        horizons: Sequence[float],
        threshold: float,
        heartbeat: float,
        lookahead: float = 0.0,
    ) -> None:
        if not threshold >= 0 or not heartbeat > 0 or not lookahead >= 0:
            raise ValueError("need threshold >= 0, heartbeat > 0 and lookahead >= 0")
        self.horizons = np.asarray(horizons, dtype=np.float64)
        self.threshold = float(threshold)
        self.heartbeat = float(heartbeat)
        self.lookahead = float(lookahead)
        H = len(self.horizons)
        # the horizons whose new and sent paths are compared; the path's knots
        self._ahead_at = np.flatnonzero(self.horizons <= self.lookahead + 1e-9)
        self._no_ahead = np.zeros(0, dtype=np.int64)
        self._no_off = np.zeros((0, H, 3), dtype=np.float32)
        self._knots = np.concatenate([[0.0], self.horizons])
        K.warm_up()  # compiled (or loaded from numba's cache) now, not in a tick
        self.has = np.zeros(capacity, dtype=bool)  # a path was sent for this slot
        self.anchor = np.zeros(capacity)  # the sent sample's time
        self.pos = np.zeros((capacity, 3))
        self.off = np.zeros((capacity, H, 3), dtype=np.float32)
        self.seq = np.zeros(capacity, dtype=np.int64)
        self.sent_at = np.zeros(capacity)  # server time it was sent

    def grow(self, capacity: int) -> None:
        """Make room for `capacity` slots (new slots have no path)."""
        extra = capacity - len(self.has)
        if extra <= 0:
            return
        self.has = np.concatenate([self.has, np.zeros(extra, dtype=bool)])
        self.anchor = np.concatenate([self.anchor, np.zeros(extra)])
        self.pos = np.concatenate([self.pos, np.zeros((extra, 3))])
        self.off = np.concatenate([self.off, np.zeros((extra, *self.off.shape[1:]), np.float32)])
        self.seq = np.concatenate([self.seq, np.zeros(extra, dtype=np.int64)])
        self.sent_at = np.concatenate([self.sent_at, np.zeros(extra)])

    def forget(self, slots: np.ndarray | Sequence[int]) -> None:
        """These slots have no sent path (a new avatar took them)."""
        self.has[np.asarray(slots, dtype=np.int64)] = False

    def error(self, slots: np.ndarray, anchor: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Metres between each newest sample (`pos` at `anchor`) and its sent path then
        (numpy; `due` computes the same compiled, `server.core.downlink_kernels`)."""
        age = anchor - self.anchor[slots]
        return np.linalg.norm(
            pos - path_at(self.pos[slots], self.off[slots], self.horizons, age), axis=1
        )

    def ahead(
        self, slots: np.ndarray, anchor: np.ndarray, pos: np.ndarray, off: np.ndarray
    ) -> np.ndarray:
        """Metres between each new path (`pos` at `anchor`, offsets `off` (n, H, 3)) and the
        sent path, the largest at the horizons up to `lookahead` (0 when there are none)."""
        h = self.horizons[self._ahead_at]
        n, K = len(slots), len(h)
        if K == 0:
            return np.zeros(n)
        d = (anchor - self.anchor[slots])[:, None] + h[None, :]  # (n, K) on the sent path
        old = path_at(
            np.repeat(self.pos[slots], K, axis=0), np.repeat(self.off[slots], K, axis=0),
            self.horizons, d.ravel(),
        ).reshape(n, K, 3)  # fmt: skip
        new = pos[:, None, :] + np.asarray(off, dtype=np.float64)[:, self._ahead_at]
        return np.linalg.norm(new - old, axis=2).max(axis=1)

    def due(
        self,
        slots: np.ndarray,
        anchor: np.ndarray,
        pos: np.ndarray,
        now: float,
        off: np.ndarray | None = None,
    ) -> np.ndarray:
        """(n,) bool: which slots' records must go out at server time `now`: none sent yet,
        the heartbeat is due, the sample `pos` (n, 3) at `anchor` (n,) is more than
        `threshold` off the sent path, or (with the new offsets `off` (n, H, 3)) the new
        path is, at a horizon up to `lookahead`."""
        slots = np.asarray(slots, dtype=np.int64)
        out = ~self.has[slots] | (now - self.sent_at[slots] >= self.heartbeat - 1e-9)
        check = np.flatnonzero(~out & (anchor > self.anchor[slots]))
        if len(check):
            new_off = self._no_off if off is None else np.asarray(off)[check]
            err = K.off_path(
                slots[check], np.asarray(anchor, np.float64)[check],
                np.asarray(pos, np.float64)[check], new_off, self.anchor, self.pos, self.off,
                self._knots, EXTRAPOLATE, self._no_ahead if off is None else self._ahead_at,
            )  # fmt: skip
            out[check] = err > self.threshold
        return out

    def commit(
        self,
        slots: np.ndarray,
        anchor: np.ndarray,
        pos: np.ndarray,
        off: np.ndarray,
        seq: np.ndarray,
        now: float,
    ) -> None:
        """These slots' records (sample time, position, offsets (n, H, 3), seq) went out now."""
        self.has[slots] = True
        self.anchor[slots] = anchor
        self.pos[slots] = pos
        self.off[slots] = off
        self.seq[slots] = seq
        self.sent_at[slots] = now


def select(
    t: np.ndarray,
    p: np.ndarray,
    off: np.ndarray,
    horizons: Sequence[float],
    threshold: float,
    heartbeat: float,
    lookahead: float = 0.0,
) -> np.ndarray:
    """Indices of the samples of one track whose records a server would send: the rule of
    `DownlinkReckoner` applied at each sample's time (`t` (N,) ascending, `p` (N, 3),
    `off` (N, H, 3) the prediction made at each sample). Scalar code, for long recordings."""
    h = [0.0, *(float(x) for x in horizons)]
    ahead = [(k + 1, hk) for k, hk in enumerate(h[1:]) if hk <= lookahead + 1e-9]
    end = h[-1] + EXTRAPOLATE

    def at(kn: list, d: float) -> tuple[float, float, float]:
        d = min(max(d, 0.0), end)
        k = min(bisect_right(h, d) - 1, len(h) - 2)
        w = (d - h[k]) / (h[k + 1] - h[k])
        a, b = kn[k], kn[k + 1]
        return a[0] + w * (b[0] - a[0]), a[1] + w * (b[1] - a[1]), a[2] + w * (b[2] - a[2])

    t = np.asarray(t, dtype=np.float64).tolist()
    p = np.asarray(p, dtype=np.float64)
    knots = np.concatenate([np.zeros((len(p), 1, 3)), np.asarray(off, dtype=np.float64)], 1)
    knots += p[:, None, :]  # (N, H+1, 3) absolute knot positions of each sample's path
    pl = p.tolist()
    sent: list[int] = []
    s, sent_at, kn = -1, -math.inf, []
    for j, tj in enumerate(t):
        if s >= 0 and tj - sent_at < heartbeat - 1e-9:
            if tj <= t[s]:
                continue
            age = tj - t[s]
            err = math.dist(pl[j], at(kn, age))
            for k, hk in ahead:  # the new path against the sent one, up to lookahead
                err = max(err, math.dist(knots[j, k], at(kn, age + hk)))
            if not err > threshold:
                continue
        s, sent_at, kn = j, tj, knots[j].tolist()
        sent.append(j)
    return np.asarray(sent, dtype=np.int64)
