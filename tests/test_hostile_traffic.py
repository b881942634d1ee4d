"""Hostile connections against a live server (both transports): bad frames, floods, aborts
and pipelined frames, while well-behaved clients keep streaming; the edges this found.

Real sockets on 127.0.0.1 port 0, no sleeps: every wait is a future set by a server-side
event (a tick, a disconnect) or a frame read, each bounded in count and time. The long
version, with figures, is `bench/hostile.py` (`bench/hostile_traffic.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.core import protocol as P
from server.serve.app import AvatarServer
from server.serve.transports import TRANSPORTS
from tests.hostile_clients import (
    MAX_FRAMES,
    WAIT,
    Probe,
    expect_refusal,
    hello,
    no_tracebacks,
    open_player,
    pos,
    start_good,
    stop_good,
)
from tests.servers import running

MAX_FRAME = 1024
MAX_HELLO = 256
MAX_HARD = 4096
RATE = 50.0
NAN, INF = float("nan"), float("inf")


def _raw_pos(**fields) -> bytes:
    return msgpack.packb({"type": "pos", "seq": 1, "t": 1.0, "p": [0.0, 0.0], **fields})


def _padded(size: int) -> bytes:
    """A well-formed pos of exactly `size` bytes (an ignored key carries the padding)."""
    pad = size - len(_raw_pos(pad=b""))
    frame = _raw_pos(pad=b"x" * pad)
    if len(frame) > size:  # the padding needed a longer bin header
        frame = _raw_pos(pad=b"x" * (pad - (len(frame) - size)))
    assert len(frame) == size, len(frame)
    return frame


# name -> (after hello?, what is sent, expected (error code, close code)); error None: the
# WebSocket layer closes without an `error`.
HOSTILE: dict[str, tuple[bool, object, tuple[str | None, int]]] = {
    "garbage": (False, b"\xc1\xff\x00garbage", ("bad_msgpack", 1003)),
    "trailing_bytes": (True, pos(1) + b"\x00", ("bad_msgpack", 1003)),
    "text_frame": (False, "hello", ("text_frame", 1003)),
    "not_a_map": (False, msgpack.packb([1, 2, 3]), ("bad_message", 1008)),
    "no_type": (True, msgpack.packb({"seq": 1}), ("bad_message", 1008)),
    "nested": (False, b"\x91" * 200 + b"\xc0", ("bad_message", 1008)),
    "unknown_type": (
        True,
        msgpack.packb({"type": "teleport", "p": [0, 0]}),
        ("unknown_type", 1008),
    ),
    "pos_before_hello": (False, pos(1), ("expected_hello", 1008)),
    "second_hello": (True, hello(), ("expected_hello", 1008)),
    "nan": (True, _raw_pos(p=[NAN, 0.0, 0.0]), ("non_finite", 1008)),
    "inf": (True, _raw_pos(p=[0.0, -INF]), ("non_finite", 1008)),
    "nan_t": (True, _raw_pos(t=NAN), ("non_finite", 1008)),
    "huge": (True, _raw_pos(p=[1e300, 0.0, 0.0]), ("out_of_range", 1008)),
    "bad_seq": (True, _raw_pos(seq=-1), ("out_of_range", 1008)),
    "over_max_frame": (True, _padded(MAX_FRAME + 1), ("too_large", 1009)),
    "over_hello_frame": (False, _padded(MAX_HELLO + 1), ("too_large", 1009)),
    "over_hard_limit": (False, _padded(MAX_HARD + 1), (None, 1009)),
    "flood": (True, None, ("rate_limited", 1008)),
    "teleporter": (True, None, (None, 1000)),  # valid but extreme samples, then bye
    "silent": (False, None, ("hello_timeout", 1008)),
}
ABORTS = ("abort_after_hello", "abort_mid_stream")


async def hostile(srv: AvatarServer, kind: str, i: int):
    """One hostile connection doing `kind`; returns (error code, close code) it got."""
    ws = await connect(srv.url, max_size=2**22, close_timeout=WAIT)
    name = f"h-{kind}-{i}"
    if kind in ABORTS:
        await ws.send(hello(avatar=name))
        assert isinstance(P.decode_server(await asyncio.wait_for(ws.recv(), WAIT)), P.Welcome)
        if kind == "abort_mid_stream":
            states = 0
            for k in range(MAX_FRAMES):
                await ws.send(pos(k + 1, (0.5 * i, 3.0, 0.0)))
                msg = P.decode_server(await asyncio.wait_for(ws.recv(), WAIT))
                states += isinstance(msg, P.State)
                if states == 3:
                    break
        ws.transport.abort()  # no close frame, no FIN handshake
        return None
    after_hello, frame, _ = HOSTILE[kind]
    if after_hello:  # pipelined: the bad frame follows hello without waiting for welcome
        await ws.send(hello(avatar=name))
    if kind == "flood":  # far over RATE in one burst: the sustained excess closes it
        with contextlib.suppress(ConnectionClosed):
            for k in range(int(8 * RATE)):
                await ws.send(pos(k + 1, (0.1 * k, 0.0, 0.0)))
    elif kind == "teleporter":  # +-1e6 m jumps a nanosecond apart: the model must cope
        for k in range(20):
            x = (1e6, -1e6, 0.0, 999_999.5)[k % 4]
            await ws.send(pos(k + 1, (x, -x, x), t=1.0 + k * (1e-9, 5.0)[k % 2]))
        await ws.send(P.encode_client(P.Bye()))
    elif frame is not None:
        await ws.send(frame)
    err, code = await expect_refusal(ws)
    return (err.code if err is not None else None), code


async def test_hostile_traffic_while_good_clients_stream(transport, caplog):
    caplog.set_level(logging.INFO)
    config = dict(
        transport=transport, tick_hz=50.0, max_frame=MAX_FRAME, max_hello_frame=MAX_HELLO,
        max_frame_hard=MAX_HARD, max_msg_rate=RATE, hello_timeout=1.0,
    )  # fmt: skip
    async with running(**config) as srv:
        probe = Probe(srv)
        stop = asyncio.Event()
        goods, tasks = await start_good(srv, 4, stop)
        await probe.until(lambda: all(len(g.ticks) >= 3 for g in goods), "good clients stream")
        kinds = [*HOSTILE, *ABORTS]
        rounds = 2
        jobs = [(k, i) for i in range(rounds) for k in kinds]
        results = await asyncio.wait_for(
            asyncio.gather(*(hostile(srv, k, i) for k, i in jobs)), 10 * WAIT
        )
        n_hostile = len(jobs)
        await probe.until(lambda: probe.disconnects == n_hostile, "every hostile disconnect")
        await probe.until(lambda: all(len(g.ticks) >= 50 for g in goods), "a longer window")
        # the clients see no left-over hostile avatar but the detached ones
        assert srv.n_connections == len(goods) and len(srv.sessions) == len(goods)
        assert srv.world.n_detached == len(ABORTS) * rounds
        assert srv.world.n_players == len(goods) + len(ABORTS) * rounds
        await stop_good(goods, tasks, stop)

        got = {(k, i): r for (k, i), r in zip(jobs, results, strict=True)}
        for (kind, i), result in got.items():
            if kind in ABORTS:
                continue
            expected = HOSTILE[kind][2]
            assert result == expected, f"{kind}#{i}: got {result}, documented {expected}"
            if expected[0] is not None:
                assert P.ERROR_CODES[expected[0]] == expected[1]
        want = Counter(HOSTILE[k][2][0] for k, _ in jobs if k not in ABORTS)
        want.pop(None)
        assert srv.stats.errors == dict(want)
        assert probe.unclean >= len(ABORTS) * rounds
        for g in goods:
            assert g.fraction() >= 0.95, (g.welcome.avatar, g.fraction(), g.ticks)
        assert srv.stats.tick_errors == 0
        assert srv.world.engine.nonfinite_resets == 0  # nothing non-finite got in
    no_tracebacks(caplog)


# -- edges found by this module (each was a server bug once) --------------------------


async def _pipelined(srv: AvatarServer, frames: list[bytes], close: bool = False) -> int:
    """Write `frames` (then a close frame) in one write, before the server reads any of
    them; read until the server closes; the close code it sent."""
    ws = await connect(srv.url, close_timeout=WAIT)
    for frame in frames:
        ws.protocol.send_binary(frame)
    if close:
        ws.protocol.send_close(1000, "done")
    ws.transport.writelines(ws.protocol.data_to_send())
    with contextlib.suppress(ConnectionClosed):
        for _ in range(MAX_FRAMES):
            await asyncio.wait_for(ws.recv(), WAIT)
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return ws.close_code


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_messages_pipelined_before_a_close_are_not_server_errors(transport, caplog):
    caplog.set_level(logging.INFO)
    async with running(transport=transport, max_frame_hard=MAX_HARD) as srv:
        probe = Probe(srv)
        ping = P.encode_client(P.Ping(t=1.0))
        codes = [
            await _pipelined(srv, [hello(avatar="p1")], close=True),  # says hello, leaves
            await _pipelined(srv, [hello(avatar="p2"), ping], close=True),
            await _pipelined(srv, [hello(avatar="p3"), _padded(MAX_HARD + 1)]),
        ]
        assert codes == [1000, 1000, 1009]
        await probe.until(lambda: probe.disconnects == 3, "the three connections gone")
        assert "internal_error" not in srv.stats.errors
        assert srv.stats.tick_errors == 0
    no_tracebacks(caplog)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_frame_over_the_hard_limit_never_reaches_the_app(transport):
    async with running(transport=transport, max_frame_hard=MAX_HARD) as srv:
        probe = Probe(srv)
        ws, _ = await open_player(srv, "big")
        await ws.send(_padded(MAX_HARD + 1))
        err, code = await expect_refusal(ws)
        assert (err, code) == (None, 1009)
        await probe.until(lambda: probe.disconnects == 1, "the connection gone")
        assert probe.max_message <= MAX_HARD
        assert srv.stats.errors == {}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_frame_over_the_hard_limit_removes_the_avatar_at_once(transport):
    async with running(transport=transport, max_frame_hard=MAX_HARD, resume_grace=60.0) as srv:
        probe = Probe(srv)
        ws, _ = await open_player(srv, "big")
        await ws.send(pos(1))
        await ws.send(_padded(MAX_HARD + 1))
        err, code = await expect_refusal(ws)
        assert (err, code) == (None, 1009)
        await probe.until(lambda: probe.disconnects == 1, "the connection gone")
        assert (srv.world.n_players, srv.world.n_detached) == (0, 0)
