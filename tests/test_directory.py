"""server/cluster/directory.py against a real redis-server (tests/redis_server.py).

Each test gets its own empty Redis on a free loopback port. Where expiry must be seen,
TTLs are short (0.5 s) and the test polls Redis with a bounded deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from server.cluster.directory import (
    DirectoryError,
    DirectoryUnavailable,
    Heartbeat,
    NoProcessAvailable,
    Owner,
    RoomDirectory,
)
from tests.redis_server import free_port

URL_A = "ws://127.0.0.1:8700/"
URL_B = "ws://127.0.0.1:8701/"


@pytest.fixture
async def make(redis_url):
    """make(**kw) -> RoomDirectory on the test's Redis; all are stopped at the end."""
    made: list[RoomDirectory] = []

    def make_(**kw) -> RoomDirectory:
        d = RoomDirectory(redis_url, **kw)
        made.append(d)
        return d

    yield make_
    for d in made:
        await d.stop()


@pytest.fixture
async def raw(redis_url):
    """A plain client to look at (and damage) the keys directly."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


async def eventually(pred: Callable[[], Awaitable[bool]], timeout: float = 3.0) -> None:
    """Poll `pred` until it is true; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.02)


async def two(make, **kw) -> tuple[RoomDirectory, RoomDirectory]:
    a, b = make(**kw), make(**kw)
    await a.start(URL_A, 100)
    await b.start(URL_B, 100)
    return a, b


async def test_start_registers_the_process(make, raw):
    a = make()
    assert not a.available
    await a.start(URL_A, 100)
    assert a.available and a.errors == 0
    host, port, nonce = a.process_id.split(":")
    assert (host, port) == ("127.0.0.1", "8700") and nonce
    info = await raw.hgetall(f"avatar:process:{a.process_id}")
    assert info["url"] == URL_A and info["capacity"] == "100" and info["draining"] == "0"
    assert float(info["load"]) == 0 and info["rooms"] == "0"
    assert 0 < await raw.pttl(f"avatar:process:{a.process_id}") <= 5000
    assert await raw.zscore("avatar:processes", a.process_id) == 0
    # a restarted process on the same host:port is a different process
    again = make()
    await again.start(URL_A, 100)
    assert again.process_id != a.process_id
    assert await raw.zcard("avatar:processes") == 2
    with pytest.raises(RuntimeError):
        await a.start(URL_A, 100)


async def test_placement_spreads_rooms_then_follows_load(make):
    a, b = await two(make)
    router = make()  # a lookup-only service: never started, owns nothing
    first, second = await router.claim("r1"), await router.claim("r2")
    assert first.placed and second.placed
    assert {first.process_id, second.process_id} == {a.process_id, b.process_id}
    assert {first.url, second.url} == {URL_A, URL_B}
    again = await router.claim("r1")
    assert again == first and not again.placed

    await a.heartbeat(0.7, [], 70)
    await b.heartbeat(0.2, [], 20)
    assert (await router.claim("r3")).process_id == b.process_id
    await a.heartbeat(0.1, [], 10)
    await b.heartbeat(0.6, [], 60)
    assert (await router.claim("r4")).process_id == a.process_id


async def test_concurrent_claims_agree_on_one_owner(make):
    a, b = await two(make)
    # 50 claims of one room from each instance at once, half of them trying to take it
    # for themselves (here=True), plus 10 other rooms claimed 10 times each at once
    claims = [d.claim("lobby", here=i % 2 == 0) for i in range(50) for d in (a, b)]
    claims += [d.claim(f"room{k}", here=True) for k in range(10) for _ in range(5) for d in (a, b)]
    owners: list[Owner] = await asyncio.gather(*claims)
    by_room: dict[str, list[Owner]] = {}
    rooms = ["lobby"] * 100 + [f"room{k}" for k in range(10) for _ in range(10)]
    for room, owner in zip(rooms, owners, strict=True):
        by_room.setdefault(room, []).append(owner)
    for room, got in by_room.items():
        assert len(set(got)) == 1, room
        assert sum(o.placed for o in got) == 1, room
        assert await a.lookup(room) == got[0]
    assert a.errors == b.errors == 0


async def test_lookup_never_places(make, raw):
    a = make()
    await a.start(URL_A, 100)
    router = make()
    assert await router.lookup("lobby") is None
    assert await raw.exists("avatar:room:lobby") == 0
    owner = await a.claim("lobby", here=True)
    assert owner == Owner(a.process_id, URL_A) and owner.placed
    assert await router.lookup("lobby") == owner
    assert "lobby" in a.owned


