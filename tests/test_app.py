"""End-to-end: the real server on 127.0.0.1 port 0, real WebSocket clients, no sleeps."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import msgpack
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.core import protocol as P
from server.core.engine import TickEngine
from server.core.model import load_checkpoint
from tests.app_helpers import MAX_FRAMES, Client, drain, expect_refusal, fetch
from tests.servers import running

pytestmark = pytest.mark.usefixtures("transport")  # every test, once per transport


@pytest.mark.parametrize("inline_step_ms", [0.0, 2.0])  # the step in a thread / on the loop
async def test_own_prediction_equals_tick_engine(inline_step_ms):
    ref = TickEngine(load_checkpoint(), device="cpu")
    ref.join("me")
    async with running(inline_step_ms=inline_step_ms) as srv:
        c = await Client.open(srv, avatar="me")
        assert c.welcome.model == ref.version and c.welcome.horizons == tuple(ref.horizons)
        assert c.welcome.handle == 0
        rng = np.random.default_rng(3)
        p, v, t = np.zeros(3), np.array([1.2, 0.0, 0.0]), 0.0
        for k in range(40):  # lock-step: one sample per tick, so the server steps on every one
            v[:2] += rng.normal(0, 0.15, 2)
            t += rng.uniform(0.05, 0.15)  # the time step is an input; any rate
            p = p + v * 0.1
            await c.pos(k, t, p)
            st = await c.state_where(lambda s, k=k: c.welcome.handle in s.handle and s.seq[0] == k)
            ref.submit("me", t, p, k)
            expect = ref.tick()
            assert c.visible(st) == ["me"]
            np.testing.assert_allclose(st.pos[0], p, atol=1e-5 * max(1, np.abs(p).max()))
            np.testing.assert_allclose(st.offsets[0], expect.offsets[0], atol=5.1e-4)
        await c.close()


async def test_age_is_on_the_server_clock():
    async with running() as srv:
        c = await Client.open(srv, avatar="me")
        skew = -1000.0  # the client's clock is far from the server's
        for k in range(5):
            await c.pos(k, time.monotonic() + skew, (k * 0.1, 0, 0))
            st = await c.state_where(lambda s, k=k: len(s) and s.seq[0] == k)
            assert 0.0 <= st.age[0] < 0.5
        await c.close()


async def test_rooms_radius_cap_join_and_leave():
    async with running(aoi_radius=10.0, aoi_cap=3) as srv:
        xs = {"a": 0.0, "b": 1.0, "c": 2.0, "d": 3.0, "far": 20.0}
        cs = {n: await Client.open(srv, avatar=n) for n in xs}
        other = await Client.open(srv, room="elsewhere", avatar="a")  # same id, other room
        for n, c in cs.items():
            await c.pos(0, 1.0, (xs[n], 0, 0))
        await other.pos(0, 1.0, (0.5, 0, 0))
        st = await cs["a"].state_where(lambda s: len(s) == 3)
        assert cs["a"].visible(st) == ["a", "b", "c"]  # itself first, nearest, capped at 3
        st = await cs["far"].state_where(lambda s: len(s) >= 1)
        assert cs["far"].visible(st) == ["far"]  # nobody within 10 m
        st = await other.state_where(lambda s: len(s) >= 1)
        assert other.visible(st) == ["a"] and st.handle[0] == other.welcome.handle
        # b leaves the area, then c disconnects: a gets leave for both, and d enters its view
        await cs["b"].pos(1, 2.0, (50.0, 0, 0))
        await cs["c"].close()
        st = await cs["a"].state_where(lambda s: cs["a"].visible(s) == ["a", "d"])
        left = {a for lv in cs["a"].leaves for a in lv.avatars}
        assert left == {"b", "c"}
        assert any("d" in j.avatars for j in cs["a"].joins)
        st = await cs["far"].state_where(lambda s: len(s) == 1)
        for c in [*cs.values(), other]:
            with contextlib.suppress(ConnectionClosed):
                await c.close()


async def test_spectator_sees_the_room_and_its_region():
    async with running() as srv:
        a = await Client.open(srv, avatar="a")
        b = await Client.open(srv, avatar="b")
        await a.pos(0, 1.0, (0, 0, 0))
        await b.pos(0, 1.0, (100, 100, 0))
        s = await Client.open(srv, avatar=None)
        assert s.welcome.avatar is None and s.welcome.handle is None
        st = await s.state_where(lambda st: len(st) == 2)
        assert sorted(s.visible(st)) == ["a", "b"]
        await s.ws.send(P.encode_client(P.View(region=(90, 90, 110, 110))))
        st = await s.state_where(lambda st: len(st) == 1)
        assert s.visible(st) == ["b"]
        await s.ws.send(P.encode_client(P.Pos(seq=0, t=1.0, p=(0, 0, 0))))
        err, code = await expect_refusal(s.ws)
        assert err.code == "not_a_player" and code == 1008
        await a.close()
        await b.close()


BAD_FRAMES = {
    "text": ("hello", "text_frame", 1003),
    "garbage": (b"\xc1\xff\x00garbage", "bad_msgpack", 1003),
    "unknown_type": (msgpack.packb({"type": "teleport", "p": [0, 0]}), "unknown_type", 1008),
    "nan": (
        msgpack.packb({"type": "pos", "seq": 1, "t": 2.0, "p": [float("nan"), 0.0]}),
        "non_finite",
        1008,
    ),
    "mistyped": (
        msgpack.packb({"type": "pos", "seq": "1", "t": 2.0, "p": [0, 0]}),
        "bad_field",
        1008,
    ),
    "oversize": (b"\x00" * 5000, "too_large", 1009),
    "second_hello": (P.encode_client(P.Hello(room="x", avatar="y")), "expected_hello", 1008),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
async def test_bad_frames_are_refused_while_others_tick_on(case):
    frame, code, close_code = BAD_FRAMES[case]
    async with running(max_frame=4096) as srv:
        good = await Client.open(srv, avatar="good")
        await good.pos(0, 1.0, (0, 0, 0))
        before = (await good.state_where(lambda s: len(s) == 1)).tick
        bad = await Client.open(srv, avatar="bad")
        await bad.ws.send(frame)
        err, got_close = await expect_refusal(bad.ws)
        assert err is not None and err.code == code and got_close == close_code
        after = (await good.state_where(lambda s: s.tick > before + 3)).tick
        assert after > before
        body = await fetch(srv, "/metrics")
        assert f'avatar_protocol_errors_total{{code="{code}"}} 1.0' in body
        await good.close()


async def test_before_hello_and_hard_limit_and_timeout():
    async with running(max_frame=4096, max_frame_hard=8192, hello_timeout=0.3) as srv:
        ws = await connect(srv.url)
        await ws.send(P.encode_client(P.Pos(seq=0, t=0.0, p=(0, 0))))
        err, code = await expect_refusal(ws)
        assert (err.code, code) == ("expected_hello", 1008)
        ws = await connect(srv.url)
        await ws.send(b"\x00" * 9000)  # beyond the WebSocket layer's own limit
        err, code = await expect_refusal(ws)
        assert err is None and code == 1009
        ws = await connect(srv.url)  # says nothing
        err, code = await expect_refusal(ws)
        assert (err.code, code) == ("hello_timeout", 1008)
        ws = await connect(srv.url)
        await ws.send(msgpack.packb({"type": "hello", "v": 3, "room": "r"}))
        err, code = await expect_refusal(ws)
        assert (err.code, code) == ("bad_version", 1008)


async def test_a_second_connection_replaces_the_first_and_bye_leaves():
    async with running() as srv:
        a = await Client.open(srv, avatar="a")
        await a.pos(0, 1.0, (1.0, 2.0, 0.0))
        await a.state_where(lambda s: len(s) == 1)
        b = await Client.open(srv, avatar="a")  # no resume token: a fresh avatar "a"
        err, code = await expect_refusal(a.ws)
        assert (err.code, code) == ("replaced", 1008)
        assert srv.stats.replaced == 1 and srv.world.n_players == 1
        st = await b.state_where(lambda s: True)
        assert len(st) == 0  # the old avatar left; the new one has sent nothing yet
        await b.ws.send(P.encode_client(P.Bye()))
        err, code = await expect_refusal(b.ws)
        assert err is None and code == 1000
        assert srv.world.n_players == 0 and srv.world.n_detached == 0


async def test_resume_within_grace_keeps_the_hidden_state_after_grace_it_does_not():
    ref = TickEngine(load_checkpoint(), device="cpu")
    ref.join("me")
    async with running(resume_grace=0.5) as srv:
        world = srv.world
        detached, expired = asyncio.Event(), asyncio.Event()
        detach, expire = world.detach, world.expire

        def on_detach(m, now):
            detach(m, now)
            detached.set()

        def on_expire(now, grace):
            n = expire(now, grace)
            if n:
                expired.set()
            return n

        world.detach, world.expire = on_detach, on_expire
        c = await Client.open(srv, avatar="me")
        p, t = np.zeros(3), 0.0

        async def step(c: Client, k: int, ref: TickEngine) -> tuple[P.State, np.ndarray]:
            nonlocal p, t
            t += 0.1
            p = p + np.array([0.12 + 0.01 * k, 0.03 * np.sin(k), 0.0])
            await c.pos(k, t, p)
            st = await c.state_where(lambda s: c.welcome.handle in s.handle and s.seq[0] == k)
            ref.submit("me", t, p, k)
            return st, ref.tick().offsets[0]

        for k in range(12):
            await step(c, k, ref)
        c.ws.transport.abort()  # dropped: no close frame
        await detached.wait()
        assert world.n_detached == 1 and world.n_players == 1
        token = c.welcome.resume
        c = await Client.open(srv, avatar="me", resume=token)
        assert c.welcome.handle == 0 and srv.stats.resumed == 1 and world.n_detached == 0
        st, expect = await step(c, 12, ref)  # as if the connection had never dropped
        np.testing.assert_allclose(st.offsets[0], expect, atol=5.1e-4)
        token = c.welcome.resume
        c.ws.transport.abort()
        await expired.wait()  # the grace period passed: the avatar is gone
        assert world.n_players == 0 and world.n_detached == 0
        c = await Client.open(srv, avatar="me", resume=token)
        fresh = TickEngine(load_checkpoint(), device="cpu")
        fresh.join("me")
        st, expect = await step(c, 13, ref)
        fresh.submit("me", t, p, 13)
        np.testing.assert_allclose(st.offsets[0], fresh.tick().offsets[0], atol=5.1e-4)
        assert np.abs(st.offsets[0] - expect).max() > 5e-3  # the old state is not used
        await c.close()


async def test_shutdown_sends_going_away():
    async with running() as srv:
        c = await Client.open(srv, avatar="a")
        t0 = time.perf_counter()
        srv.request_shutdown()
        _, code = await expect_refusal(c.ws)
        assert code == 1001 and time.perf_counter() - t0 < srv.config.shutdown_timeout + 1


async def test_slow_client_is_dropped_then_closed_without_delaying_others():
    async with running(send_buffer=1024, max_dropped=5, aoi_radius=1000.0, tick_hz=100.0) as srv:
        crowd = [await Client.open(srv, avatar=f"c{i}") for i in range(40)]
        for i, c in enumerate(crowd):  # a big view makes every state frame ~2.4 KB
            await c.pos(0, 1.0, (i * 0.5, 0, 0))
        drains = [asyncio.create_task(drain(c.ws)) for c in crowd[1:]]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small window from the start
        sock.connect(("127.0.0.1", srv.port))
        sock.setblocking(False)
        slow = await Client.open(srv, avatar="slow", sock=sock)
        member = srv.world.rooms["lobby"].players["slow"]
        member.transport.extra("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        slow.ws.transport.pause_reading()  # never reads from now on
        watcher = crowd[0]
        first = (await watcher.state()).tick
        st = await watcher.state_where(lambda s: srv.stats.errors.get("too_slow") == 1)
        assert "slow" not in srv.world.rooms["lobby"].players
        assert srv.stats.dropped >= 5
        # every tick reached the watcher while the slow client was being dropped
        assert st.tick - first < 400
        slow.ws.transport.resume_reading()
        err, code = await expect_refusal(slow.ws)
        assert (err.code, code) == ("too_slow", 1008)
        assert srv.stats.errors.get("too_slow") == 1  # the readers were never too slow
        for c in crowd:
            await c.close()
        await asyncio.gather(*drains)


SECRET = "test-secret-0123456789abcdef-0123456789"


async def test_join_tokens_missing_wrong_expired_wrong_room_refused_valid_admitted():
    from server.core.auth import mint_token

    async with running(secret=SECRET) as srv:
        now = time.time()
        cases = {
            "missing": None,
            "wrong signature": mint_token("another-secret-0123456789abcdef-xyz", "a", "lobby", 60),
            "expired": mint_token(SECRET, "a", "lobby", 10, now=now - 100),
            "wrong room": mint_token(SECRET, "a", "elsewhere", 60),
            "wrong avatar": mint_token(SECRET, "b", "lobby", 60),
        }
        for why, token in cases.items():
            ws = await connect(srv.url)
            await ws.send(P.encode_client(P.Hello(room="lobby", avatar="a", token=token)))
            err, code = await expect_refusal(ws)
            assert (err.code, code) == ("unauthorized", 1008), why
        c = await Client.open(srv, avatar="a", token=mint_token(SECRET, "a", "lobby", 60))
        assert c.welcome.avatar == "a" and srv.stats.errors["unauthorized"] == len(cases)
        await c.close()


async def test_allowed_origins_refuse_other_browsers():
    from websockets.exceptions import InvalidStatus

    async with running(allowed_origins="https://app.example, https://b.example/") as srv:
        for origin in ("https://app.example", "https://b.example", None):  # None: no browser
            ws = await connect(srv.url, origin=origin)
            await ws.close()
        with pytest.raises(InvalidStatus) as e:
            await connect(srv.url, origin="https://evil.example")
        assert e.value.response.status_code == 403 and srv.stats.origin_refused == 1


async def test_a_flood_is_dropped_then_closed_and_others_are_not_limited():
    async with running(max_msg_rate=20.0) as srv:
        calm = await Client.open(srv, avatar="calm")
        flood = await Client.open(srv, avatar="flood")
        for k in range(400):  # bounded: closes after about 20 + 2 * 20 messages
            try:
                await flood.pos(k, 1.0 + k * 1e-3, (0, 0, 0))
            except ConnectionClosed:
                break
        err, code = await expect_refusal(flood.ws)
        assert (err.code, code) == ("rate_limited", 1008)
        assert srv.stats.rate_dropped >= 40
        for k in range(3):  # the calm one was never limited
            await calm.pos(k, 1.0 + k, (1.0, 0, 0))
            await calm.state_where(lambda s, k=k: len(s) and s.seq[0] == k)
        await calm.close()


async def test_a_silent_connection_is_closed_but_one_that_answers_pings_is_not():
    from websockets.client import ClientProtocol
    from websockets.uri import parse_uri

    async with running(idle_timeout=1.0) as srv:
        alive = await Client.open(srv, avatar="alive")  # reads, sends nothing, answers pings
        reading = asyncio.create_task(drain(alive.ws))
        # a raw client: handshake and hello, then it never answers anything
        proto = ClientProtocol(parse_uri(srv.url))
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        proto.send_request(proto.connect())
        writer.write(b"".join(proto.data_to_send()))
        while not proto.handshake_exc and proto.state.name == "CONNECTING":
            proto.receive_data(await reader.read(4096))
        proto.send_binary(P.encode_client(P.Hello(room="lobby", avatar="silent")))
        writer.write(b"".join(proto.data_to_send()))
        t0 = time.perf_counter()
        while data := await asyncio.wait_for(reader.read(65536), 10):  # until the server closes
            proto.receive_data(data)  # its pings are read, never answered
        waited = time.perf_counter() - t0
        events = proto.events_received()
        frames = [e for e in events if getattr(e, "opcode", None) is not None]
        errors = [P.decode_server(e.data) for e in frames if e.opcode.name == "BINARY"]
        assert any(isinstance(m, P.Error) and m.code == "idle_timeout" for m in errors)
        assert proto.close_rcvd is not None and proto.close_rcvd.code == 1008
        assert 1.0 <= waited < 4.0
        writer.close()
        assert alive.ws.state.name == "OPEN"  # pinged too, and its pongs count
        assert srv.stats.errors.get("idle_timeout") == 1
        await alive.close()
        await reading


async def test_a_bug_while_handling_one_client_closes_only_that_client(monkeypatch):
    async with running() as srv:
        good = await Client.open(srv, avatar="good")
        bad = await Client.open(srv, avatar="bad")
        real = srv.world.set_view

        def broken(m, region):
            raise RuntimeError("boom")

        monkeypatch.setattr(srv.world, "set_view", broken)
        await bad.ws.send(P.encode_client(P.View(region=None)))
        err, code = await expect_refusal(bad.ws)
        assert (err.code, code) == ("internal_error", 1011)
        monkeypatch.setattr(srv.world, "set_view", real)
        await good.pos(0, 1.0, (0, 0, 0))
        await good.state_where(lambda s: len(s) == 1)
        assert srv.stats.tick_errors == 0
        await good.close()


async def test_v2_client_gets_only_changed_records_while_v1_gets_every_tick():
    # the sample rule alone (a 1 cm step turns CV's path 6 cm off at 0.3 s: --dr-lookahead
    # would resend it, as tests/test_downlink.py checks)
    async with running(
        predictor="cv", dr_threshold=0.05, dr_heartbeat=30.0, dr_lookahead=0.0
    ) as srv:
        still = await Client.open(srv, avatar="still", v=2)
        old = await Client.open(srv, avatar="old", v=1)
        assert (still.welcome.v, still.welcome.dr) == (2, {"threshold": 0.05, "heartbeat": 30.0})
        assert (old.welcome.v, old.welcome.dr) == (1, None)
        await still.pos(0, 1.0, (0, 0, 0))
        await old.pos(0, 1.0, (1, 0, 0))
        st = await still.state_where(lambda s: len(s) == 2)  # each avatar's first path
        assert sorted(still.visible(st)) == ["old", "still"]
        await still.pos(1, 1.05, (0.01, 0, 0))  # 1 cm: still on its (standing) path
        first = (await old.state_where(lambda s: len(s) == 2)).tick
        ticks = [(await old.state()).tick for _ in range(10)]  # v1: a frame every tick
        assert ticks == list(range(first + 1, first + 11))
        # v2: nothing was due since, so the reply to a ping is the next thing it reads
        await still.ws.send(P.encode_client(P.Ping(t=7.0)))
        assert isinstance(P.decode_server(await still.ws.recv()), P.Pong)
        await still.pos(2, 1.1, (0.5, 0, 0))  # 50 cm off its path: resent, to both
        st = await still.state_where(lambda s: len(s) > 0)
        assert still.visible(st) == ["still"] and st.seq.tolist() == [2]
        st = await old.state_where(lambda s: 2 in s.seq.tolist())
        assert sorted(old.visible(st)) == ["old", "still"]
        await still.close()
        await old.close()


async def test_both_pos_encodings_in_one_room():
    async with running() as srv:
        a = await Client.open(srv, avatar="packed")
        b = await Client.open(srv, avatar="binary", pos_encoding="binary")
        assert (a.welcome.pos_encoding, b.welcome.pos_encoding) == ("msgpack", "binary")
        seen: dict[str, set[str]] = {"packed": set(), "binary": set()}
        for k in range(MAX_FRAMES):  # bounded: until each sees the other with a prediction
            t = 0.05 * k
            await a.pos(k, t, (0.1 * k, 0.0, 0.0))
            await b.ws.send(P.encode_pos_binary(P.Pos(seq=k, t=t, p=(0.1 * k, 2.0, 0.0))))
            for c, me in ((a, "packed"), (b, "binary")):
                st = await c.state()
                seen[me].update(c.visible(st))
            if all(len(v) == 2 for v in seen.values()):
                break
        assert seen == {"packed": {"packed", "binary"}, "binary": {"packed", "binary"}}
        assert srv.stats.errors == {}
        await a.close()
        await b.close()
