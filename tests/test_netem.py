"""LatencyProxy: every byte delayed both ways, order kept, the server sees the latency."""

from __future__ import annotations

import asyncio
import time

import pytest

from client_demo.client import AvatarClient
from client_demo.netem import LatencyProxy
from tests.servers import running
from tests.test_client import next_state


async def echo_server():
    async def handle(r, w):
        while data := await r.read(1024):
            w.write(data)
            await w.drain()
        w.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_bytes_arrive_in_order_after_the_delay_each_way():
    srv = await echo_server()
    port = srv.sockets[0].getsockname()[1]
    async with LatencyProxy("127.0.0.1", port, delay=0.05) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        t0 = time.monotonic()
        for k in range(50):
            w.write(f"{k:03d}".encode())
        await w.drain()
        got = await r.readexactly(150)
        rtt = time.monotonic() - t0
        assert got == b"".join(f"{k:03d}".encode() for k in range(50))
        assert rtt >= 0.1  # at least the two delays, whatever the machine
        w.write_eof()
        assert await r.read() == b""  # the close passes through too
        w.close()
        assert proxy.bytes_up == 150 and proxy.bytes_down == 150
    srv.close()


async def test_server_clock_estimate_sees_the_proxy_latency():
    async with running() as srv, LatencyProxy("127.0.0.1", srv.port, delay=0.05) as proxy:
        c = AvatarClient(f"ws://127.0.0.1:{proxy.port}/", "r", "x", ping_interval=0.05)
        await c.connect()
        await next_state(c, lambda s: c.clock.rtt is not None)
        assert c.clock.rtt >= 0.1
        ws = srv.world.rooms["r"].players["x"].transport
        for _ in range(400):  # the server's own ping has come back through the proxy
            if ws.latency > 0:
                break
            await c.recv()
        assert ws.latency >= 0.1
        for k in range(5):  # samples stamped on the client clock, anchored on the server's
            t = time.monotonic()
            c.send_pos(k, t, (0.1 * k, 0))
            st = await next_state(c, lambda s, k=k: len(s) and s.seq[0] == k)
            anchor_local = c.clock.to_local(st.server_time - st.age[0])
            # the sample's own time, not its arrival 50 ms later
            assert anchor_local == pytest.approx(t, abs=0.02)
        await c.close()


def test_negative_delay_is_refused():
    with pytest.raises(ValueError):
        LatencyProxy("127.0.0.1", 1, delay=-1)
