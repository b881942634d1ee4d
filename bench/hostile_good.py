"""The well-behaved players of the hostile-traffic bench and the windows they are measured
in: each streams `pos` and files the ticks of the states it receives under the open
window (`Window.fraction`: states received / ticks spanned). Part of `bench/hostile.py`."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random

import msgpack
from hostile_wire import OP_TIMEOUT, hello, open_ws, pos, recv
from websockets.exceptions import ConnectionClosed

from server.core import protocol as P


class Window:
    """Which measurement window is open; good clients file their state ticks under it."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.ticks: dict[str, dict[int, list[int]]] = {}

    def open(self, name: str) -> None:
        self.ticks[name] = {}
        self.name = name

    def close(self) -> None:
        self.name = None

    def fraction(self, name: str) -> dict:
        """Window `name`: the clients with two states or more, their overall and smallest
        fraction of the ticks spanned."""
        per = []
        got = span = 0
        for ticks in self.ticks.get(name, {}).values():
            if len(ticks) >= 2:
                s = max(ticks) - min(ticks) + 1
                per.append(len(set(ticks)) / s)
                got += len(set(ticks))
                span += s
        return {
            "clients": len(per),
            "fraction": round(got / span, 4) if span else None,
            "min_fraction": round(min(per), 4) if per else None,
        }


class Good:
    """A player streaming a slow circle at `rate` Hz; counts its state ticks per window."""

    def __init__(self, i: int, rng: random.Random, window: Window) -> None:
        self.i = i
        self.cx, self.cy = rng.uniform(-15, 15), rng.uniform(-15, 15)
        self.phase = rng.uniform(0, 2 * math.pi)
        self.window = window
        self.ws = None
        self.close_code: int | None = None
        self.error: str | None = None
        self.closed_early = False

    async def start(self, url: str, rate: float, stop: asyncio.Event) -> None:
        """Connect, hello, wait for welcome, then read and send (at `rate` Hz) until `stop`."""
        self.stop = stop
        self.ws = await open_ws(url)
        await self.ws.send(hello(f"good{self.i}"))
        welcome = P.decode_server(await recv(self.ws))
        assert isinstance(welcome, P.Welcome), welcome
        self.tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._send(rate, stop)),
        ]

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if frame[1:12] == b"\xa4type\xa5state":
                    name = self.window.name
                    if name is not None:
                        tick = msgpack.unpackb(frame)["tick"]
                        self.window.ticks[name].setdefault(self.i, []).append(tick)
                elif b"error" in frame[:16]:
                    self.error = P.decode_server(frame).code
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code
        self.closed_early = not self.stop.is_set()

    async def _send(self, rate: float, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        t0, k = loop.time(), 0
        with contextlib.suppress(ConnectionClosed):
            while not stop.is_set():
                k += 1
                a = self.phase + 0.2 * k / rate  # 0.2 rad/s on a 3 m circle
                p = (self.cx + 3 * math.cos(a), self.cy + 3 * math.sin(a), 0.0)
                await self.ws.send(pos(k, p, k / rate))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, t0 + k / rate - loop.time()))

    async def close(self) -> None:
        """Close the connection and wait for its tasks."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), OP_TIMEOUT)
        await asyncio.gather(*self.tasks, return_exceptions=True)
