"""The interface between the app and its WebSocket transports, and what they share.

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
serves by default. Both pass the same end-to-end tests. They live in
`server.serve.transport_websockets` and `server.serve.transport_picows`;
`server.serve.transport_factory.make_transport` builds the one a config names.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from typing import NamedTuple, Protocol

log = logging.getLogger("avatar_stream")

TRANSPORTS = ("websockets", "picows")


class HttpReply(NamedTuple):
    """The app's answer to a plain HTTP request (`App.http`), written by the transport."""

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


def nothing() -> None:
    """The `on_pong` of a connection the app has not given one."""


def bound_kernel_buffer(transport, size: int | None) -> None:
    """Cap the kernel's send buffer for one client (Linux doubles the value), so a client
    that stops reading fills the transport's buffer, where the app sees it and drops
    frames, instead of megabytes of kernel autotuned buffer."""
    sock = transport.get_extra_info("socket")
    if size and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def peer_name(address) -> str:
    """``host:port`` of a socket address (``?`` when it is not one)."""
    try:
        host, port = address[:2]
        return f"{host}:{port}"
    except Exception:
        return "?"
