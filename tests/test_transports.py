"""The transports behind the app: both libraries, the same behaviour at the edges."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server import protocol as P
from server.config import Config
from server.transports import TRANSPORTS, make_transport
from tests.servers import running


def test_unknown_transport_and_compression_without_websockets_are_refused():
    with pytest.raises(ValueError):
        make_transport("zmq", None, max_size=1024, close_timeout=1.0)
    with pytest.raises(ValueError):
        make_transport("picows", None, max_size=1024, close_timeout=1.0, compression=True)
    with pytest.raises(ValueError):
        Config(transport="picows", compression=True)
    assert Config(transport="picows").transport == "picows"


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


async def test_picows_parallel_and_short_writes_keep_every_stream_intact(monkeypatch):
    """Two writer threads from the first client on, and server sockets with a tiny send
    buffer so writes come up short: every client still decodes every frame, in order."""
    import asyncio
    import socket

    import server.transports as T

    monkeypatch.setattr(T, "PARALLEL_WRITES_FROM", 1)
    short = []
    write_all = T._write_all

    def counting(items):
        rest = write_all(items)
        short.extend(rest)
        return rest

    monkeypatch.setattr(T, "_write_all", counting)
    async with running(transport="picows", aoi_radius=1000.0) as srv:
        clients = []
        for i in range(6):
            ws = await connect(srv.url, max_size=2**22)
            await ws.send(P.encode_client(P.Hello(room="r", avatar=f"a{i}")))
            assert isinstance(P.decode_server(await ws.recv()), P.Welcome)
            await ws.send(P.encode_client(P.Pos(seq=0, t=1.0, p=(i * 0.5, 0.0, 0.0))))
            clients.append(ws)
        for m in srv.world.rooms["r"].players.values():  # writes larger than the buffer
            m.transport.extra("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)
        # 70 more avatars without sockets make every state frame ~3.9 KB (64 records)
        for i in range(70):
            extra = srv.world.admit(P.Hello(room="r", avatar=f"x{i}"), 0.0)
            srv.world.receive_pos(extra, P.Pos(seq=0, t=1.0, p=(i * 0.1, 1.0, 0.0)), 1.0)

        async def read(ws) -> list[int]:
            ticks = []
            while len(ticks) < 30:  # bounded by the count (and the test's timeout)
                msg = P.decode_server(await ws.recv())  # a torn frame would not decode
                if isinstance(msg, P.State):
                    assert len(msg) <= 64  # the view cap
                    ticks.append(msg.tick)
            return ticks

        results = await asyncio.gather(*(read(ws) for ws in clients))
        for ticks in results:
            assert ticks == sorted(set(ticks))  # no frame twice, none out of order
        sizes = [
            m.transport.buffered() for m in srv.world.rooms["r"].players.values() if m.transport
        ]
        assert len(sizes) == 6
        for ws in clients:
            await ws.close()
