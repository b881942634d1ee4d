"""Hostile clients against a live server (both transports): bad frames, floods, aborts,
churn and a client that never reads, while well-behaved clients keep streaming.

Real sockets on 127.0.0.1 port 0, no sleeps: every wait is a future set by a server-side
event (a tick, a disconnect) or a frame read, each bounded in count and time. The long
versions, with figures, are `bench/hostile.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections import Counter
from collections.abc import Callable

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.core import protocol as P
from server.serve.app import AvatarServer
from server.serve.transports import TRANSPORTS
from tests.servers import running

MAX_FRAMES = 600  # every read loop below is bounded by this many frames
WAIT = 3.0  # and every wait by this many seconds


@pytest.fixture(params=TRANSPORTS)
def transport(request) -> str:
    return request.param


# -- helpers ------------------------------------------------------------------------------


class _Tracked:
    """Stands between a transport and its `Session` to tell the probe about disconnects."""

    __slots__ = ("probe", "session")

    def __init__(self, session, probe: Probe) -> None:
        self.session = session
        self.probe = probe

    def on_message(self, data) -> None:
        self.probe.max_message = max(self.probe.max_message, len(data))
        self.session.on_message(data)

    def on_disconnect(self, clean: bool = False) -> None:
        self.session.on_disconnect(clean)
        self.probe._disconnected(clean)


class Probe:
    """Server-side events to wait on, instead of sleeping: disconnects and ticks.

    Installed before any client connects. Each tick it also records every connection's
    buffered bytes (written, not yet taken by the socket) and the bytes of the frames the
    tick queued for it, so tests can bound what the server holds per connection.
    """

    def __init__(self, srv: AvatarServer) -> None:
        self.srv = srv
        self.disconnects = 0
        self.unclean = 0
        self.ticks = 0
        self.peak_connections = 0
        self.max_buffered = 0  # bytes, any connection, sampled at each tick's fan-out
        self.max_tick_frames = 0  # bytes of the frames one tick queued for one member
        self.max_message = 0  # bytes (or characters) of the largest message the app got
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future]] = []
        open_session = srv.open_session
        srv.open_session = lambda conn: self._opened(open_session(conn))
        fan_out = srv.world.fan_out

        def counted_fan_out(result, server_time):
            members = fan_out(result, server_time)
            for m in members:
                conn = m.transport
                if conn is not None and conn.is_open:
                    self.max_buffered = max(self.max_buffered, conn.buffered())
                size = sum(map(len, m.controls)) + len(m.state or b"")
                self.max_tick_frames = max(self.max_tick_frames, size)
            self.ticks += 1
            self._notify()
            return members

        srv.world.fan_out = counted_fan_out

    def _opened(self, session) -> _Tracked:
        self.peak_connections = max(self.peak_connections, self.srv.n_connections)
        return _Tracked(session, self)

    def _disconnected(self, clean: bool) -> None:
        self.disconnects += 1
        self.unclean += not clean
        self._notify()

    def _notify(self) -> None:
        for pred, fut in self._waiters:
            if not fut.done() and pred():
                fut.set_result(None)
        self._waiters = [(p, f) for p, f in self._waiters if not f.done()]

    async def until(self, pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Return once `pred()` holds (checked now, then at every tick and disconnect)."""
        if pred():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def ticks_pass(self, n: int) -> None:
        target = self.ticks + n
        await self.until(lambda: self.ticks >= target, f"{n} ticks")


def hello(room: str = "lobby", avatar: str | None = "a") -> bytes:
    return P.encode_client(P.Hello(room=room, avatar=avatar, v=1))  # a state every tick


def pos(seq: int, p=(0.0, 0.0, 0.0), t: float | None = None) -> bytes:
    return P.encode_client(P.Pos(seq=seq, t=0.02 * seq + 1.0 if t is None else t, p=p))


async def open_player(srv: AvatarServer, avatar: str, room: str = "lobby", sock=None):
    ws = await connect(srv.url, max_size=2**22, sock=sock, close_timeout=WAIT)
    await ws.send(hello(room, avatar))
    welcome = P.decode_server(await asyncio.wait_for(ws.recv(), WAIT))
    assert isinstance(welcome, P.Welcome), welcome
    return ws, welcome


async def expect_refusal(ws) -> tuple[P.Error | None, int | None]:
    """Read until the server closes; its `error` (if any) and the close code it sent."""
    err = None
    with contextlib.suppress(ConnectionClosed):
        for _ in range(MAX_FRAMES):
            msg = P.decode_server(await asyncio.wait_for(ws.recv(), WAIT))
            if isinstance(msg, P.Error):
                err = msg
        raise AssertionError("the server did not close within the frame budget")
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return err, ws.close_code


class Good:
    """A well-behaved player: one `pos` for each `state` it reads; checks join/leave and
    keeps every state's tick number."""

    def __init__(self, ws, welcome: P.Welcome, x: float) -> None:
        self.ws = ws
        self.welcome = welcome
        self.x = x
        self.ticks: list[int] = []
        self.names: dict[int, str] = {}
        self.seq = 0

    async def run(self, stop: asyncio.Event, limit: int = MAX_FRAMES) -> None:
        for _ in range(limit):
            if stop.is_set():
                return
            msg = P.decode_server(await asyncio.wait_for(self.ws.recv(), WAIT))
            if isinstance(msg, P.Join):
                for a, h in zip(msg.avatars, msg.handles, strict=True):
                    assert h not in self.names, f"join for handle {h} still in view"
                    self.names[h] = a
            elif isinstance(msg, P.Leave):
                for a, h in zip(msg.avatars, msg.handles, strict=True):
                    assert self.names.pop(h) == a
            elif isinstance(msg, P.State):
                assert all(h in self.names for h in msg.handle.tolist()), "handle without join"
                assert all(math.isfinite(v) for v in msg.pos.ravel().tolist())
                self.ticks.append(msg.tick)
                self.seq += 1
                await self.ws.send(pos(self.seq, (self.x + 0.01 * self.seq, 0.0, 0.0)))
            else:
                raise AssertionError(f"unexpected {msg}")
        raise AssertionError("a good client ran out of its frame budget")

    def fraction(self) -> float:
        """State frames received / ticks from its first to its last state."""
        assert len(self.ticks) >= 2
        assert self.ticks == sorted(set(self.ticks)), "ticks repeated or out of order"
        return len(self.ticks) / (self.ticks[-1] - self.ticks[0] + 1)


async def start_good(srv: AvatarServer, n: int, stop: asyncio.Event, spacing: float = 1.0):
    goods = []
    for i in range(n):
        ws, welcome = await open_player(srv, f"good{i}")
        goods.append(Good(ws, welcome, i * spacing))
    tasks = [asyncio.create_task(g.run(stop)) for g in goods]
    return goods, tasks


async def stop_good(goods: list[Good], tasks: list[asyncio.Task], stop: asyncio.Event) -> None:
    stop.set()
    await asyncio.gather(*tasks)  # each returns at its next frame (or fails the test)
    for g in goods:
        await g.ws.close()


def no_tracebacks(caplog) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [f"{r.name} {r.levelname}: {r.getMessage()}" for r in bad]
    assert "Traceback" not in caplog.text


# -- a. hostile traffic while good clients stream ---------------------------------------------

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


# -- b. churn ---------------------------------------------------------------------------------

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


# -- c. a client that never reads -------------------------------------------------------------


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
