"""The WebSocket client core every Python client here shares: `AvatarClient`
(`client_demo.client`), the load tool's clients (`client_demo.loadtest.clients`, over
picows or websockets) and bench/cluster.py's.

- where a room is served: `route_url` (GET /route on one server), `route` (the first of
  several servers that answers);
- saying hello: `hello_frame`; over websockets `open_ws` (the connection options they all
  use) and `open_hello` (connect, hello out, the first reply in);
- following `moved`: `dial` says hello at a URL and follows `moved` replies (at most
  MAX_MOVES hops; one without a url looks the room up again), over any transport (it is
  given the transport's open_hello); when a worker it was sent to cannot be reached (one
  that was killed) it says hello at the fallback instead, whose claim decides;
- frames: `STATE_PREFIX` (a `state` frame told from its first bytes, without decoding it:
  the load tool's fast path), `is_moved`, `close_code`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from server import cli
from server.core import protocol as P

MAX_MOVES = 4  # `moved` replies followed in a row before giving up (a routing loop)
ROUTE_TIMEOUT = 5.0  # seconds for one GET /route
MAX_FRAME = 2**22  # the largest server frame a client takes (a spectator's state or join)
STATE_PREFIX = b"\xa4type\xa5state"  # bytes 1..11 of every state frame (a fixmap, "type" first)
UNREACHABLE = (OSError, InvalidHandshake, TimeoutError)  # a server that cannot be reached
CLOSED = "closed"  # the code of the Error `open_hello` gives when the server closed during the
# hello (no error the server sends has it)


def route_url(url: str, room: str, timeout: float = ROUTE_TIMEOUT) -> str:
    """The WebSocket URL of the worker serving `room` (or suggested to place it), from
    `GET /route?room=` on the host and port of `url` (blocking: call it in a thread from
    a loop): `url` itself when the answer's url is null (one server) or the server has no
    /route (HTTP 404, an older server).

    Raises OSError: unreachable, timed out, another HTTP status, or not a route reply.
    """
    u = urlsplit(url)
    where = f"{'https' if u.scheme == 'wss' else 'http'}://{u.netloc}/route?room={quote(room)}"
    try:
        with urllib.request.urlopen(where, timeout=timeout) as r:
            got = json.loads(r.read())["url"]
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return url
        raise OSError(f"GET {where}: HTTP {e.code}") from None
    except (KeyError, ValueError, TypeError, http.client.HTTPException) as e:
        raise OSError(f"GET {where}: not a route reply ({type(e).__name__}: {e})") from None
    except urllib.error.URLError as e:  # an OSError already; name the URL
        raise OSError(f"GET {where}: {cli.first_line(e.reason)}") from None
    if got is None:
        return url
    if not isinstance(got, str) or urlsplit(got).scheme not in ("ws", "wss"):
        raise OSError(f"GET {where}: not a route reply (url {got!r})")
    return got


async def route(bases: Sequence[str], room: str, timeout: float = ROUTE_TIMEOUT) -> tuple[str, str]:
    """(the room's URL, the base that answered): `route_url` on each of `bases` in turn (in
    a thread), the first that answers. Raises the last OSError when none does."""
    error: OSError = OSError("no server to ask GET /route")
    for base in bases:
        try:
            return await asyncio.to_thread(route_url, base, room, timeout), base
        except OSError as e:
            error = e
    raise error


def hello_frame(
    room: str,
    avatar: str | None = None,
    *,
    v: int = P.VERSION,
    token: str | None = None,
    resume: str | None = None,
    region: tuple[float, float, float, float] | None = None,
    pos_encoding: str = "msgpack",
) -> bytes:
    """The encoded `hello` (`pos_encoding` "binary": this player will send binary pos)."""
    hello = P.Hello(
        room=room, avatar=avatar, v=v, token=token, resume=resume, region=region,
        pos_encoding=pos_encoding,
    )  # fmt: skip
    return P.encode_client(hello)


def is_moved(msg: Any) -> bool:
    """An `error` `moved`: the room is served elsewhere (its url, or None: look it up again)."""
    return isinstance(msg, P.Error) and msg.code == "moved"


def close_code(e: ConnectionClosed) -> int | None:
    """The close code the server sent (None: it sent no close frame)."""
    return e.rcvd.code if e.rcvd else None


async def open_ws(
    url: str, *, open_timeout: float = 10.0, close_timeout: float = 10.0
) -> ClientConnection:
    """A websockets connection to `url` with the options every client here uses (frames up
    to MAX_FRAME, no compression). Raises ValueError for a URL that is not a WebSocket
    URL, else what `connect` raises (OSError, InvalidHandshake, TimeoutError)."""
    try:
        return await connect(url, max_size=MAX_FRAME, compression=None,
                             open_timeout=open_timeout, close_timeout=close_timeout)  # fmt: skip
    except InvalidURI as e:
        raise ValueError(str(e)) from None


async def open_hello(
    url: str, hello: bytes, *, open_timeout: float = 10.0, close_timeout: float = 10.0
) -> tuple[ClientConnection, Any, int | None]:
    """Connect to `url` (websockets), send `hello` and read the reply: (the connection,
    the decoded reply, the close code). The reply is a `Welcome` (the connection is open,
    the code None), or the refusal, its connection closed: an `Error` (the server's; one
    with code "closed" when the server closed during the hello) or another message. Raises
    what `open_ws` raises, ConnectionClosed when the hello could not be sent, and
    ProtocolError when the reply is not a server message."""
    ws = await open_ws(url, open_timeout=open_timeout, close_timeout=close_timeout)
    await ws.send(hello)
    try:
        reply = P.decode_server(await ws.recv())
    except ConnectionClosed as e:
        return ws, P.Error(CLOSED, e.reason or "closed during hello"), close_code(e)
    if isinstance(reply, P.Welcome):
        return ws, reply, None
    if isinstance(reply, P.Error):  # the server closes after its error: take its close code
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.wait_closed(), close_timeout)
    await ws.close()
    return ws, reply, ws.close_code


OpenHello = Callable[[str], Awaitable[tuple[Any, Any, "int | None"]]]


@dataclass
class Dialed:
    """What `dial` came to: `conn` the welcomed connection (None when refused), `reply`
    the `Welcome` or the last refusal, `url` where the last hello went, `close_code` the
    refusal's, `moves` the `moved` replies followed (with those counted before the call),
    `down` a worker the last hop could not reach (its hello went to the fallback)."""

    conn: Any
    reply: Any
    url: str
    close_code: int | None = None
    moves: int = 0
    down: str | None = None

    @property
    def welcome(self) -> P.Welcome | None:
        return self.reply if isinstance(self.reply, P.Welcome) else None


async def dial(
    open_hello: OpenHello,
    target: str | None,
    lookup: Callable[[], Awaitable[tuple[str, str | None]]] | None = None,
    *,
    fallback: str | None = None,
    moves: int = 0,
    max_moves: int = MAX_MOVES,
    on_move: Callable[[P.Error], None] | None = None,
) -> Dialed:
    """Say hello at `target` (None: where `lookup()` says) and follow the `moved` replies,
    at once, while fewer than `max_moves` were followed (`moves` counts those before).

    `open_hello(url)` -> (connection, reply, close code) over the caller's transport, as
    the module's `open_hello`. `lookup()` -> (URL, its fallback) looks the room up (for a
    `moved` without a url, and a `target` of None). A URL that cannot be reached
    (`UNREACHABLE`) gets its hello sent to its fallback instead, whose claim decides:
    `fallback` for `target` and the URLs `moved` names, the lookup's own for a looked-up
    one (None: none, the error is raised). A `moved` to that very worker is not followed
    (its entry has not expired yet): it is the refusal. `on_move(reply)` is called for each
    `moved` followed, as it is.

    Returns the Welcome or the refusal (see `Dialed`); raises what `open_hello` and
    `lookup` raise (a fallback's error, when it fails too).
    """
    url, behind = target, fallback
    while True:
        if url is None:
            if lookup is None:
                raise ValueError("dial: no URL and no lookup")
            url, behind = await lookup()
        down = None
        try:
            conn, reply, code = await open_hello(url)
        except UNREACHABLE:
            if behind is None or url == behind:
                raise
            down, url = url, behind
            conn, reply, code = await open_hello(url)
        if not is_moved(reply) or moves >= max_moves or (down is not None and reply.url == down):
            welcomed = isinstance(reply, P.Welcome)
            return Dialed(conn if welcomed else None, reply, url, code, moves, down)
        moves += 1
        if on_move is not None:
            on_move(reply)
        url, behind = reply.url, fallback  # None: look the room up again
