"""One WebSocket connection on the server: its Sans-I/O `Session` driven, its actions done.

The transport reports what happens on the connection (a message, a pong, the end); the
`ClientConnection` hands it to the connection's `server.core.session.Session` with the
time and carries out what the session answers: frames through the server's counting send,
a close, a ping, a cluster claim (a task; the answer goes back to the session), the
member's connection for fan-out, another connection that loses its avatar. It also keeps
the hello deadline's timer and the server's count of open connections.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Protocol

from server.core import protocol as P
from server.core import session as S
from server.core.stats import Stats
from server.core.world import World
from server.serve.config import Config
from server.serve.transports import Connection
from server.serve.wire import Wire

if TYPE_CHECKING:
    from server.cluster.member import ClusterMember


class ConnectionHost(Protocol):
    """What a connection uses of its server (`server.serve.app.AvatarServer` is one)."""

    config: Config
    world: World | None
    stats: Stats
    wire: Wire
    cluster: ClusterMember | None
    sessions: dict[S.Session, ClientConnection]
    claims: set[asyncio.Task]
    n_connections: int
    idle: asyncio.Event

    @property
    def rules(self) -> S.SessionRules: ...

    @property
    def epoch(self) -> float: ...


class ClientConnection:
    """One WebSocket connection: feeds its `Session` what the transport reports and carries
    out the actions the session answers. Transports get it from `open_session`."""

    __slots__ = ("_timer", "conn", "server", "session")

    def __init__(self, server: ConnectionHost, conn: Connection) -> None:
        self.server = server
        self.conn = conn
        now = time.monotonic()
        self.session = S.Session(
            server.world, server.rules, server.stats, now, server.epoch, conn.peer
        )
        server.n_connections += 1
        server.idle.clear()
        server.sessions[self.session] = self
        conn.on_pong = self._pong
        self._timer: asyncio.TimerHandle | None = None
        self.apply(
            self.session.open(now, full=server.n_connections > server.config.max_connections)
        )
        if not self.session.closed:
            self._timer = asyncio.get_running_loop().call_later(
                server.config.hello_timeout, self._hello_due
            )

    def on_message(self, data: bytes | str) -> None:
        """One whole client message (the transport calls this). Never raises."""
        actions = self.session.receive(data, time.monotonic(), self.conn.latency)
        if actions:
            self.apply(actions)
        if self._timer is not None and self.session.hello_deadline is None:
            self._timer.cancel()
            self._timer = None

    def on_disconnect(self, clean: bool = False) -> None:
        """The connection is gone (the transport calls this once; `clean`: a close frame)."""
        srv = self.server
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.session.disconnected(clean, time.monotonic())
        srv.n_connections -= 1
        srv.sessions.pop(self.session, None)
        if srv.n_connections == 0:
            srv.idle.set()

    def check(self, now: float) -> None:
        """Timers (housekeeping calls this): idle timeout, pings."""
        self.apply(self.session.check(now))

    def apply(self, actions: list[S.Action]) -> None:
        """Carry out `actions` on this connection, in order."""
        conn, srv = self.conn, self.server
        for a in actions:
            if type(a) is S.Send:
                if conn.is_open:
                    srv.wire.send(conn, a.frames)
            elif type(a) is S.Close:
                if conn.is_open:
                    conn.close(a.code, a.reason)
            elif type(a) is S.Ping:
                conn.ping()
            elif type(a) is S.Admitted:
                a.member.transport = conn
            elif type(a) is S.Replace:
                other = srv.sessions.get(a.session)
                theirs = a.session.replaced()
                if other is not None:
                    other.apply(theirs)
            elif type(a) is S.Claim:
                task = asyncio.get_running_loop().create_task(self._claim(a.room))
                srv.claims.add(task)  # held until done (the loop keeps only a weak reference)
                task.add_done_callback(srv.claims.discard)

    async def _claim(self, room: str) -> None:
        cluster = self.server.cluster
        try:
            outcome: str | P.ProtocolError | None = await cluster.claim(room)
        except P.ProtocolError as e:
            outcome = e
        self.apply(self.session.claimed(outcome, cluster.owns(room), time.monotonic()))

    def _hello_due(self) -> None:
        self._timer = None
        deadline = self.session.hello_deadline
        if deadline is not None:
            self.apply(self.session.check(max(time.monotonic(), deadline)))

    def _pong(self) -> None:
        self.session.pong(time.monotonic())
