"""WebSocket transports behind one small interface: `picows` (the default) and `websockets`.

The app never touches a WebSocket library. A transport accepts connections and hands each
one to the app as a `Connection`, and feeds the app's `Session` for it:

    session = app.open_session(conn)      # on connect (after the WebSocket handshake)
    session.on_message(data)              # each whole message: bytes (binary) or str (text)
    session.on_disconnect(clean)          # once, when gone; clean: a close frame was sent or
                                          # received (else the socket dropped: resumable)

and answers plain HTTP requests on the same port with `app.http(path) -> HttpReply` (and
asks `app.allow_origin(origin)` before a WebSocket handshake). The app drives a
connection only through `Connection`, and none of its calls waits: `send` (whole
messages, written now), `buffered`, `close`, `ping` (whose pong calls `on_pong`),
`is_open`, `latency`, `extra`.

`websockets` is the reference implementation (Sans-I/O protocol + asyncio; the only one
with permessage-deflate); `picows` parses and frames in Cython and calls back per frame,
which costs a fraction of the per-message Python work (see docs/performance.md), so it
serves by default. Both pass the same end-to-end tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

log = logging.getLogger("avatar_stream")

TRANSPORTS = ("websockets", "picows")


class HttpReply(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()  # more response headers (e.g. CORS)


class Connection(Protocol):
    """What the app may do with one client connection. No call blocks or awaits."""

    peer: str

    @property
    def is_open(self) -> bool:
        """True until a close was started (by either side) or the socket is gone."""

    @property
    def latency(self) -> float:
        """Seconds of the last ping round trip (0.0 before the first pong)."""

    def send(self, frames: list[bytes]) -> None:
        """Write each of `frames` as one binary message now (buffered if the socket is full)."""

    def buffered(self) -> int:
        """Bytes written but not yet taken by the socket."""

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (idempotent); the socket goes within `close_timeout`."""

    def ping(self) -> None:
        """Send a ping; its pong updates `latency` and then calls `on_pong()`."""

    on_pong: Callable[[], None]  # set by the app; called on every pong

    def extra(self, name: str):
        """The socket transport's `get_extra_info(name)` ("socket", "peername", ...)."""


class SessionLike(Protocol):
    def on_message(self, data: bytes | str) -> None: ...
    def on_disconnect(self, clean: bool = False) -> None: ...


class App(Protocol):
    """What a transport needs from the server."""

    def open_session(self, conn: Connection) -> SessionLike: ...
    def http(self, path: str) -> HttpReply: ...
    def allow_origin(self, origin: str | None) -> bool: ...


class Transport(Protocol):
    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port. Raises OSError (port in use)."""

    async def stop(self) -> None:
        """Stop accepting, close every connection with 1001, abort what is left after the
        close timeout."""


# Pending connections the kernel queues for accept (capped by net.core.somaxconn): a
# crowd connecting at once (a load test, a reconnect storm after a worker died) must not
# overflow it, or SYNs are dropped and retried 1, 3, 7 ... s later. asyncio's default: 100.
BACKLOG = 4096


def make_transport(
    name: str,
    app: App,
    *,
    max_size: int,
    close_timeout: float,
    compression: bool = False,
    send_buffer: int | None = None,
) -> Transport:
    """The transport called `name` (one of TRANSPORTS). `send_buffer`: each client socket's
    kernel send buffer (None: the system's autotuning). Raises ValueError for another name
    and ImportError when its library is not installed."""
    if name == "websockets":
        t = WebsocketsTransport(app, max_size, close_timeout, compression)
    elif name == "picows":
        if compression:
            raise ValueError("compression is only available with the websockets transport")
        t = PicowsTransport(app, max_size, close_timeout)
    else:
        raise ValueError(f"unknown transport {name!r}; one of {', '.join(TRANSPORTS)}")
    t.send_buffer = send_buffer
    return t


def _nothing() -> None:
    pass


def _bound_kernel_buffer(transport, size: int | None) -> None:
    """Cap the kernel's send buffer for one client (Linux doubles the value), so a client
    that stops reading fills the transport's buffer, where the app sees it and drops
    frames, instead of megabytes of kernel autotuned buffer."""
    sock = transport.get_extra_info("socket")
    if size and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def _peer(address) -> str:
    try:
        host, port = address[:2]
        return f"{host}:{port}"
    except Exception:
        return "?"


# -- websockets -------------------------------------------------------------------------------

try:
    from websockets.protocol import State as _WsState

    _WS_OPEN = _WsState.OPEN
except ImportError:  # pragma: no cover - websockets is a dependency
    _WS_OPEN = None


class WebsocketsConnection:
    """`Connection` over a `websockets` ServerConnection: frames are built by its Sans-I/O
    protocol and written with one `writelines`, without the library's awaits."""

    __slots__ = ("_closing", "_proto", "_spawn", "_transport", "on_pong", "peer", "ws")

    def __init__(self, ws, spawn: Callable) -> None:
        self.ws = ws
        self.on_pong: Callable[[], None] = _nothing
        self.peer = _peer(ws.remote_address)
        self._proto = ws.protocol
        self._transport = ws.transport
        self._closing = False
        self._spawn = spawn

    @property
    def is_open(self) -> bool:
        return not self._closing and self._proto.state is _WS_OPEN

    @property
    def latency(self) -> float:
        return self.ws.latency

    def send(self, frames: list[bytes]) -> None:
        proto = self._proto
        if proto.state is not _WS_OPEN:  # closing: messages already read get no reply
            return
        for frame in frames:
            proto.send_binary(frame)
        chunks = proto.data_to_send()
        if all(chunks):
            self._transport.writelines(chunks)
        else:  # a close is under way: an empty chunk means half-close (EOF)
            for chunk in chunks:
                if chunk:
                    self._transport.write(chunk)
                elif self._transport.can_write_eof():
                    self._transport.write_eof()

    def buffered(self) -> int:
        return self._transport.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        self._spawn(self.ws.close(code, reason))

    def extra(self, name: str):
        return self._transport.get_extra_info(name)

    def ping(self) -> None:
        from websockets.exceptions import ConnectionClosed

        async def probe() -> None:
            with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
                waiter = await self.ws.ping()
                await asyncio.wait_for(waiter, 60.0)
                self.on_pong()

        self._spawn(probe())


class WebsocketsTransport:
    """The `websockets` asyncio server: HTTP by `process_request`, one handler task a client."""

    def __init__(self, app: App, max_size: int, close_timeout: float, compression: bool) -> None:
        self.app = app
        self.max_size = max_size
        self.close_timeout = close_timeout
        self.compression = compression
        self.send_buffer: int | None = None  # kernel send buffer per client socket
        self._server = None
        self._background: set[asyncio.Task] = set()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start(self, host: str, port: int) -> int:
        from websockets.asyncio.server import serve

        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._http,
            compression="deflate" if self.compression else None,
            max_size=self.max_size,
            close_timeout=self.close_timeout,
            ping_interval=None,  # the app pings (idle_timeout) and closes the silent
            server_header="avatar-stream",
            backlog=BACKLOG,
        )
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server = self._server
        server.close(close_connections=True)  # 1001 going away to every client
        try:
            await asyncio.wait_for(server.wait_closed(), self.close_timeout)
        except TimeoutError:
            for conn in list(server.connections):
                conn.transport.abort()
            log.warning("shutdown: aborted connections that did not close in time")

    def _http(self, connection, request):
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        if request.headers.get("Upgrade", "").lower() == "websocket":
            if self.app.allow_origin(request.headers.get("Origin")):
                return None  # a WebSocket handshake, on any path
            reply = HttpReply(403, "text/plain; charset=utf-8", b"origin not allowed\n")
        else:
            reply = self.app.http(request.path)
        status = http.HTTPStatus(reply.status)
        headers = Headers(
            [
                ("Content-Type", reply.content_type),
                ("Content-Length", str(len(reply.body))),
                ("Cache-Control", "no-store"),
                *reply.headers,
            ]
        )
        return Response(status.value, status.phrase, headers, reply.body)

    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        _bound_kernel_buffer(ws.transport, self.send_buffer)
        session = self.app.open_session(WebsocketsConnection(ws, self._spawn))
        try:
            async for data in ws:
                session.on_message(data)
        except ConnectionClosed:
            pass
        finally:  # a close frame either way is a leave; only a dropped socket is resumable
            proto = ws.protocol
            session.on_disconnect(proto.close_rcvd is not None or proto.close_sent is not None)


