"""One connection's protocol state, Sans-I/O: events and `now` in, actions out.

A `Session` never touches a socket, a timer or the event loop. The service feeds it what
happened on its connection and carries out what it answers:

    session = Session(world, rules, stats, now, epoch)
    actions = session.open(now, full=too_many_connections)
    actions = session.receive(data, now, rtt)   # each whole message
    actions = session.check(now)                # hello deadline, idle timeout, ping due
    session.pong(now)                           # a WebSocket pong arrived
    actions = session.claimed(outcome, owned, now)  # answers a `Claim` it asked for
    session.disconnected(clean, now)            # once, when the connection is gone

and each action is one of `Send` (frames, in order), `Ping`, `Close` (a code and reason:
the connection closes after the frames before it), `Claim` (place the room in the
cluster, then call `claimed`) and `Replace` (another session loses its avatar to this
one: call its `replaced` and carry out what that answers on *its* connection), `Admitted`
(this session's member is in the world now: give it the connection for fan-out).

Times: `now` is monotonic seconds; the world's clock is `epoch + now` (the server clock).
A bad message closes this connection only: a protocol error with its documented code,
anything else (a server bug) with `internal_error`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from server.core import protocol as P
from server.core.auth import verify_token
from server.core.members import Member
from server.core.stats import Stats
from server.core.world import World

log = logging.getLogger("avatar_stream")

_BINARY_TAG = bytes([P.POS_BINARY_TAG])


@dataclass(frozen=True)
class Send:
    frames: list[bytes]


@dataclass(frozen=True)
class Ping:
    pass


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class Claim:
    room: str


@dataclass(frozen=True)
class Replace:
    session: Session


@dataclass(frozen=True)
class Admitted:
    member: Member


Action = Send | Ping | Close | Claim | Replace | Admitted


@dataclass(frozen=True)
class SessionRules:
    """The limits a session enforces (from the server's `Config`)."""

    max_msg_rate: float = 60.0
    hello_timeout: float = 5.0
    idle_timeout: float = 30.0
    max_frame: int = 4096
    max_hello_frame: int = 4096
    secret: str | None = None
    resume_grace: float = 10.0
    owns: Callable[[str], bool] | None = None  # cluster: is the room served here already?


class Session:
    """One connection's protocol state: hello (within `hello_timeout`), then pos / ping /
    view / bye. See the module docstring for the events and actions."""

    __slots__ = (
        "_binary",
        "_claiming",
        "_drops",
        "_hello_deadline",
        "_last_ping",
        "_refill_at",
        "_tokens",
        "closed",
        "epoch",
        "last_rx",
        "member",
        "peer",
        "rules",
        "stats",
        "world",
    )

    def __init__(
        self,
        world: World,
        rules: SessionRules,
        stats: Stats,
        now: float,
        epoch: float = 0.0,
        peer: str = "",
    ) -> None:
        self.world = world
        self.rules = rules
        self.stats = stats
        self.epoch = epoch
        self.peer = peer  # for log lines only
        self.member: Member | None = None
        self.closed = False
        self.last_rx = self._last_ping = self._refill_at = now
        self._tokens = rules.max_msg_rate  # token bucket: one second's worth of burst
        self._drops = 0.0
        self._binary = False  # the hello asked for binary pos frames
        self._claiming: P.Hello | None = None  # a hello waiting for its room's claim
        self._hello_deadline: float | None = now + rules.hello_timeout

    @property
    def hello_deadline(self) -> float | None:
        """When `check` refuses the connection for not sending hello (None: sent)."""
        return self._hello_deadline

    # -- events ------------------------------------------------------------------------------

    def open(self, now: float, *, full: bool = False) -> list[Action]:
        """The connection is open; `full`: the server is over its connection limit."""
        if full:
            return self.refuse(
                P.ProtocolError("server_full", "too many connections; try again later")
            )
        return []

    def receive(self, data: bytes | str, now: float, rtt: float = 0.0) -> list[Action]:
        """One whole client message; `rtt` is the connection's round trip (s). Never raises."""
        if self.closed:
            return []
        stats, rules = self.stats, self.rules
        stats.frames_in += 1
        stats.bytes_in += len(data)
        self.last_rx = now
        # Rate limit: a token bucket refilled at max_msg_rate. Excess is dropped; a client
        # that keeps sending over the limit (drops outpace their decay) is closed.
        rate = rules.max_msg_rate
        self._tokens = min(rate, self._tokens + (now - self._refill_at) * rate)
        self._drops = max(0.0, self._drops - (now - self._refill_at) * rate * 0.5)
        self._refill_at = now
        if self._tokens < 1.0:
            stats.rate_dropped += 1
            self._drops += 1.0
            if self._drops > 2.0 * rate:
                return self.refuse(
                    P.ProtocolError("rate_limited", f"over {rate:g} messages/s, sustained")
                )
            return []
        self._tokens -= 1.0
        try:  # the hot path: a pos, no action
            m = self.member
            if m is None:
                if self._claiming is not None:  # hello is being placed: nothing else is read
                    return []
                return self._hello(P.decode_client(data, max_size=rules.max_hello_frame), now)
            if self._binary and type(data) is bytes and data[:1] == _BINARY_TAG:
                self.world.receive_pos(m, P.decode_pos_binary(data), self.epoch + now, rtt)
                return []
            msg = P.decode_client(data, max_size=rules.max_frame)
            if type(msg) is P.Pos:
                self.world.receive_pos(m, msg, self.epoch + now, rtt)
                return []
            if type(msg) is P.Ping:
                return [Send([P.encode_pong(msg.t, self.epoch + now)])]
            if type(msg) is P.View:
                self.world.set_view(m, msg.region)
                return []
            if type(msg) is P.Bye:
                self._leave()
                return [Close(P.CLOSE_NORMAL, "bye")]
            raise P.ProtocolError("expected_hello", "hello was already received")
        except Exception as e:
            return self._refused(e, "handling a message")

    def pong(self, now: float) -> None:
        """A WebSocket pong arrived (it counts as traffic for the idle timeout)."""
        self.last_rx = now

    def check(self, now: float, ping_every: float | None = None) -> list[Action]:
        """Timers: refuse after the hello deadline or `idle_timeout` without a message or
        pong; ping every `ping_every` s once admitted (None: idle_timeout / 3)."""
        if self.closed:
            return []
        rules = self.rules
        if self._hello_deadline is not None and now >= self._hello_deadline:
            return self.refuse(
                P.ProtocolError("hello_timeout", f"send hello within {rules.hello_timeout:g} s")
            )
        if now - self.last_rx > rules.idle_timeout:
            return self.refuse(
                P.ProtocolError("idle_timeout", f"nothing received for {rules.idle_timeout:g} s")
            )
        every = rules.idle_timeout / 3.0 if ping_every is None else ping_every
        if now - self._last_ping >= every and self.member is not None:
            self._last_ping = now
            return [Ping()]
        return []

    def claimed(
        self, outcome: str | P.ProtocolError | None, owned: bool, now: float
    ) -> list[Action]:
        """The cluster's answer to this session's `Claim`: None (the room is placed here),
        the owner's URL, or the `ProtocolError` the claim raised; `owned`: whether this
        worker serves the room now (it may have begun to drain meanwhile). Call it once
        per `Claim`."""
        hello, self._claiming = self._claiming, None
        if hello is None:
            raise RuntimeError("claimed() without a Claim in flight")
        if isinstance(outcome, P.ProtocolError):
            return self.refuse(outcome)
        if self.closed:
            return []
        if outcome is not None:
            return self.refuse(
                P.ProtocolError("moved", f"room {hello.room!r} is served at {outcome}", outcome)
            )
        if not owned:
            return self.refuse(P.ProtocolError("moved", "this worker is shutting down; look again"))
        try:
            return self._admit(hello, now)
        except Exception as e:
            return self._refused(e, "admitting a hello")

    def replaced(self) -> list[Action]:
        """Another connection took this one's avatar: close this one, keep the avatar."""
        if self.member is not None:
            self.member = None  # now the new connection's
            self.stats.replaced += 1
        return self.refuse(P.ProtocolError("replaced", "another connection took over this avatar"))

    def refuse(self, e: P.ProtocolError) -> list[Action]:
        """Close this connection with `e`'s error frame and close code; its avatar leaves now."""
        if self.closed:
            return []
        self._leave()
        self.stats.errors[e.code] = self.stats.errors.get(e.code, 0) + 1
        log.info("closing %s: %s (%s)", self.peer, e.code, e)
        return [Send([P.encode_error(e.code, str(e), e.url)]), Close(e.close_code, e.code)]

    def move_away(self, why: str) -> list[Action]:
        """Close with 4001 (`moved`) and no error message (nothing went wrong: the client
        looks its room up again and reconnects at once); its avatar leaves now."""
        if self.closed:
            return []
        self._leave()
        log.info("moving %s away: %s", self.peer, why)
        return [Close(P.CLOSE_MOVED, "moved")]

    def disconnected(self, clean: bool, now: float) -> None:
        """The connection is gone (once; `clean`: a close frame was exchanged). A player
        whose connection dropped (no bye, no close frame, not refused) keeps its avatar
        for `resume_grace` seconds."""
        m, self.member = self.member, None
        world = self.world
        if m is not None and not self.closed and not clean and self.rules.resume_grace > 0:
            world.detach(m, self.epoch + now)
        elif m is not None:
            m.transport = m.session = None
            world.remove(m)
        self._leave()

    # -- inside ------------------------------------------------------------------------------

    def _refused(self, e: Exception, doing: str) -> list[Action]:
        """A protocol error closes this connection with its code; anything else (a server
        bug) with internal_error: the server and the other connections stay."""
        if isinstance(e, P.ProtocolError):
            return self.refuse(e)
        log.error("%s from %s failed", doing, self.peer, exc_info=e)
        return self.refuse(P.ProtocolError("internal_error", "the server failed on a message"))

    def _hello(self, msg: P.ClientMessage, now: float) -> list[Action]:
        if not isinstance(msg, P.Hello):
            raise P.ProtocolError("expected_hello", "the first message must be hello")
        rules = self.rules
        if rules.secret is not None:
            verify_token(rules.secret, msg.token, msg.avatar, msg.room)
        self._hello_deadline = None
        if rules.owns is not None and not rules.owns(msg.room):  # one directory round trip
            self._claiming = msg
            return [Claim(msg.room)]
        return self._admit(msg, now)

    def _admit(self, msg: P.Hello, now: float) -> list[Action]:
        world, server_time = self.world, self.epoch + now
        prev = world.player(msg.room, msg.avatar)
        prev_session = prev.session if prev is not None else None
        prev_resume = prev.resume if prev is not None else None
        m = world.admit(msg, server_time)
        out: list[Action] = []
        if prev_session is not None:  # another connection had this avatar: it goes
            out.append(Replace(prev_session))
        if m is prev and msg.resume == prev_resume:
            self.stats.resumed += 1
        m.session = self
        self.member = m
        self._binary = m.pos_encoding == "binary"
        self._last_ping = now
        out += [Admitted(m), Send([world.welcome(m, server_time)]), Ping()]
        return out  # the ping: the first round trip, for the clock-offset estimate

    def _leave(self) -> None:
        self.closed = True
        self._hello_deadline = None
        m, self.member = self.member, None
        if m is not None:
            m.transport = m.session = None
            self.world.remove(m)
