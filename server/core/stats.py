"""The service's plain counters, bumped on the hot path and exported at scrape time."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Stats:
    """Counters of one server process (`server.serve.metrics` exports them)."""

    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    dropped: int = 0
    overruns: int = 0
    ticks: int = 0
    tick_errors: int = 0
    rate_dropped: int = 0  # messages dropped by the per-connection rate limit
    origin_refused: int = 0  # WebSocket handshakes from a browser origin not allowed
    resumed: int = 0  # reconnects that got their avatar back with a resume token
    replaced: int = 0  # connections closed because another took over their avatar
    expired: int = 0  # detached avatars removed after the resume grace period
    reloads_ok: int = 0
    reloads_failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