async def test_rooms_lists_every_placed_room_with_a_live_owner(make, raw):
    a, b = await two(make)
    router = make()  # never started: reads the map too
    assert await router.rooms() == {}
    await a.claim("r1", here=True)
    await b.claim("r2", here=True)
    await b.claim("r3", here=True)
    assert (await router.claim("r4")).placed
    got = await router.rooms()
    assert set(got) == {"r1", "r2", "r3", "r4"}
    assert got["r1"] == Owner(a.process_id, URL_A) and got["r2"] == Owner(b.process_id, URL_B)
    assert await a.rooms() == got  # the same from every process
    assert await a.release("r1")
    assert "r1" not in await router.rooms()
    # an index entry whose room key is gone, and a room key the index lacks (a process of
    # an older version): the first is dropped, the second re-indexed by its owner's beat
    await raw.delete("avatar:room:r2")
    await raw.hdel("avatar:rooms", "r3")
    assert set(await router.rooms()) == {"r4"}
    assert await raw.hexists("avatar:rooms", "r2") == 0
    await b.heartbeat(0.0, ["r2", "r3"], 2)
    assert {r: o.process_id for r, o in (await router.rooms()).items()} == {
        "r2": b.process_id,
        "r3": b.process_id,
        "r4": got["r4"].process_id,
    }
    # an evicted (dead) owner's rooms are unowned, and drop out of the index
    await router.evict(b.process_id)
    left = await router.rooms()
    assert all(o.process_id == a.process_id for o in left.values())
    assert set(await raw.hkeys("avatar:rooms")) == set(left)
    # stop releases the rooms and their entries
    assert await a.stop()
    assert await router.rooms() == {} and await raw.hlen("avatar:rooms") == 0


async def test_room_of_a_dead_process_is_placed_again(make, raw):
    a = make(ttl=0.5)  # stops heartbeating: dies
    b = make(ttl=5.0)
    await a.start(URL_A, 100)
    await b.start(URL_B, 100)
    await b.heartbeat(0.5, [], 50)  # a is the least loaded, so placement looks at it first
    assert (await a.claim("lobby", here=True)).process_id == a.process_id
    assert (await b.lookup("lobby")).process_id == a.process_id

    async def a_gone() -> bool:
        return not await raw.exists(f"avatar:process:{a.process_id}")

    await eventually(a_gone)
    assert await b.lookup("lobby") is None
    owner = await b.claim("lobby")
    assert owner.process_id == b.process_id and owner.placed
    assert await raw.zrange("avatar:processes", 0, -1) == [b.process_id]  # a was pruned


async def test_stale_room_key_of_a_dead_owner_is_replaced_at_once(make, raw):
    # the claim script decides on the owner's process key; a stale room key whose owner is
    # dead (here: deleted process key) is replaced at once, without waiting for its TTL
    a, b = await two(make)
    await a.claim("lobby", here=True)
    await raw.delete(f"avatar:process:{a.process_id}")
    assert await raw.pttl("avatar:room:lobby") > 0  # the stale room key is still there
    owner = await b.claim("lobby", here=True)
    assert owner.process_id == b.process_id and owner.placed


async def test_release_only_by_the_owner(make, raw):
    a, b = await two(make)
    await a.claim("lobby", here=True)
    assert not await b.release("lobby")
    assert (await b.lookup("lobby")).process_id == a.process_id
    assert await a.release("lobby")
    assert await raw.exists("avatar:room:lobby") == 0
    assert "lobby" not in a.owned
    assert not await a.release("lobby")  # already gone


async def test_drain_keeps_own_rooms_and_takes_no_new_ones(make, raw):
    a, b = await two(make)
    await a.claim("mine", here=True)
    await a.heartbeat(0.0, ["mine"], 1)
    await b.heartbeat(0.9, [], 90)  # a is far less loaded, yet gets nothing new
    await a.drain()
    assert a.draining
    assert await raw.zscore("avatar:processes", a.process_id) is None
    for k in range(5):
        assert (await a.claim(f"new{k}")).process_id == b.process_id
    assert (await a.claim("wanted", here=True)).process_id == b.process_id
    beat = await a.heartbeat(0.0, ["mine"], 1)  # does not re-enter the placement set
    assert beat == Heartbeat(False, frozenset(), frozenset())
    assert await raw.zscore("avatar:processes", a.process_id) is None
    assert (await b.claim("mine")).process_id == a.process_id
    assert (await b.lookup("mine")).process_id == a.process_id


async def test_overloaded_or_no_process_gets_no_room(make):
    a, b = await two(make)
    await a.heartbeat(0.0, [], 0, tick_p99_ms=40.0)  # least loaded but too slow
    await b.heartbeat(0.5, [], 50, tick_p99_ms=10.0)
    assert (await a.claim("r1")).process_id == b.process_id
    await b.heartbeat(0.5, [], 50, tick_p99_ms=30.0)
    with pytest.raises(NoProcessAvailable, match="r2"):
        await a.claim("r2")
    router = make(max_tick_p99_ms=None)
    assert (await router.claim("r2")).process_id == a.process_id


