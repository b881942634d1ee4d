"""server.serve.connection: a connection's session driven, its actions done, its timers kept
(a fake transport connection; the real ones are tested end to end in test_app)."""

from __future__ import annotations

import asyncio

from server.core import protocol as P
from server.core import session as S
from server.core.engine import TickEngine
from server.core.stats import Stats
from server.core.world import World
from server.serve.config import Config
from server.serve.connection import ClientConnection
from server.serve.wire import Wire


class FakeConn:
    """What a transport gives the server: frames sent, closes and pings recorded."""

    def __init__(self) -> None:
        self.peer, self.latency, self.open = "test", 0.0, True
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.pings = 0
        self.on_pong = None

    @property
    def is_open(self) -> bool:
        return self.open

    def send(self, frames: list[bytes]) -> None:
        self.sent += frames

    def close(self, code: int, reason: str) -> None:
        self.open, self.closed = False, (code, reason)

    def ping(self) -> None:
        self.pings += 1

    def buffered(self) -> int:
        return 0


class Host:
    """The parts of a server a connection uses (server.serve.connection.ConnectionHost)."""

    def __init__(self, **config) -> None:
        self.config = Config(**config)
        self.world = World(TickEngine(None, device="cpu"))
        self.stats = Stats()
        self.wire = Wire(self.stats)
        self.cluster = None
        self.sessions: dict = {}
        self.claims: set = set()
        self.n_connections = 0
        self.idle = asyncio.Event()
        self.epoch = 1000.0

    @property
    def rules(self) -> S.SessionRules:
        return S.SessionRules(hello_timeout=self.config.hello_timeout)


def decoded(conn: FakeConn) -> list:
    return [P.decode_server(f) for f in conn.sent]


async def test_hello_is_welcomed_counted_and_the_hello_timer_cancelled():
    host, conn = Host(), FakeConn()
    c = ClientConnection(host, conn)
    assert host.n_connections == 1 and host.sessions == {c.session: c} and not host.idle.is_set()
    c.on_message(P.encode_client(P.Hello(room="r", avatar="a")))
    (welcome,) = decoded(conn)
    assert isinstance(welcome, P.Welcome) and conn.pings == 1
    assert c.session.member.transport is conn  # the member writes to this connection
    assert host.stats.frames_out == 1 and host.stats.bytes_out == len(conn.sent[0])
    assert c._timer is None
    conn.on_pong()  # the transport's pong reaches the session
    c.on_disconnect(clean=True)
    assert host.n_connections == 0 and host.sessions == {} and host.idle.is_set()
    assert host.world.player("r", "a") is None


async def test_no_hello_in_time_is_refused_by_the_timer():
    host, conn = Host(hello_timeout=0.05), FakeConn()
    ClientConnection(host, conn)
    for _ in range(200):  # bounded: the timer fires after 0.05 s
        if conn.closed:
            break
        await asyncio.sleep(0.01)
    assert [m.code for m in decoded(conn)] == ["hello_timeout"]
    assert conn.closed == (P.ERROR_CODES["hello_timeout"], "hello_timeout")


async def test_a_second_connection_for_the_avatar_closes_the_first():
    host, first, second = Host(), FakeConn(), FakeConn()
    a = ClientConnection(host, first)
    a.on_message(P.encode_client(P.Hello(room="r", avatar="a")))
    b = ClientConnection(host, second)
    b.on_message(P.encode_client(P.Hello(room="r", avatar="a")))
    assert [type(m).__name__ for m in decoded(first)] == ["Welcome", "Error"]
    assert decoded(first)[1].code == "replaced" and first.closed is not None
    assert isinstance(decoded(second)[0], P.Welcome) and second.closed is None
    assert b.session.member.transport is second


async def test_a_full_server_refuses_at_once():
    host, first, second = Host(max_connections=1), FakeConn(), FakeConn()
    ClientConnection(host, first)
    c = ClientConnection(host, second)
    assert first.sent == [] and [m.code for m in decoded(second)] == ["server_full"]
    assert c._timer is None
