"""Clock mapping: the server's clock on the local one, from ping/pong round trips.

Pure: no asyncio, no sockets. See ``docs/protocol.md`` ("Clocks").

    clock = ClockMap()                  # on pong: clock.on_pong(t_send, t_recv, server_time)
    t_server = clock.to_server(local_now)
"""

from __future__ import annotations

import math
from collections import deque


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
