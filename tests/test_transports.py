"""The transports behind the app: both libraries, the same behaviour at the edges."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.core import protocol as P
from server.serve.transports import TRANSPORTS
from tests.servers import running


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_fragmented_message_is_one_message(transport):
    async with running(transport=transport) as srv, connect(srv.url) as ws:
        hello = P.encode_client(P.Hello(room="r", avatar="a"))
        await ws.send([hello[:5], hello[5:9], hello[9:]])  # three WebSocket frames
        assert isinstance(P.decode_server(await ws.recv()), P.Welcome)
        await ws.send(P.encode_client(P.Pos(seq=1, t=1.0, p=(1.0, 2.0, 0.0))))
        for _ in range(100):  # bounded: the first state with our own record
            msg = P.decode_server(await ws.recv())
            if isinstance(msg, P.State) and len(msg):
                break
        assert msg.pos[0].tolist() == [1.0, 2.0, 0.0]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_fragments_over_the_hard_limit_close_1009(transport):
    async with (
        running(
            transport=transport, max_frame=1024, max_hello_frame=512, max_frame_hard=2048
        ) as srv,
        connect(srv.url, max_size=2**20) as ws,
    ):
        await ws.send([b"\x00" * 1500, b"\x00" * 1500])  # 3000 bytes in two frames
        with pytest.raises(ConnectionClosed) as e:
            for _ in range(10):
                await ws.recv()
        assert e.value.rcvd is not None and e.value.rcvd.code == 1009


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_http_without_upgrade_gets_the_apps_reply(transport):
    import asyncio

    async with running(transport=transport) as srv:
        base = f"http://127.0.0.1:{srv.port}"

        def get(path: str) -> tuple[int, str, bytes]:
            try:
                with urllib.request.urlopen(base + path, timeout=5) as r:
                    return r.status, r.headers["Content-Type"], r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers["Content-Type"], e.read()

        status, kind, body = await asyncio.to_thread(get, "/healthz")
        assert (status, body) == (200, b"ok\n") and kind.startswith("text/plain")
        status, _, _ = await asyncio.to_thread(get, "/nope")
        assert status == 404
        status, kind, body = await asyncio.to_thread(get, "/metrics")
        assert status == 200 and b"avatar_ticks_total" in body