# -- picows -----------------------------------------------------------------------------------


class PicowsConnection:
    """`Connection` over a picows WSTransport (frames built and written in Cython)."""

    __slots__ = (
        "_binary",
        "_close_timeout",
        "_closing",
        "_loop",
        "_ping_at",
        "_raw",
        "latency",
        "on_pong",
        "peer",
        "t",
    )

    def __init__(self, t, close_timeout: float) -> None:
        self.t = t
        self.on_pong: Callable[[], None] = _nothing
        self._raw = t.underlying_transport  # a property call each time otherwise
        self.peer = _peer(self._raw.get_extra_info("peername"))
        self.latency = 0.0
        self._ping_at = 0.0
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._close_timeout = close_timeout
        from picows import WSMsgType

        self._binary = WSMsgType.BINARY

    @property
    def is_open(self) -> bool:
        return not self._closing and not self.t.is_disconnected

    def send(self, frames: list[bytes]) -> None:
        send, binary = self.t.send, self._binary
        for frame in frames:
            send(binary, frame)

    def buffered(self) -> int:
        return self._raw.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        if not self.t.is_disconnected:
            from picows import WSCloseCode

            self.t.send_close(WSCloseCode(code), reason.encode())
            # The peer answers with its CLOSE (then we disconnect); one that never does is cut.
            self._loop.call_later(self._close_timeout, self.t.disconnect, False)

    def extra(self, name: str):
        return self._raw.get_extra_info(name)

    def ping(self) -> None:
        self._ping_at = time.perf_counter()
        self.t.send_ping()

    def pong(self) -> None:
        if self._ping_at:
            self.latency = time.perf_counter() - self._ping_at
            self._ping_at = 0.0
        self.on_pong()


