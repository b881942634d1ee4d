"""An asyncio client for avatar-stream: connect, hello, stream positions, receive predictions.

    async with AvatarClient("ws://127.0.0.1:8765/", room="lobby", avatar="alice") as c:
        c.send_pos(seq, time.monotonic(), (x, y, z))     # never blocks; latest-first is the server's job
        async for msg in c:                               # Welcome / Join / Leave / State / Error
            if isinstance(msg, State):
                ...  # msg.handle -> c.names[h]; anchor = msg.server_time - msg.age

`AvatarClient` keeps the handle -> avatar id map from join/leave, maps the server clock
to the local one (`clock`, from `ping`/`pong` every `ping_interval`), and reconnects with
exponential backoff when the connection drops (sending the resume token the server gave).
To emulate network latency, connect through `client_demo.netem.LatencyProxy`.

`url` may be any worker of a cluster (`python -m server --workers N --redis URL`): before
each connection the client asks it where the room is served (`GET /route?room=`; a server
without that route is used as it is) and connects there, and it follows a `moved` error
(close 4001: the room is elsewhere, or the worker is draining) at once, without backoff.
When the worker it was sent to cannot be reached (killed), it says hello at `url` itself.
The look-up, the hello and the redirects are the client core's (`client_demo.wsclient`,
shared with the load tool and bench/cluster.py); `route_url` is importable from here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from client_demo import wsclient
from client_demo.clock import ClockMap
from client_demo.wsclient import MAX_MOVES, ROUTE_TIMEOUT, route_url
from server.core import protocol as P

__all__ = ["MAX_MOVES", "ROUTE_TIMEOUT", "AvatarClient", "Refused", "route_url"]

log = logging.getLogger("avatar_stream.client")


class Refused(Exception):
    """The server answered `hello` with an error (`code`, `close_code`) or closed it."""

    def __init__(
        self, code: str, message: str, close_code: int | None = None, url: str | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.close_code, self.url = code, close_code, url


class AvatarClient:
    """One connection to the server (a player with `avatar`, or a spectator without)."""

    def __init__(
        self,
        url: str,
        room: str,
        avatar: str | None = None,
        *,
        region: tuple[float, float, float, float] | None = None,
        token: str | None = None,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.25, 8.0),
        ping_interval: float = 2.0,
        max_attempts: int | None = None,
        version: int = P.VERSION,
        pos_encoding: str = "msgpack",
    ) -> None:
        """Nothing connects until `connect()` (or `async with`). Raises ValueError on bad args.

        `version` 2 (the default) gets downlink dead reckoning: a `State` holds only the
        avatars whose path changed (or that just entered the view), so keep each avatar's
        last path until its `Leave` (`client_demo.reckoning.DeadReckoner` does); 1 gets
        every avatar in view every tick. `pos_encoding` "binary" sends each `pos` as the
        37-byte binary frame (docs/protocol.md) when the server's `welcome` confirms it,
        msgpack otherwise.
        """
        if ping_interval <= 0 or backoff[0] <= 0 or backoff[1] < backoff[0]:
            raise ValueError("need ping_interval > 0 and 0 < backoff[0] <= backoff[1]")
        if version not in P.VERSIONS:
            raise ValueError(f"version must be one of {P.VERSIONS}")
        self.version = version
        if pos_encoding not in P.POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {P.POS_ENCODINGS}")
        self.pos_encoding = pos_encoding
        self.url, self.room, self.avatar, self.region, self.token = url, room, avatar, region, token
        self.reconnect, self.backoff = reconnect, backoff
        self.ping_interval, self.max_attempts = ping_interval, max_attempts
        self.clock = ClockMap()
        self.names: dict[int, str] = {}  # handle -> avatar id, for the avatars in view
        self.welcome: P.Welcome | None = None
        self.resume: str | None = None
        self.ws: ClientConnection | None = None
        self.connects = 0
        self.frames_in = self.bytes_in = self.frames_out = self.bytes_out = 0
        self.states_in = self.records_in = 0  # state frames and the avatar records in them
        self._out: asyncio.Queue[bytes] = asyncio.Queue()
        self._in: deque[tuple[float, bytes]] = deque()  # (local receive time, frame)
        self._in_ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._pings: dict[float, float] = {}
        self.served_by: str | None = None  # the worker URL of the current connection
        self._workers: list[str] = []  # workers that served this client (route fallbacks)
        self._moved_to: str | None = None  # a `moved` error's url, used by the next connect
        self.moves = 0  # `moved` errors followed

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> AvatarClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> P.Welcome:
        """Connect and say hello; returns the `welcome`.

        Raises Refused when the server answers with an error, OSError / InvalidHandshake
        when it cannot be reached (after `max_attempts` tries when reconnecting).
        """
        delay, attempt, moves0 = self.backoff[0], 0, self.moves
        while True:
            attempt += 1
            target, self._moved_to = self._moved_to, None
            hops = self.moves - moves0  # `moved` followed in this connect
            try:
                # a worker that cannot be reached (killed: its rooms are free once its entry
                # expires) gets its hello said at `url` instead, whose claim decides
                got = await wsclient.dial(self._open_hello, target, self._lookup,
                                          fallback=self.url, moves=hops,
                                          on_move=self._on_move)  # fmt: skip
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as e:
                failed: Exception = e
            else:
                if got.welcome is not None:
                    return self._attach(got.conn, got.welcome, got.url)
                failed = self._refused(got)
                moved_to_down = got.down is not None and got.reply.url == got.down
                if not (wsclient.is_moved(got.reply) and got.moves < MAX_MOVES and moved_to_down):
                    raise failed
                # moved to the worker that is down: its entry has not expired yet
            if not self.reconnect or (self.max_attempts and attempt >= self.max_attempts):
                raise failed
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    async def _route(self) -> str:
        """The WebSocket URL that serves this client's room, from `GET /route` on `url`
        (or, when that worker does not answer, on the workers this client was served by
        before); a worker's own URL when its reply's url is null (one process) or it has
        no such route (404). Raises OSError when none answers."""
        u = urlsplit(self.url)
        if u.scheme not in ("ws", "wss") or not u.hostname:
            raise ValueError(f"not a WebSocket URL: {self.url!r}")
        bases = [self.url, *[w for w in reversed(self._workers) if w != self.url]]
        return (await wsclient.route(bases, self.room))[0]

    def _on_move(self, reply: P.Error) -> None:
        self.moves += 1

    async def _lookup(self) -> tuple[str, str]:
        """`dial`'s look-up: the room's URL, falling back to `url`."""
        return await self._route(), self.url

    async def _open_hello(self, url: str):
        hello = wsclient.hello_frame(self.room, self.avatar, v=self.version, token=self.token,
                                     resume=self.resume, region=self.region,
                                     pos_encoding=self.pos_encoding)  # fmt: skip
        return await wsclient.open_hello(url, hello)

    @staticmethod
    def _refused(got: wsclient.Dialed) -> Refused:
        """The Refused for a hello `dial` did not get welcomed."""
        reply = got.reply
        if isinstance(reply, P.Error):
            return Refused(reply.code, reply.message, got.close_code, reply.url)
        return Refused("bad_reply", f"expected welcome, got {type(reply).__name__}")

    def _attach(self, ws: ClientConnection, msg: P.Welcome, url: str) -> P.Welcome:
        """Take the welcomed connection `ws` to `url`: start reading, writing and pinging."""
        self.ws, self.welcome, self.resume, self.served_by = ws, msg, msg.resume, url
        if url not in self._workers:
            self._workers = [*self._workers[-7:], url]
        self.names.clear()
        self.connects += 1
        self.clock.on_frame(msg.server_time, time.monotonic())
        for t in self._tasks:
            t.cancel()
        self._tasks = [
            asyncio.create_task(self._reader(ws)),
            asyncio.create_task(self._writer(ws)),
            asyncio.create_task(self._pinger()),
        ]
        return msg

    async def close(self) -> None:
        """Say bye and close; idempotent."""
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(P.encode_client(P.Bye()))
            await self.ws.close()
        self._in_ready.set()

    # -- sending --------------------------------------------------------------------------------

    def send_pos(self, seq: int, t: float, p: Sequence[float]) -> None:
        """Queue a position for sending. Never blocks."""
        pos = P.Pos(seq=seq, t=float(t), p=tuple(float(v) for v in p))
        w = self.welcome
        binary = w is not None and w.pos_encoding == "binary"
        self._send(P.encode_pos_binary(pos) if binary else P.encode_client(pos))

    def set_region(self, region: tuple[float, float, float, float] | None) -> None:
        """Spectators: change the region of the room to watch (None: whole room)."""
        self.region = region
        self._send(P.encode_client(P.View(region=region)))

    def _send(self, frame: bytes) -> None:
        self._out.put_nowait(frame)

    async def _writer(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # the reader sees the drop and says so
            while True:
                frame = await self._out.get()
                await ws.send(frame)
                self.frames_out += 1
                self.bytes_out += len(frame)

    async def _pinger(self) -> None:
        while True:
            t = time.monotonic()
            self._pings[t] = t
            if len(self._pings) > 32:
                self._pings.pop(next(iter(self._pings)))
            self._send(P.encode_client(P.Ping(t=t)))
            await asyncio.sleep(self.ping_interval)

    # -- receiving ------------------------------------------------------------------------------

    async def _reader(self, ws: ClientConnection) -> None:
        try:
            async for data in ws:
                self._in.append((time.monotonic(), data))
                self._in_ready.set()
        except ConnectionClosed:
            pass
        finally:
            self._in.append((time.monotonic(), b""))  # marks the drop
            self._in_ready.set()

    async def recv(self) -> P.ServerMessage | None:
        """The next message; None once closed for good.

        Reconnects (with backoff) when the connection dropped and `reconnect` is on; the
        next message after a reconnect is the new `welcome`. Raises Refused if the server
        refuses the reconnect.
        """
        while True:
            while not self._in:
                if self._closed:
                    return None
                self._in_ready.clear()
                await self._in_ready.wait()
            received, data = self._in.popleft()
            if not data:  # the connection dropped
                if self._closed or not self.reconnect:
                    self._closed = True
                    return None
                log.info("connection lost; reconnecting")
                return await self.connect()
            self.frames_in += 1
            self.bytes_in += len(data)
            now = received
            msg = P.decode_server(data)
            if isinstance(msg, P.State):
                self.clock.on_frame(msg.server_time, now)
                self.states_in += 1
                self.records_in += len(msg)
            elif isinstance(msg, P.Join):
                self.names.update(zip(msg.handles, msg.avatars, strict=True))
            elif isinstance(msg, P.Leave):
                for h in msg.handles:
                    self.names.pop(h, None)
            elif isinstance(msg, P.Error) and msg.code == "replaced":
                self.reconnect = False  # another connection has this avatar: never fight it
            elif wsclient.is_moved(msg):
                self._moved_to = msg.url  # the reconnect after the close goes there (or routes)
                self.moves += 1
            elif isinstance(msg, P.Pong):
                sent = self._pings.pop(msg.t, None)
                if sent is not None:
                    self.clock.on_pong(sent, now, msg.server_time)
                continue  # pongs are the client's business only
            return msg

    async def __aiter__(self) -> AsyncIterator[P.ServerMessage]:
        while (msg := await self.recv()) is not None:
            yield msg
