"""AvatarClient against a real server on 127.0.0.1 port 0."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from client_demo.client import AvatarClient, Refused
from server.core import protocol as P
from tests.servers import running


async def next_state(c: AvatarClient, pred, budget: int = 400) -> P.State:
    for _ in range(budget):
        msg = await c.recv()
        if isinstance(msg, P.State) and pred(msg):
            return msg
    raise AssertionError("no matching state within the frame budget")


async def test_stream_and_receive_own_and_others_predictions():
    async with (
        running() as srv,
        AvatarClient(srv.url, "r", "alice", ping_interval=0.05) as a,
        AvatarClient(srv.url, "r", "bob") as b,
    ):
        assert a.welcome.avatar == "alice" and len(a.welcome.horizons) == 10
        t0 = time.monotonic()
        for k in range(3):
            a.send_pos(k, t0 + 0.1 * k, (0.1 * k, 0.0, 0.0))
            b.send_pos(k, t0 + 0.1 * k, (2.0, 0.1 * k))
        st = await next_state(a, lambda s: len(s) == 2 and s.seq.max() == 2)
        assert sorted(a.names[h] for h in st.handle.tolist()) == ["alice", "bob"]
        assert a.names[a.welcome.handle] == "alice"
        await next_state(a, lambda s: a.clock.rtt is not None)  # a pong came back
        assert a.clock.ready and abs(a.clock.offset - (a.welcome.server_time - t0)) < 1.0
        assert a.frames_out >= 4 and a.bytes_in > 0


async def test_refused_replaced_and_resumed_after_a_drop():
    async with (
        running(max_room_avatars=1) as srv,
        AvatarClient(srv.url, "r", "x", backoff=(0.01, 0.05)) as c,
    ):
        with pytest.raises(Refused) as e:  # another avatar: the room is full
            await AvatarClient(srv.url, "r", "y", reconnect=False).connect()
        assert e.value.code == "room_full" and e.value.close_code == 1013
        c.send_pos(0, 1.0, (0, 0))
        await next_state(c, lambda s: len(s) == 1)
        c.ws.transport.abort()  # the network drops the connection (no close frame)
        for _ in range(400):
            msg = await c.recv()
            if isinstance(msg, P.Welcome):
                break
        assert isinstance(msg, P.Welcome) and c.connects == 2
        assert srv.stats.resumed == 1  # it sent its resume token: same avatar back
        c.send_pos(1, 2.0, (1, 0))
        st = await next_state(c, lambda s: len(s) == 1)
        assert np.allclose(st.pos[0][:2], (1, 0))
        # the same avatar from elsewhere takes over; the first client stops, no fight
        async with AvatarClient(srv.url, "r", "x", reconnect=False) as d:
            errors = []
            for _ in range(400):
                msg = await c.recv()
                if msg is None:
                    break
                if isinstance(msg, P.Error):
                    errors.append(msg.code)
            assert errors == ["replaced"] and not c.reconnect and c.connects == 2
            d.send_pos(0, 5.0, (3, 0))
            st = await next_state(d, lambda s: len(s) == 1)
            assert np.allclose(st.pos[0][:2], (3, 0))


async def test_unreachable_server_raises_after_attempts():
    with pytest.raises(OSError):
        await AvatarClient(
            "ws://127.0.0.1:1/", "r", "x", backoff=(0.01, 0.02), max_attempts=2
        ).connect()


async def test_client_asks_any_worker_where_its_room_is_and_connects_there():
    async with running() as home:
        seen: list[str] = []

        def route(path: str):  # what a cluster worker answers (server.cluster): home serves it
            seen.append(path)
            return 200, "application/json", json.dumps({"url": home.url}).encode()

        async with (
            running(setup=lambda s: s.add_route("/route", route)) as entry,
            AvatarClient(entry.url, "big hall", "alice") as c,
        ):
            assert c.served_by == home.url and c.welcome.room == "big hall"
            assert seen == ["/route?room=big%20hall"]
            assert home.world.player("big hall", "alice") is not None
            assert entry.world.player("big hall", "alice") is None
        # a server without /route (404) is used as it is
        async with AvatarClient(home.url, "r", "bob") as c:
            assert c.served_by == home.url


async def test_client_sent_to_a_worker_that_is_down_says_hello_at_the_one_it_asked():
    from tests.redis_server import free_port

    gone = f"ws://127.0.0.1:{free_port()}/"  # nothing listens: a killed worker's stale route

    def route(path: str):
        return 200, "application/json", json.dumps({"url": gone}).encode()

    async with (
        running(setup=lambda s: s.add_route("/route", route)) as entry,
        AvatarClient(entry.url, "r", "carol", max_attempts=1) as c,  # one try, no retry
    ):
        assert c.served_by == entry.url and entry.world.player("r", "carol") is not None
