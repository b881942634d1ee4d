"""Shared test helper: a real AvatarServer on 127.0.0.1, port 0, for the duration of a block."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from server.serve.app import AvatarServer
from server.serve.config import Config

# Overrides every `running` server gets (a fixture may set "transport" for a whole module).
DEFAULTS: dict = {"port": 0, "tick_hz": 50.0}


@contextlib.asynccontextmanager
async def running(
    setup: Callable[[AvatarServer], None] | None = None, **overrides
) -> AsyncIterator[AvatarServer]:
    """Serve `Config(**DEFAULTS, **overrides)` until the block ends (port 0, 50 Hz).

    `setup(server)` runs before it starts (e.g. to add routes). Startup errors are raised;
    at the end the server is shut down gracefully (waited for, at most 10 s).
    """
    srv = AvatarServer(Config(**{**DEFAULTS, **overrides}))
    if setup is not None:
        setup(srv)
    task = asyncio.create_task(srv.serve())
    started = asyncio.create_task(srv.started.wait())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()  # startup failed: raise it
    try:
        yield srv
    finally:
        srv.request_shutdown()
        await asyncio.wait_for(task, 10)
