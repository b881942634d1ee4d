"""Send policies: when a player sends ``pos``.

`FixedRate`, or the DIS-style `ThresholdPolicy` (send when the true position leaves the
predicted one by a threshold, with a heartbeat). Pure: numpy only.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import numpy as np

from client_demo.paths import (
    CV_MAX_GAP,
    DEFAULT_HORIZONS,
    SEQ_MOD,
    PredictedPath,
    as_offsets,
    as_vec3,
    check_horizons,
    check_nonneg,
    seq_ge,
)


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
        self.threshold = check_nonneg("threshold", threshold)
        self.heartbeat = check_nonneg("heartbeat", heartbeat)
        if self.heartbeat <= 0:
            raise ValueError("heartbeat must be > 0")
        self.min_interval = check_nonneg("min_interval", min_interval)
        self.horizons = check_horizons(horizons)
        self.extrapolate = check_nonneg("extrapolate", extrapolate)
        self._knots: list[float] = [0.0, *self.horizons.tolist()]
        self._dh = np.diff(np.concatenate([[0.0], self.horizons]))
        self._cv_span = float(self.horizons[-1]) + self.extrapolate
        self._cv_gap = max(CV_MAX_GAP, 2 * self.heartbeat)
        self._sent: deque[tuple[float, np.ndarray]] = deque(maxlen=2)
        self._seq: int | None = None  # seq of the last sent sample
        self._own: PredictedPath | None = None
        self._own_seq = 0

    def on_own_path(self, anchor_local: float, pos: object, offsets: object, seq: int) -> None:
        """The server's prediction for this client's own avatar.

        anchor_local: its sample time mapped to the local clock; pos (3,) metres; offsets
        (H, 3) (or (H, 2)) metres at the horizons; seq: the record's seq. A path from an
        older seq than the newest one received is ignored. ValueError for bad shapes or
        non-finite values.
        """
        seq = int(seq) % SEQ_MOD
        if self._own is not None and not seq_ge(seq, self._own_seq):
            return
        a = float(anchor_local)
        if not math.isfinite(a):
            raise ValueError("anchor_local must be finite")
        off = as_offsets(offsets, len(self._knots) - 1)
        self._own = PredictedPath(a, as_vec3(pos), off, self._dh)
        self._own_seq = seq

    def predicted(self, t: float) -> np.ndarray | None:
        """Where observers are expected to see this avatar at local time ``t``; None before
        the first send. May return a view: do not mutate."""
        if not self._sent:
            return None
        if self._own is not None and self._seq is not None and seq_ge(self._own_seq, self._seq):
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
        d = as_vec3(p, "p") - pred
        return float(np.sqrt(d @ d)) > self.threshold

    def sent(self, t: float, p: object, seq: int = 0) -> None:
        """The sample (``t``, ``p`` (3,) or (2,)) was sent with ``seq``. ValueError if ``p``
        is malformed."""
        super().sent(t, p, seq)
        if self._sent and t <= self._sent[-1][0]:
            self._sent.clear()  # time went backwards: no velocity from across it
        self._sent.append((float(t), as_vec3(p, "p")))
        self._seq = int(seq) % SEQ_MOD
