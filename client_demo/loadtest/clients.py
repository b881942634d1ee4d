"""The load clients: one per simulated player, each a connection (picows or websockets) that
says hello through the shared client core (`client_demo.wsclient.dial`: to its room's
worker with --route, following `moved`), then counts every frame it gets, sized, and, on
every --sample-every-th client, decodes the `state` frames for the end-to-end latency and
the records in view. Kept lean for thousands of them in one process: a frame that is not
decoded costs a slice compare and a few additions (`on_frame`), the picows client counts in
its frame callback (no task per read), and the worker sends for every client through
`Conn.send` without awaiting (`client_demo.loadtest.worker`)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import numpy as np
from websockets.exceptions import ConnectionClosed

from client_demo import wsclient
from client_demo.loadtest.job import WorkerJob, room_name
from client_demo.wsclient import MAX_FRAME, MAX_MOVES, STATE_PREFIX
from server.core import protocol as P

CLIENTS = ("picows", "websockets")  # --client: the generator's WebSocket library
CLOSE_TIMEOUT = 5.0  # seconds a worker waits for its clients' closing handshakes


@dataclass
class ClientStats:
    connected: bool = False
    error: str | None = None
    close_code: int | None = None
    sent: int = 0
    bytes_out: int = 0
    frames: int = 0
    bytes_in: int = 0
    states_in_window: int = 0
    frames_in_window: int = 0  # every frame received in the window (state, join, leave...)
    bytes_in_window: int = 0
    window_s: float = 0.0
    expected_hz: float = 0.0
    connected_at: float | None = None  # loop time of the welcome
    ended_at: float | None = None  # loop time the server closed or dropped it
    records: int = 0  # avatars in the decoded state frames (sampled clients)
    record_bytes: int = 0  # bytes of those frames
    records_in_window: int = 0
    latencies: list[float] = field(default_factory=list)
    moves: int = 0  # `moved` errors followed (--route)


class Conn:
    """One load client: its socket, its place in the motion table and its counters."""

    __slots__ = ("dx", "dy", "gi", "handle", "sample", "send", "sent_at", "stats", "track", "ws")

    def __init__(self, gi: int, track: int, dx: float, dy: float, sample: bool) -> None:
        self.gi, self.track, self.dx, self.dy, self.sample = gi, track, dx, dy, sample
        self.ws = None  # the library's connection object while open
        self.send = None  # frame -> None, no await; None when not open
        self.handle: int | None = None
        self.sent_at: dict[int, float] = {}
        self.stats = ClientStats()


def _hello(job: WorkerJob, c: Conn) -> bytes:
    return wsclient.hello_frame(
        room_name(c.gi, job.rooms), f"c{c.gi:06d}", v=job.protocol, pos_encoding=job.pos_encoding
    )


def _first_url(job: WorkerJob, c: Conn) -> str:
    """Where this client connects first: its room's worker (--route), else --url."""
    if job.room_urls is None:
        return job.url
    return job.room_urls.get(room_name(c.gi, job.rooms), job.url)


async def _dial(job: WorkerJob, c: Conn, open_hello) -> wsclient.Dialed | None:
    """Say hello over `open_hello` (`wsclient.dial`): at the room's worker, following
    `moved` with --route (at most MAX_MOVES hops; one without a url looks the room up
    again on --url), never without. The dial when welcomed; None when refused or not
    reached, its error (and close code) in the client's stats."""

    async def lookup() -> tuple[str, None]:
        try:
            room = room_name(c.gi, job.rooms)
            return await asyncio.to_thread(wsclient.route_url, job.url, room), None
        except OSError:
            c.stats.error = "moved_route_failed"
            raise

    def moved(reply: P.Error) -> None:
        c.stats.moves += 1

    routed = job.room_urls is not None
    try:
        got = await wsclient.dial(open_hello, _first_url(job, c), lookup, moves=c.stats.moves,
                                  max_moves=MAX_MOVES if routed else 0, on_move=moved)  # fmt: skip
    except ConnectionClosed as e:  # websockets: the hello could not be sent
        c.stats.error, c.stats.close_code = "closed", wsclient.close_code(e)
        return None
    except Exception as e:  # unreachable, handshake refused, a frame that is not a server message
        if c.stats.error is None:  # else the look-up's: moved_route_failed
            c.stats.error = type(e).__name__
        return None
    if got.welcome is None:
        reply = got.reply  # an error (its code), a decode failure (picows: its name), other
        c.stats.error = reply.code if isinstance(reply, P.Error) else (
            reply if isinstance(reply, str) else "no_welcome"
        )  # fmt: skip
        c.stats.close_code = got.close_code
        return None
    return got


def _ended(c: Conn, error: str, code: int | None, now: float) -> None:
    """The server closed or dropped this client (not us at the end)."""
    if c.stats.error is None:
        c.stats.error, c.stats.close_code = error, code
    if c.stats.ended_at is None:
        c.stats.ended_at = now
    c.send = None


def _welcomed(c: Conn, welcome: P.Welcome, now: float) -> None:
    c.handle = welcome.handle
    c.stats.connected, c.stats.expected_hz = True, welcome.tick_hz
    c.stats.connected_at = now


