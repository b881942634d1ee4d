"""Churn against a live server (both transports): players that connect, say hello and go
(aborted, closed, bye) leave nothing behind. The long version, with figures, is
`bench/hostile.py` (`bench/hostile_churn.py`). No sleeps: waits on server events.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from server.core import protocol as P
from server.serve.app import AvatarServer
from tests.hostile_clients import (
    WAIT,
    Probe,
    expect_refusal,
    no_tracebacks,
    open_player,
    pos,
)
from tests.servers import running

MODES = ("abort", "close", "bye")


async def churn(srv: AvatarServer, n: int, workers: int = 12) -> Counter:
    """`n` players connect, say hello, send a pos and go: a third each aborted (no close
    frame), closed normally, or by `bye`. Returns close codes seen by the bye third."""
    codes: Counter = Counter()
    queue = list(range(n))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            mode = MODES[i % 3]
            ws, _ = await open_player(srv, f"c{i}", room=f"room{i % 7}")
            await ws.send(pos(1, (float(i % 50), 0.0, 0.0)))
            if mode == "abort":
                ws.transport.abort()
            elif mode == "close":
                await ws.close()
            else:
                await ws.send(P.encode_client(P.Bye()))
                err, code = await expect_refusal(ws)
                codes[(err, code)] += 1

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))), 20 * WAIT)
    return codes


def assert_empty(srv: AvatarServer) -> None:
    w = srv.world
    assert (srv.n_connections, len(srv.sessions)) == (0, 0)
    assert (w.n_players, w.n_spectators, w.n_detached) == (0, 0, 0)
    assert w.rooms == {}


async def test_churn_leaves_nothing_behind(transport, caplog):
    caplog.set_level(logging.INFO)
    n = 300
    async with running(transport=transport, resume_grace=0.0) as srv:
        probe = Probe(srv)
        capacity = srv.world.engine.capacity  # as start-up left it (it measures a step)
        codes = await churn(srv, n)
        assert codes == {(None, 1000): n // 3}  # bye: a normal close, no error
        await probe.until(lambda: probe.disconnects == n, "every churned connection gone")
        assert probe.unclean >= n // 3  # the aborted third (picows may count others unclean)
        assert_empty(srv)  # at once: nothing waits for a tick
        await probe.ticks_pass(2)  # leaves reach the engine at the next tick
        assert len(srv.world.engine) == 0 and srv.world.engine.pending == 0
        assert srv.world.engine.capacity == capacity  # slots were reused: no growth
        assert 1 < probe.peak_connections <= 3 * 12  # 12 at a time, and no pile-up
        assert srv.stats.errors == {} and srv.stats.tick_errors == 0
        assert srv.stats.expired == 0
    no_tracebacks(caplog)


async def test_churn_with_grace_keeps_aborted_avatars_until_expiry(caplog):
    caplog.set_level(logging.INFO)
    n, grace = 60, 10.0
    async with running(resume_grace=grace) as srv:
        probe = Probe(srv)
        await churn(srv, n)
        await probe.until(lambda: probe.disconnects == n, "every churned connection gone")
        w = srv.world
        assert srv.n_connections == 0 and len(srv.sessions) == 0
        assert w.n_detached == n // 3 and w.n_players == n // 3  # the aborted third waits
        await probe.ticks_pass(2)
        assert len(w.engine) == n // 3  # detached avatars keep their slots
        assert w.expire(srv.clock() + grace, grace) == n // 3  # as housekeeping will
        assert_empty(srv)
        await probe.ticks_pass(2)
        assert len(w.engine) == 0
        assert srv.stats.errors == {} and srv.stats.tick_errors == 0
    no_tracebacks(caplog)
