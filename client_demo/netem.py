"""A loopback TCP proxy that adds a fixed one-way delay in each direction (network emulation).

Every byte is held back `delay` seconds, WebSocket pings and the TCP stream alike, so the
server sees the latency exactly as it would over a real network (its clock-offset estimate
uses the WebSocket ping round trip). Order is kept; nothing is dropped.

    async with LatencyProxy("127.0.0.1", server_port, delay=0.1) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/"
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque


class LatencyProxy:
    """Listens on 127.0.0.1 (a free port unless given) and forwards to (host, port) with a delay."""

    def __init__(self, host: str, port: int, delay: float, listen_port: int = 0) -> None:
        """Raises ValueError for a negative delay. Nothing listens until `start`."""
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.host, self.target_port, self.delay, self.listen_port = host, port, delay, listen_port
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.bytes_up = self.bytes_down = 0

    async def start(self) -> None:
        """Start listening; `port` is bound afterwards. Raises OSError if it cannot."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and cut every proxied connection."""
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def __aenter__(self) -> LatencyProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _accept(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            s_reader, s_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            c_writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(
                self._pump(c_reader, s_writer, up=True), self._pump(s_reader, c_writer, up=False)
            )
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            for w in (c_writer, s_writer):
                w.close()
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> None:
        queue: deque[tuple[float, bytes]] = deque()
        arrived = asyncio.Event()
        done = False

        async def deliver() -> None:
            while queue or not done:
                if not queue:
                    arrived.clear()
                    await arrived.wait()
                    continue
                due, chunk = queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)  # the emulated propagation delay
                queue.popleft()
                if not chunk:  # the peer closed its side: pass that on
                    if writer.can_write_eof():
                        writer.write_eof()
                    else:
                        writer.close()
                    return
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                chunk = await reader.read(65536)
                queue.append((time.monotonic() + self.delay, chunk))
                arrived.set()
                if up:
                    self.bytes_up += len(chunk)
                else:
                    self.bytes_down += len(chunk)
                if not chunk:
                    break
        except asyncio.CancelledError:
            sender.cancel()
            raise
        done = True
        arrived.set()
        await sender
