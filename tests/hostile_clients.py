"""Clients and server-side probes for the hostile-input tests (`tests/test_hostile_*.py`):
well-behaved players, refusals read to the close, and waits on server events (ticks,
disconnects) instead of sleeps; every read loop and wait bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.core import protocol as P
from server.serve.app import AvatarServer

MAX_FRAMES = 600  # every read loop below is bounded by this many frames
WAIT = 3.0  # and every wait by this many seconds


class _Tracked:
    """Stands between a transport and its `Session` to tell the probe about disconnects."""

    __slots__ = ("probe", "session")

    def __init__(self, session, probe: Probe) -> None:
        self.session = session
        self.probe = probe

    def on_message(self, data) -> None:
        self.probe.max_message = max(self.probe.max_message, len(data))
        self.session.on_message(data)

    def on_disconnect(self, clean: bool = False) -> None:
        self.session.on_disconnect(clean)
        self.probe._disconnected(clean)


class Probe:
    """Server-side events to wait on, instead of sleeping: disconnects and ticks.

    Installed before any client connects. Each tick it also records every connection's
    buffered bytes (written, not yet taken by the socket) and the bytes of the frames the
    tick queued for it, so tests can bound what the server holds per connection.
    """

    def __init__(self, srv: AvatarServer) -> None:
        self.srv = srv
        self.disconnects = 0
        self.unclean = 0
        self.ticks = 0
        self.peak_connections = 0
        self.max_buffered = 0  # bytes, any connection, sampled at each tick's fan-out
        self.max_tick_frames = 0  # bytes of the frames one tick queued for one member
        self.max_message = 0  # bytes (or characters) of the largest message the app got
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future]] = []
        open_session = srv.open_session
        srv.open_session = lambda conn: self._opened(open_session(conn))
        fan_out = srv.world.fan_out

        def counted_fan_out(result, server_time):
            members = fan_out(result, server_time)
            for m in members:
                conn = m.transport
                if conn is not None and conn.is_open:
                    self.max_buffered = max(self.max_buffered, conn.buffered())
                size = sum(map(len, m.outbox.controls)) + len(m.outbox.state or b"")
                self.max_tick_frames = max(self.max_tick_frames, size)
            self.ticks += 1
            self._notify()
            return members

        srv.world.fan_out = counted_fan_out

    def _opened(self, session) -> _Tracked:
        self.peak_connections = max(self.peak_connections, self.srv.n_connections)
        return _Tracked(session, self)

    def _disconnected(self, clean: bool) -> None:
        self.disconnects += 1
        self.unclean += not clean
        self._notify()

    def _notify(self) -> None:
        for pred, fut in self._waiters:
            if not fut.done() and pred():
                fut.set_result(None)
        self._waiters = [(p, f) for p, f in self._waiters if not f.done()]

    async def until(self, pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Return once `pred()` holds (checked now, then at every tick and disconnect)."""
        if pred():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def ticks_pass(self, n: int) -> None:
        target = self.ticks + n
        await self.until(lambda: self.ticks >= target, f"{n} ticks")


def hello(room: str = "lobby", avatar: str | None = "a") -> bytes:
    return P.encode_client(P.Hello(room=room, avatar=avatar, v=1))  # a state every tick


def pos(seq: int, p=(0.0, 0.0, 0.0), t: float | None = None) -> bytes:
    return P.encode_client(P.Pos(seq=seq, t=0.02 * seq + 1.0 if t is None else t, p=p))


async def open_player(srv: AvatarServer, avatar: str, room: str = "lobby", sock=None):
    ws = await connect(srv.url, max_size=2**22, sock=sock, close_timeout=WAIT)
    await ws.send(hello(room, avatar))
    welcome = P.decode_server(await asyncio.wait_for(ws.recv(), WAIT))
    assert isinstance(welcome, P.Welcome), welcome
    return ws, welcome


async def expect_refusal(ws) -> tuple[P.Error | None, int | None]:
    """Read until the server closes; its `error` (if any) and the close code it sent."""
    err = None
    with contextlib.suppress(ConnectionClosed):
        for _ in range(MAX_FRAMES):
            msg = P.decode_server(await asyncio.wait_for(ws.recv(), WAIT))
            if isinstance(msg, P.Error):
                err = msg
        raise AssertionError("the server did not close within the frame budget")
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return err, ws.close_code


class Good:
    """A well-behaved player: one `pos` for each `state` it reads; checks join/leave and
    keeps every state's tick number."""

    def __init__(self, ws, welcome: P.Welcome, x: float) -> None:
        self.ws = ws
        self.welcome = welcome
        self.x = x
        self.ticks: list[int] = []
        self.names: dict[int, str] = {}
        self.seq = 0

    async def run(self, stop: asyncio.Event, limit: int = MAX_FRAMES) -> None:
        for _ in range(limit):
            if stop.is_set():
                return
            msg = P.decode_server(await asyncio.wait_for(self.ws.recv(), WAIT))
            if isinstance(msg, P.Join):
                for a, h in zip(msg.avatars, msg.handles, strict=True):
                    assert h not in self.names, f"join for handle {h} still in view"
                    self.names[h] = a
            elif isinstance(msg, P.Leave):
                for a, h in zip(msg.avatars, msg.handles, strict=True):
                    assert self.names.pop(h) == a
            elif isinstance(msg, P.State):
                assert all(h in self.names for h in msg.handle.tolist()), "handle without join"
                assert all(math.isfinite(v) for v in msg.pos.ravel().tolist())
                self.ticks.append(msg.tick)
                self.seq += 1
                await self.ws.send(pos(self.seq, (self.x + 0.01 * self.seq, 0.0, 0.0)))
            else:
                raise AssertionError(f"unexpected {msg}")
        raise AssertionError("a good client ran out of its frame budget")

    def fraction(self) -> float:
        """State frames received / ticks from its first to its last state."""
        assert len(self.ticks) >= 2
        assert self.ticks == sorted(set(self.ticks)), "ticks repeated or out of order"
        return len(self.ticks) / (self.ticks[-1] - self.ticks[0] + 1)


async def start_good(srv: AvatarServer, n: int, stop: asyncio.Event, spacing: float = 1.0):
    goods = []
    for i in range(n):
        ws, welcome = await open_player(srv, f"good{i}")
        goods.append(Good(ws, welcome, i * spacing))
    tasks = [asyncio.create_task(g.run(stop)) for g in goods]
    return goods, tasks


async def stop_good(goods: list[Good], tasks: list[asyncio.Task], stop: asyncio.Event) -> None:
    stop.set()
    await asyncio.gather(*tasks)  # each returns at its next frame (or fails the test)
    for g in goods:
        await g.ws.close()


def no_tracebacks(caplog) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name} {r.levelname}: {r.getMessage()}" for r in bad]
    assert "Traceback" not in caplog.text
