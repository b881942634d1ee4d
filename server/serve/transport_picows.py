"""The `picows` transport: frames parsed and built in Cython, one callback per frame.

An implementation of `server.serve.transports` that costs a fraction of the per-message
Python work of `websockets` (see docs/performance.md). picows calls back per frame, so
the listener here joins fragments into whole messages (capped at `max_size`) and answers
the closing handshake itself; HTTP requests without an Upgrade header get the app's reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from server.serve.transports import (
    BACKLOG,
    App,
    HttpReply,
    bound_kernel_buffer,
    log,
    nothing,
    peer_name,
)


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
        self.on_pong: Callable[[], None] = nothing
        self._raw = t.underlying_transport  # a property call each time otherwise
        self.peer = peer_name(self._raw.get_extra_info("peername"))
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
            bound_kernel_buffer(t.underlying_transport, self.owner.send_buffer)
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