async def test_no_live_process(make):
    with pytest.raises(NoProcessAvailable):
        await make().claim("lobby")


async def test_stop_releases_rooms_at_once(make, raw):
    a, b = await two(make)
    await a.claim("lobby", here=True)
    assert await a.stop()
    assert await raw.exists("avatar:room:lobby", f"avatar:process:{a.process_id}") == 0
    assert await raw.zrange("avatar:processes", 0, -1) == [b.process_id]
    assert (await b.claim("lobby")).process_id == b.process_id
    assert await a.stop()  # idempotent
    with pytest.raises(RuntimeError):
        await a.lookup("lobby")


async def test_unreachable_redis_at_start_is_a_clear_error():
    port = free_port()  # nothing listens there
    d = RoomDirectory(f"redis://:hunter2@127.0.0.1:{port}/0", timeout=0.5)
    try:
        with pytest.raises(DirectoryUnavailable) as err:
            await d.start(URL_A, 100)
        assert isinstance(err.value, OSError) and isinstance(err.value, DirectoryError)
        assert f"redis://:***@127.0.0.1:{port}/0" in str(err.value)
        assert "hunter2" not in str(err.value)
        assert not d.available and d.errors == 1 and d.last_error
        with pytest.raises(DirectoryUnavailable):
            await d.claim("lobby")
        assert d.errors == 2
    finally:
        assert await d.stop()  # nothing was registered, so nothing is left behind


async def test_redis_restart_while_running_reregisters(make, redis_server, raw):
    a = make()
    await a.start(URL_A, 100)
    await a.claim("lobby", here=True)
    assert await a.heartbeat(0.01, ["lobby"], 1) == Heartbeat(False, frozenset(), frozenset())

    redis_server.stop()
    with pytest.raises(DirectoryUnavailable, match=str(redis_server.port)):
        await a.heartbeat(0.01, ["lobby"], 1)
    assert not a.available and a.errors == 1

    redis_server.start()  # same port, empty
    assert await raw.exists(f"avatar:process:{a.process_id}") == 0
    beat = await a.heartbeat(0.01, ["lobby"], 1)
    assert beat.reregistered and beat.reclaimed == {"lobby"} and not beat.lost
    assert a.available and a.errors == 1
    assert await raw.zscore("avatar:processes", a.process_id) == 0.01
    b = make()
    await b.start(URL_B, 100)
    assert (await b.claim("lobby")).process_id == a.process_id


async def test_partitioned_owner_learns_its_room_is_lost(make, raw):
    a, b = await two(make)
    await a.claim("lobby", here=True)
    await raw.delete(f"avatar:process:{a.process_id}")  # as if a missed a whole TTL
    assert (await b.claim("lobby", here=True)).process_id == b.process_id
    beat = await a.heartbeat(0.0, ["lobby", "other"], 2)
    assert beat.reregistered and beat.lost == {"lobby"} and beat.reclaimed == {"other"}
    assert a.owned == {"other"}
    assert (await a.lookup("lobby")).process_id == b.process_id


async def test_heartbeat_loop_keeps_keys_alive_and_survives_redis_loss(make, redis_server, raw):
    a = make(ttl=0.5)
    await a.start(URL_A, 100)
    await a.claim("lobby", here=True)
    beats: list[Heartbeat] = []
    task = asyncio.create_task(
        a.run_heartbeats(lambda: (0.01, ["lobby"], 1), interval=0.05, on_result=beats.append)
    )
    try:

        async def beaten(n: int) -> bool:
            return len(beats) >= n

        await eventually(lambda: beaten(15))  # >= 0.7 s: longer than the TTL
        assert (await a.lookup("lobby")).process_id == a.process_id
        assert 0 < await raw.pttl("avatar:room:lobby") <= 500
        assert a.heartbeat_age < 0.5

        redis_server.stop()

        async def failing() -> bool:
            return a.errors >= 2

        await eventually(failing)
        assert not task.done() and not a.available
        redis_server.start()
        n = len(beats)
        await eventually(lambda: beaten(n + 1))
        assert a.available and any(b.reregistered for b in beats[n:])
        assert (await a.lookup("lobby")).process_id == a.process_id
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_stop_without_redis_does_not_raise(make, redis_server):
    a = make()
    await a.start(URL_A, 100)
    await a.claim("lobby", here=True)
    redis_server.stop()
    assert not await a.stop()  # keys left to expire; shutdown goes on
    assert not await a.stop()
