"""Shared test helpers for end-to-end tests of one server: a WebSocket test client and
plain HTTP GETs on the server's port (tests/servers.py starts the server)."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.core import protocol as P
from server.serve.app import AvatarServer

MAX_FRAMES = 400  # every wait below is bounded by a frame count (and the test timeout)


class Client:
    """A test client: sends frames, decodes replies, tracks handle -> avatar from join/leave."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.names: dict[int, str] = {}
        self.joins: list[P.Join] = []
        self.leaves: list[P.Leave] = []
        self.welcome: P.Welcome | None = None

    @classmethod
    async def open(
        cls, srv: AvatarServer, room: str = "lobby", avatar: str | None = "a", sock=None, **hello
    ):
        """v1 unless `v=2` is given: most tests here count on a state frame every tick."""
        c = cls(await connect(srv.url, max_size=2**22, sock=sock))
        hello.setdefault("v", 1)
        await c.ws.send(P.encode_client(P.Hello(room=room, avatar=avatar, **hello)))
        c.welcome = P.decode_server(await c.ws.recv())
        assert isinstance(c.welcome, P.Welcome), c.welcome
        return c

    async def pos(self, seq: int, t: float, p) -> None:
        await self.ws.send(P.encode_client(P.Pos(seq=seq, t=t, p=tuple(map(float, p)))))

    async def state(self) -> P.State:
        while True:
            msg = P.decode_server(await self.ws.recv())
            if isinstance(msg, P.Join):
                self.joins.append(msg)
                for a, h in zip(msg.avatars, msg.handles, strict=True):
                    assert h not in self.names, "join for a handle still in view"
                    self.names[h] = a
            elif isinstance(msg, P.Leave):
                self.leaves.append(msg)
                for a, h in zip(msg.avatars, msg.handles, strict=True):
                    assert self.names.pop(h) == a
            elif isinstance(msg, P.State):
                assert all(h in self.names for h in msg.handle.tolist()), "handle without join"
                return msg
            else:
                raise AssertionError(f"unexpected {msg}")

    async def state_where(self, pred) -> P.State:
        for _ in range(MAX_FRAMES):
            st = await self.state()
            if pred(st):
                return st
        raise AssertionError("condition not met within the frame budget")

    def visible(self, st: P.State) -> list[str]:
        return [self.names[h] for h in st.handle.tolist()]

    async def close(self) -> None:
        await self.ws.close()


async def expect_refusal(ws) -> tuple[P.Error | None, int]:
    """Read until the server closes; return its error message (if any) and the close code."""
    err = None
    with contextlib.suppress(ConnectionClosed):
        for _ in range(MAX_FRAMES):
            msg = P.decode_server(await ws.recv())
            if isinstance(msg, P.Error):
                err = msg
    await ws.wait_closed()
    return err, ws.close_code


async def fetch(srv: AvatarServer, path: str) -> str:
    def get():
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()

    status, kind, body = await asyncio.to_thread(get)
    assert status == 200
    return body if path != "/" else kind + body


async def get(srv: AvatarServer, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET `path` of an in-process server (in a thread: its loop must keep running):
    status, headers, body. An HTTP error status raises urllib.error.HTTPError."""

    def go():
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=5) as r:
            return r.status, dict(r.headers.items()), r.read()

    return await asyncio.to_thread(go)


async def drain(ws) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass
