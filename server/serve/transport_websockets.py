"""The `websockets` transport: its asyncio server, and `Connection` over its Sans-I/O protocol.

The reference implementation of `server.serve.transports` (the only one with
permessage-deflate): HTTP requests are answered from `process_request`, each client gets
one handler task, and `send` frames with the library's Sans-I/O protocol and writes with
one `writelines`, without the library's awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
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
        self.on_pong: Callable[[], None] = nothing
        self.peer = peer_name(ws.remote_address)
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

        bound_kernel_buffer(ws.transport, self.send_buffer)
        session = self.app.open_session(WebsocketsConnection(ws, self._spawn))
        try:
            async for data in ws:
                session.on_message(data)
        except ConnectionClosed:
            pass
        finally:  # a close frame either way is a leave; only a dropped socket is resumable
            proto = ws.protocol
            session.on_disconnect(proto.close_rcvd is not None or proto.close_sent is not None)