async def connect_websockets(job: WorkerJob, c: Conn, t_conn: float, window) -> None:
    """One client over websockets: connect at loop time `t_conn`, then count what comes in
    until the server or `close_all` closes it."""
    from websockets.asyncio.connection import broadcast

    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t_conn - loop.time()))
    hello = _hello(job, c)

    async def open_hello(url: str):
        return await wsclient.open_hello(url, hello, open_timeout=30, close_timeout=2)

    got = await _dial(job, c, open_hello)
    if got is None:
        return
    ws = c.ws = got.conn
    c.send = lambda frame: broadcast((ws,), frame)  # framed and written now, no await
    _welcomed(c, got.welcome, loop.time())
    try:
        async for data in ws:
            on_frame(c, data, loop.time(), window)
        if c.ws is not None:  # the server closed it cleanly, not us at the end
            _ended(c, "closed", ws.close_code, loop.time())
    except ConnectionClosed as e:
        if c.ws is not None:  # not closed by us at the end
            _ended(c, "closed", wsclient.close_code(e), loop.time())
    finally:
        c.send = None


def on_frame(c: Conn, data, now: float, window) -> None:
    """Count one received frame; a sampled client decodes its state frames for latency."""
    stats = c.stats
    stats.frames += 1
    stats.bytes_in += len(data)
    in_window = window[0] <= now < window[1]
    if in_window:
        stats.frames_in_window += 1
        stats.bytes_in_window += len(data)
    if data[1:12] != STATE_PREFIX:
        return
    if in_window:
        stats.states_in_window += 1
    if not c.sample:
        return
    st = P.decode_server(bytes(data))
    stats.records += len(st)
    stats.record_bytes += len(data) if len(st) else 0
    if in_window:
        stats.records_in_window += len(st)
    own = np.flatnonzero(st.handle == c.handle)
    if len(own):
        seq = int(st.seq[own[0]])
        t_sent = c.sent_at.pop(seq, None)
        for old in [k for k in c.sent_at if k < seq]:  # superseded: never answered alone
            del c.sent_at[old]
        if t_sent is not None and window[0] <= t_sent < window[1]:
            stats.latencies.append(now - t_sent)


async def connect_picows(job: WorkerJob, c: Conn, t_conn: float, window) -> None:
    """The same client over picows: each frame is counted in a callback, no task per read."""
    from picows import WSListener, WSMsgType, ws_connect

    loop = asyncio.get_running_loop()

    class Listener(WSListener):
        """One connection attempt: the first frame answers the hello; only an attempt that
        was welcomed (`ok`) counts frames and ends the client (a refused one, e.g. `moved`,
        leaves it alone, however late its close arrives)."""

        def __init__(self) -> None:
            super().__init__()
            self.welcomed = loop.create_future()
            self.ok = False
            self.close_code: int | None = None

        def on_ws_frame(self, t, frame) -> None:
            kind = frame.msg_type
            if kind is WSMsgType.BINARY:
                data = frame.get_payload_as_memoryview()
                if self.ok:
                    on_frame(c, data, loop.time(), window)
                elif not self.welcomed.done():
                    try:
                        reply = P.decode_server(bytes(data))
                    except Exception as e:  # not a server message: no welcome
                        reply = type(e).__name__
                    self.ok = isinstance(reply, P.Welcome)
                    self.welcomed.set_result(reply)
            elif kind is WSMsgType.CLOSE:
                code = int(frame.get_close_code().value)
                if self.ok:
                    if c.ws is not None:  # not closed by us at the end
                        _ended(c, "closed", code, loop.time())
                    c.send = None
                else:
                    self.close_code = code
                    if not self.welcomed.done():
                        self.welcomed.set_result(P.Error(wsclient.CLOSED, "closed during hello"))
                t.send_close()
                t.disconnect()

        def on_ws_disconnected(self, t) -> None:
            if self.ok:
                if c.ws is not None and c.stats.connected:  # dropped without a close frame
                    _ended(c, "disconnected", None, loop.time())
                c.send = None
            if not self.welcomed.done():
                self.welcomed.set_result(None)

    hello = _hello(job, c)

    async def open_hello(url: str):
        t, listener = await ws_connect(Listener, url, max_frame_size=MAX_FRAME,
                                       websocket_handshake_timeout=30)  # fmt: skip
        c.ws = t
        t.send(WSMsgType.BINARY, hello)
        reply = await listener.welcomed
        if not isinstance(reply, P.Welcome):
            c.ws = None
            t.disconnect()
        return t, reply, listener.close_code

    await asyncio.sleep(max(0.0, t_conn - loop.time()))
    got = await _dial(job, c, open_hello)
    if got is None:
        return
    t = got.conn
    c.send = lambda frame: t.send(WSMsgType.BINARY, frame)
    _welcomed(c, got.welcome, loop.time())
    await t.wait_disconnected()


async def close_all(conns: list[Conn], client: str, timeout: float = CLOSE_TIMEOUT) -> None:
    """Close every open client (a close handshake, at most `timeout` s, then dropped)."""
    open_ws = [c.ws for c in conns if c.ws is not None]
    for c in conns:
        c.ws = None  # from here on a close is ours
        c.send = None
    if client == "picows":
        for t in open_ws:
            with contextlib.suppress(Exception):
                t.send_close()
        waits = [asyncio.ensure_future(t.wait_disconnected()) for t in open_ws]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
        for t, w in zip(open_ws, waits, strict=True):
            if not w.done():
                w.cancel()
                with contextlib.suppress(Exception):
                    t.disconnect()
        await asyncio.gather(*waits, return_exceptions=True)
    else:
        closes = [asyncio.ensure_future(ws.close()) for ws in open_ws]
        if closes:
            _, late = await asyncio.wait(closes, timeout=timeout)
            for w in late:
                w.cancel()
        await asyncio.gather(*closes, return_exceptions=True)
