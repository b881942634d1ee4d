"""Frames and connection helpers of the hostile-traffic bench: what a client sends, and
reading a connection until the server closes it. Part of `bench/hostile.py`."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import msgpack
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.core import protocol as P

OP_TIMEOUT = 10.0  # seconds: any one connect / read / close in this benchmark


def hello(avatar: str | None, room: str = "lobby") -> bytes:
    """A protocol 1 `hello` (a state every tick); ``avatar`` None: a spectator."""
    return P.encode_client(P.Hello(room=room, avatar=avatar, v=1))  # a state every tick


def pos(seq: int, p: tuple[float, ...], t: float) -> bytes:
    """A valid `pos` frame."""
    return P.encode_client(P.Pos(seq=seq, t=t, p=tuple(map(float, p))))


def raw_pos(**fields: object) -> bytes:
    """A `pos` map packed as given (no checks): `fields` replace or add to a valid one."""
    return msgpack.packb({"type": "pos", "seq": 1, "t": 1.0, "p": [0.0, 0.0], **fields})


def padded(size: int) -> bytes:
    """A well-formed pos of exactly `size` bytes (an ignored key carries the padding)."""
    pad = size - len(raw_pos(pad=b""))
    frame = raw_pos(pad=b"x" * pad)
    if len(frame) > size:
        frame = raw_pos(pad=b"x" * (pad - (len(frame) - size)))
    return frame


async def open_ws(url: str, sock: socket.socket | None = None) -> ClientConnection:
    """Connect (over ``sock`` if given) within OP_TIMEOUT; no client pings."""
    return await asyncio.wait_for(
        connect(url, max_size=2**22, sock=sock, ping_interval=None, close_timeout=2.0),
        OP_TIMEOUT,
    )


async def recv(ws: ClientConnection) -> bytes | str:
    """The next frame within OP_TIMEOUT (TimeoutError otherwise; ConnectionClosed)."""
    return await asyncio.wait_for(ws.recv(), OP_TIMEOUT)


async def refusal(
    ws: ClientConnection, seconds: float = OP_TIMEOUT
) -> tuple[str | None, int | None]:
    """Read until the server closes (at most `seconds`, then abort): (its error code or
    None, the close code; None if it did not close)."""
    err = None
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        async with asyncio.timeout(seconds):
            for _ in range(100_000):
                frame = await ws.recv()
                if isinstance(frame, bytes) and b"error" in frame[:16]:
                    with contextlib.suppress(P.ProtocolError):
                        msg = P.decode_server(frame)
                        if isinstance(msg, P.Error):
                            err = msg.code
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ws.wait_closed(), 1.0)
    if ws.close_code is None:
        ws.transport.abort()
        return err, None
    return err, int(ws.close_code)
