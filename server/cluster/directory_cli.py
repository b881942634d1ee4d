"""The room directory for a command line: `check_redis`, before a server starts.

Raises `server.cli.UserError` (one line naming the URL, password hidden, and what to do)
where `server.cluster.directory` raises `DirectoryError`.
"""

from __future__ import annotations

import asyncio

from server.cli import UserError, first_line
from server.cluster.directory import DirectoryError, RoomDirectory


def check_redis(url: str) -> None:
    """Raise `server.cli.UserError` (naming the URL, password hidden) unless the Redis of
    the room directory at `url` answers PING within a few seconds. For a command line,
    before serving: call it outside any running event loop (it runs its own)."""

    async def ping() -> None:
        d = RoomDirectory(url, timeout=3.0)
        try:
            await d.ping()
        finally:
            await d.stop()

    try:
        asyncio.run(ping())
    except DirectoryError as e:
        raise UserError(
            first_line(e), "is redis-server running there? check --redis (AVATAR_REDIS)"
        ) from None
