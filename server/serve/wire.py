"""Every frame the server writes goes out here: one counting send, and the tick's writes.

`Wire.send(conn, frames)` writes without awaiting and counts frames and bytes in `Stats`.
`Wire.write_tick(members, ...)` writes each member's outbox after fan-out: join/leave
control frames in order, then its newest state frame. A client whose socket holds more
than `send_buffer` bytes unsent has that tick's state frame dropped (each one is whole and
the next replaces it; a v2 client's next one carries its whole view), keeps its control
frames, and is handed to `too_slow` after `max_dropped` drops in a row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from server.core.members import Member
from server.core.stats import Stats
from server.serve.transports import Connection

log = logging.getLogger("avatar_stream")


class Wire:
    """The server's writes, counted in `stats`."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def send(self, conn: Connection, frames: list[bytes]) -> None:
        """Write `frames` now (no await) and count them; one broken socket never raises."""
        stats = self.stats
        for frame in frames:
            stats.bytes_out += len(frame)
        stats.frames_out += len(frames)
        try:
            conn.send(frames)
        except Exception:  # one client's broken socket never stops the fan-out
            log.debug("write to %s failed", conn.peer, exc_info=True)

    def write_tick(
        self,
        members: list[Member],
        send_buffer: int,
        max_dropped: int,
        too_slow: Callable[[Member], None],
    ) -> None:
        """Write each member's outbox (filled by `World.fan_out`) and empty it; see the
        module docstring for the slow-client rule. `too_slow(member)` must close it."""
        stats = self.stats
        for m in members:
            conn: Connection | None = m.transport
            box = m.outbox
            if conn is None or not conn.is_open:
                box.controls.clear()
                box.state = None
                continue
            if conn.buffered() > send_buffer:
                m.dropped += 1
                stats.dropped += 1
                if box.state is not None:  # v1: the next frame replaces it; v2: carries it all
                    m.resync = True
                box.state = None  # join/leave are kept
                if m.dropped == max_dropped:  # leaves others' views now, not after the close
                    too_slow(m)
                continue
            m.dropped = 0
            frames = box.controls
            if box.state is not None:
                frames.append(box.state)
            self.send(conn, frames)
            box.controls = []
            box.state = None
