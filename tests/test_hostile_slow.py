"""A client that never reads (both transports): closed as too_slow while the others keep
their frames, with what the server holds for it bounded. The long version, with figures,
is `bench/hostile.py` (`bench/hostile_slow.py`). No sleeps: waits on server events.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from tests.hostile_clients import (
    Probe,
    expect_refusal,
    no_tracebacks,
    open_player,
    pos,
    start_good,
    stop_good,
)
from tests.servers import running


async def test_never_reading_client_is_closed_and_others_keep_their_frames(transport, caplog):
    caplog.set_level(logging.INFO)
    send_buffer, max_dropped = 2048, 5
    config = dict(
        transport=transport, tick_hz=50.0, send_buffer=send_buffer, max_dropped=max_dropped,
        aoi_radius=1000.0, resume_grace=60.0,
    )  # fmt: skip
    async with running(**config) as srv:
        probe = Probe(srv)
        # 48 detached avatars fill the room: every view holds ~52 records, frames ~3 KB
        ghosts = 48
        for i in range(ghosts):
            ws, _ = await open_player(srv, f"ghost{i}")
            await ws.send(pos(1, (float(i), 5.0, 0.0)))
            ws.transport.abort()
        await probe.until(lambda: srv.world.n_detached == ghosts, "ghosts detached")
        stop = asyncio.Event()
        goods, tasks = await start_good(srv, 4, stop)
        await probe.until(
            lambda: all(len(g.ticks) >= 3 and len(g.names) > ghosts for g in goods),
            "good clients see the crowd",
        )
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small window from the start
        sock.connect(("127.0.0.1", srv.port))
        sock.setblocking(False)
        slow, _ = await open_player(srv, "slow", sock=sock)
        member = srv.world.rooms["lobby"].players["slow"]
        member.transport.extra("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await slow.send(pos(1, (2.5, 1.0, 0.0)))
        slow.transport.pause_reading()  # never reads from now on
        before = srv.stats.dropped
        await probe.until(lambda: srv.stats.errors.get("too_slow") == 1, "too_slow")
        assert "slow" not in srv.world.rooms["lobby"].players and member.session is None
        assert srv.stats.dropped - before >= max_dropped
        await probe.ticks_pass(10)  # the others stream on after it went
        assert probe.max_tick_frames > send_buffer  # one frame is over the buffer limit
        # what the server holds for any one connection: the buffer limit + one tick's frames
        # (+ WebSocket headers)
        assert probe.max_buffered <= send_buffer + probe.max_tick_frames + 64
        await stop_good(goods, tasks, stop)
        for g in goods:
            assert g.fraction() >= 0.95, (g.welcome.avatar, g.fraction())
        assert srv.stats.errors == {"too_slow": 1}  # the readers were never too slow
        slow.transport.resume_reading()
        err, code = await expect_refusal(slow)
        assert (err.code if err else None, code) == ("too_slow", 1008)
        await probe.until(lambda: srv.n_connections == 0, "the slow connection gone")
        assert srv.stats.tick_errors == 0
    no_tracebacks(caplog)
