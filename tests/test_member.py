"""A worker's cluster membership (server.cluster.member), end to end: a real redis-server
(tests/redis_server.py), real servers on 127.0.0.1 port 0 (in this process, or a
`python -m server` subprocess for a kill -9), real sockets. Waits are bounded by frame
counts or deadlines, never sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client_demo.client import AvatarClient
from server.cluster.directory import RoomDirectory
from server.cluster.member import advertised_url, process_id
from server.core import protocol as P
from server.serve.config import Config
from tests.cluster_helpers import (
    TTL,
    beats,
    cluster,
    get,
    hold,
    metric,
    route,
    spawn_worker,
    states,
    stream,
)


async def test_rooms_are_placed_on_two_workers_and_a_wrong_worker_says_moved(redis_url):
    async with cluster(redis_url) as w0, cluster(redis_url) as w1:
        await w0.cluster.next_beat()  # its view of the workers has w1 now
        a_at, b_at = await route(w0, "a"), await route(w0, "b")
        assert a_at != b_at  # least loaded, spread between heartbeats
        async with (
            AvatarClient(w0.url, "a", "alice", version=1) as a,
            AvatarClient(w0.url, "b", "bob", version=1) as b,
        ):
            served = {a.served_by, b.served_by}
            assert served == {w0.url, w1.url}  # two rooms, two workers
            owner_a = w0 if a.served_by == w0.url else w1
            other = w1 if owner_a is w0 else w0
            assert owner_a.world.player("a", "alice") is not None
            assert await route(other, "a") == owner_a.url  # any worker knows where a room lives
            # a hello at the wrong worker: moved, with the owner's URL, close 4001
            async with connect(other.url) as ws:
                await ws.send(P.encode_client(P.Hello(room="a", avatar="carol")))
                err = P.decode_server(await ws.recv())
                assert isinstance(err, P.Error) and err.code == "moved" and err.url == owner_a.url
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
                assert ws.close_code == 4001
            # AvatarClient given the wrong worker follows it without being told the route
            c = AvatarClient(other.url, "a", "carol", version=1)
            c._route = lambda: asyncio.sleep(0, other.url)  # as if /route were stale
            async with c:
                assert c.served_by == owner_a.url and c.moves == 1
            metrics = await get(other, "/metrics")
            assert b"avatar_hellos_moved_total 2.0" in metrics
            assert b"avatar_directory_available 1.0" in metrics


async def test_a_crowd_joining_a_new_room_makes_one_claim_and_gets_one_route(redis_url):
    async with cluster(redis_url) as w0, cluster(redis_url) as w1:
        await w0.cluster.next_beat()
        assert metric(await get(w0, "/metrics"), "avatar_cluster_workers") == 2
        first = await route(w0, "crowd")
        assert all([await route(w0, "crowd") == first for _ in range(5)])  # sticky until placed
        target = w0 if first == w0.url else w1
        claims, hellos_in, all_in = 0, 0, asyncio.Event()
        real_hello, real_claim = target.cluster.claim, target.cluster.directory.claim

        async def hello_claim(room):
            nonlocal hellos_in
            hellos_in += 1
            if hellos_in == 12:
                all_in.set()
            return await real_hello(room)

        async def directory_claim(room, **kw):  # held until all 12 hellos wait for a claim
            nonlocal claims
            claims += 1
            await asyncio.wait_for(all_in.wait(), 10)
            return await real_claim(room, **kw)

        target.cluster.claim = hello_claim
        target.cluster.directory.claim = directory_claim
        hellos = []
        async with contextlib.AsyncExitStack() as stack:
            for i in range(12):
                ws = await stack.enter_async_context(connect(first))
                await ws.send(P.encode_client(P.Hello(room="crowd", avatar=f"a{i}", v=1)))
                hellos.append(ws)
            replies = [P.decode_server(await ws.recv()) for ws in hellos]
        assert all(isinstance(r, P.Welcome) for r in replies)
        assert claims == 1


async def test_route_on_every_worker_answers_the_owner_within_one_heartbeat(redis_url):
    async with cluster(redis_url) as w0, cluster(redis_url) as w1:
        rooms = [f"held{k}" for k in range(4)]
        async with contextlib.AsyncExitStack() as stack:
            await hold(stack, w0, rooms)
            await beats(w0, w1)
            for w in (w0, w1):
                assert [await route(w, r) for r in rooms] == [w0.url] * 4, w.url
            # a client that looks up through the other worker goes straight to the owner
            async with AvatarClient(w1.url, rooms[0], "late", version=1) as c:
                assert c.served_by == w0.url and c.moves == 0
            assert metric(await get(w0, "/metrics"), "avatar_hellos_moved_total") == 0
            # a room nobody owns still gets the sticky least-loaded suggestion
            fresh = await route(w1, "fresh")
            assert fresh in (w0.url, w1.url) and await route(w1, "fresh") == fresh


async def test_route_treats_a_room_of_a_dead_worker_as_unowned(redis_url):
    async with (
        cluster(redis_url) as w0,
        cluster(redis_url) as w1,
        contextlib.AsyncExitStack() as stack,
    ):
        await hold(stack, w0, ["doomed"])
        await beats(w1)
        assert await route(w1, "doomed") == w0.url
        w0.cluster._task.cancel()  # w0 stops heartbeating and is evicted: dead
        d = RoomDirectory(redis_url)
        try:
            await d.evict(w0.cluster.directory.process_id)
        finally:
            await d.stop()
        await beats(w1)
        assert [pid for pid, _, _ in w1.cluster.peers] == [w1.cluster.directory.process_id]
        assert await route(w1, "doomed") == w1.url  # a suggestion, not the dead owner


async def test_sigterm_drains_a_worker_and_its_clients_move(redis_url):
    async with cluster(redis_url) as w1:
        w0_cm = cluster(redis_url)
        w0 = await w0_cm.__aenter__()
        try:
            c = AvatarClient(w0.url, "hall", "alice", backoff=(0.05, 0.2), version=1)
            c._route = lambda: asyncio.sleep(0, w0.url)  # the room goes to the one we drain
            await c.connect()
            del c._route
            assert c.served_by == w0.url
            stop = asyncio.Event()
            sender = asyncio.create_task(stream(c, stop))
            await states(c, 3)
            t0 = time.monotonic()
            w0.request_shutdown()  # what SIGTERM does
            msgs = []
            for _ in range(400):  # until it is welcomed again, by the other worker
                msg = await c.recv()
                msgs.append(msg)
                if isinstance(msg, P.Welcome):
                    break
            assert not any(isinstance(m, P.Error) for m in msgs)  # a close 4001, no error
            assert w0.cluster.moved_away == 1
            assert c.served_by == w1.url and w1.world.player("hall", "alice") is not None
            await states(c, 3)
            assert time.monotonic() - t0 < 5.0
            stop.set()
            await sender
            await c.close()
        finally:
            await w0_cm.__aexit__(None, None, None)


async def test_redis_lost_while_running_keeps_serving_and_registers_again(redis_server):
    async with cluster(redis_server.url) as w, AvatarClient(w.url, "r", "alice", version=1) as c:
        stop = asyncio.Event()
        sender = asyncio.create_task(stream(c, stop))
        await states(c, 3)
        await asyncio.to_thread(redis_server.stop)
        for _ in range(600):  # the frames are the clock: until a heartbeat failed
            await states(c, 1)
            if not w.cluster.available:
                break
        assert not w.cluster.available and w.cluster.outages == 1
        await states(c, 10)  # still served
        await asyncio.to_thread(redis_server.start)  # empty: nothing of the cluster is left in it
        for _ in range(600):
            await states(c, 1)
            if w.cluster.available:
                break
        assert w.cluster.available
        d = RoomDirectory(redis_server.url)
        try:
            owner = await d.lookup("r")
            assert owner is not None and owner.url == w.url  # registered again
        finally:
            await d.stop()
        stop.set()
        await sender


async def test_kill_9_of_a_worker_its_clients_come_back_on_another(redis_url):
    proc, url = await asyncio.to_thread(spawn_worker, redis_url)
    try:
        async with cluster(redis_url) as live:
            c = AvatarClient(live.url, "doomed", "alice", backoff=(0.05, 0.2), version=1)
            c._route = lambda: asyncio.sleep(0, url)  # first connection: the doomed worker
            await c.connect()
            del c._route  # from now on, route through the live worker
            assert c.served_by == url
            stop = asyncio.Event()
            sender = asyncio.create_task(stream(c, stop))
            await states(c, 3)
            t0 = time.monotonic()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            for _ in range(400):
                if isinstance(await c.recv(), P.Welcome):
                    break
            assert c.served_by == live.url
            await states(c, 3)
            assert time.monotonic() - t0 < 3.0 + TTL  # its room key expires within the TTL
            stop.set()
            await sender
            await c.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_advertised_url():
    assert advertised_url(Config(host="10.1.2.3"), 8702) == "ws://10.1.2.3:8702/"
    assert advertised_url(Config(advertise_url="wss://edge/a0/"), 1) == "wss://edge/a0/"


def test_advertised_url_of_every_interface_is_the_host_name_and_process_id_its_host_port():
    import socket

    assert advertised_url(Config(host="0.0.0.0"), 8701) == f"ws://{socket.gethostname()}:8701/"
    assert process_id(Config(host="10.1.2.3"), 8702, "n1") == "10.1.2.3:8702:n1"
    assert process_id(Config(advertise_url="wss://edge:9443/a0/"), 1, "n2") == "edge:9443:n2"