def _picows_listener_class():
    from picows import WSCloseCode, WSListener, WSMsgType

    binary, text, cont = WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION
    close, pong = WSMsgType.CLOSE, WSMsgType.PONG

    class Listener(WSListener):
        """One connection: whole messages to the session (fragments joined, size-capped)."""

        __slots__ = ("_kind", "_parts", "_size", "conn", "owner", "session")

        def __init__(self, owner: PicowsTransport) -> None:
            self.owner = owner
            self.conn: PicowsConnection | None = None
            self.session = None
            self._parts: list[bytes] = []
            self._kind = binary
            self._size = 0

        def on_ws_connected(self, t) -> None:
            _bound_kernel_buffer(t.underlying_transport, self.owner.send_buffer)
            self.conn = PicowsConnection(t, self.owner.close_timeout)
            self.owner.connections.add(self.conn)
            self.session = self.owner.app.open_session(self.conn)

        def on_ws_frame(self, t, frame) -> None:
            kind = frame.msg_type
            if frame.payload_size > self.owner.max_size:  # picows is closing it (1009)
                self.conn._closing = True
                return
            if kind is binary and frame.fin and not self._parts:
                self.session.on_message(frame.get_payload_as_bytes())
            elif kind is binary or kind is text or kind is cont:
                self._fragment(t, frame, kind)
            elif kind is close:
                conn = self.conn
                if not conn._closing:  # the peer started it: answer, then hang up
                    conn._closing = True
                    code = frame.get_close_code()
                    t.send_close(code if code != WSCloseCode.NO_INFO else WSCloseCode.OK)
                t.disconnect()
            elif kind is pong:
                self.conn.pong()

        def _fragment(self, t, frame, kind) -> None:
            if kind is not cont:
                if self._parts:
                    self._fail(t, WSCloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
                    return
                self._kind = kind
            elif not self._parts:
                self._fail(t, WSCloseCode.PROTOCOL_ERROR, "continuation without a message")
                return
            self._size += frame.payload_size
            if self._size > self.owner.max_size:
                self._fail(t, WSCloseCode.MESSAGE_TOO_BIG, "message too big")
                return
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                data = b"".join(self._parts)
                self._parts, self._size = [], 0
                if self._kind is text:
                    try:
                        self.session.on_message(data.decode("utf-8"))
                    except UnicodeDecodeError:
                        self._fail(t, WSCloseCode.INVALID_TEXT, "invalid UTF-8")
                else:
                    self.session.on_message(data)

        def _fail(self, t, code, reason: str) -> None:
            self._parts, self._size = [], 0
            if not self.conn._closing:
                self.conn._closing = True
                t.send_close(code, reason.encode())
                asyncio.get_running_loop().call_later(0.01, t.disconnect)

        def on_ws_disconnected(self, t) -> None:
            if self.conn is not None:
                self.conn._closing = True
                self.owner.connections.discard(self.conn)
                # a close frame either way is a leave; only a dropped socket is resumable
                self.session.on_disconnect(t.close_handshake is not None)

    return Listener


class PicowsTransport:
    """The picows server. HTTP requests without an Upgrade header get the app's reply."""

    def __init__(self, app: App, max_size: int, close_timeout: float) -> None:
        self.app = app
        self.max_size = max_size
        self.close_timeout = close_timeout
        self.connections: set[PicowsConnection] = set()
        self.send_buffer: int | None = None  # kernel send buffer per client socket
        self._server: asyncio.Server | None = None
        self._listener = _picows_listener_class()

    async def start(self, host: str, port: int) -> int:
        from picows import ws_create_server

        self._server = await ws_create_server(
            self._route,
            host,
            port,
            max_frame_size=self.max_size,
            websocket_handshake_timeout=self.close_timeout * 2.5,
            enable_auto_ping=False,  # the app pings (idle_timeout) and closes the silent
            logger_name=_PicowsLog(logging.getLogger("picows.server"), {}),
            backlog=BACKLOG,
        )
        return self._server.sockets[0].getsockname()[1]

    def _route(self, request):
        from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

        if request.headers.get("Upgrade", "").lower() == "websocket":
            if self.app.allow_origin(request.headers.get("Origin")):
                return self._listener(self)
            reply = HttpReply(403, "text/plain; charset=utf-8", b"origin not allowed\n")
        else:
            reply = self.app.http(request.path.decode("latin-1"))
        headers = {"Content-Type": reply.content_type, "Cache-Control": "no-store"}
        headers.update(reply.headers)
        if reply.status == 200:
            response = WSUpgradeResponse.create_ok_response(reply.body, headers)
        else:
            response = WSUpgradeResponse.create_error_response(reply.status, reply.body, headers)
        return WSUpgradeResponseWithListener(response, None)

    async def stop(self) -> None:
        self._server.close()  # stop accepting
        conns = list(self.connections)
        for conn in conns:
            conn.close(1001, "server shutting down")
        waits = [asyncio.ensure_future(c.t.wait_disconnected()) for c in conns]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.close_timeout)
            if pending:
                for conn in list(self.connections):
                    conn.t.disconnect(False)
                log.warning("shutdown: aborted connections that did not close in time")
                await asyncio.wait(pending, timeout=1.0)
        for w in waits:  # a failed connection's exception is already logged by picows
            if w.done() and not w.cancelled():
                w.exception()
        await self._server.wait_closed()


class _PicowsLog(logging.LoggerAdapter):
    """picows' log, levelled for a public server: a client's malformed or oversized frame
    (any client can send one; it is closed with the right code) is INFO, not ERROR, and
    the per-connection open/close lines are DEBUG."""

    def log(self, level, msg, *args, **kwargs):
        text = msg if isinstance(msg, str) else ""
        if level >= logging.ERROR and text.startswith("WS parser error"):
            level = logging.INFO
        elif level == logging.INFO and text.startswith(("New connection", "Disconnected")):
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)
