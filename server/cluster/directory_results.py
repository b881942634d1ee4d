"""What the room directory returns and raises: `Owner`, `Heartbeat`, the `DirectoryError`s.

Plain values, no I/O: `server.cluster.directory.RoomDirectory` returns and raises them;
`redact` hides a Redis URL's password in their messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit


class DirectoryError(Exception):
    """Base class of the errors raised by :class:`RoomDirectory`."""


class DirectoryUnavailable(DirectoryError, ConnectionError):
    """Redis could not be reached (or timed out). Retryable; also an ``OSError``."""


class NoProcessAvailable(DirectoryError):
    """No live, non-draining, non-overloaded process can take a new room. Retryable."""


@dataclass(frozen=True)
class Owner:
    """The process that owns a room: its id and the WebSocket URL clients connect to.

    ``placed`` is True when this very call placed the room (it was unowned before); it
    does not take part in equality.
    """

    process_id: str
    url: str
    placed: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Heartbeat:
    """What one heartbeat found.

    ``reregistered``: the process key had expired (Redis restarted or lost our keys, or
    we missed heartbeats for a whole TTL) and was written afresh. ``lost``: rooms passed
    in that another live process owns now; the caller must close their clients (1012 with
    ``moved``), since a room never lives on two processes. ``reclaimed``: rooms passed in
    whose key had gone (or whose owner was dead) and that now point at this process again.
    """

    reregistered: bool
    lost: frozenset[str]
    reclaimed: frozenset[str]


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
