"""The tick core behind the app: rooms, members, clocks and per-client frames. No asyncio.

`World` owns the `TickEngine` and everything the app needs between sockets and model:

    member = world.admit(hello, now)         # ProtocolError if refused
    world.receive_pos(member, pos, now)      # any number of times; the newest sample wins
    world.remove(member)                     # on disconnect
    # each tick, in this order:
    world.begin_tick()                       # loop thread: joins/leaves into the engine
    result = engine.tick()                   # or start_tick on the loop, finish_tick anywhere
    world.fan_out(result, server_time)       # loop thread: every member.outbox filled

One input path: the protocol checks a `pos`'s fields, `receive_pos` its order (newest
wins) and stages it in the engine at once (`TickEngine.stage`); nothing else buffers it.
Joins and leaves wait for `begin_tick`, so while a step's second half (`finish_tick`)
runs in a thread the loop may go on receiving. Fan-out (`server.core.fanout`) reads only
the tick's `TickResult`. Times passed in (`now`, `server_time`) are the server clock.
"""

from __future__ import annotations

import itertools
import secrets

from server.core import protocol as P
from server.core.downlink import DownlinkReckoner
from server.core.engine import TickEngine
from server.core.fanout import FanOut
from server.core.interest import InterestGrid
from server.core.members import ClockOffset, Member, Outbox, Region, Room
from server.core.tick_io import TickResult


class World:
    """Rooms, members and the fan-out around one `TickEngine`; see the module docstring."""

    def __init__(
        self,
        engine: TickEngine,
        *,
        aoi_radius: float = 30.0,
        aoi_cap: int = 64,
        spectator_cap: int = 1024,
        max_room_avatars: int = 4096,
        tick_hz: float = 20.0,
        aoi_refresh: int = 1,
        dr_threshold: float = 0.02,
        dr_heartbeat: float = 1.0,
        dr_lookahead: float = 0.3,
    ) -> None:
        if aoi_refresh < 1:
            raise ValueError("aoi_refresh must be >= 1")
        self.engine = engine
        self.spectator_cap = spectator_cap
        self.max_room_avatars = min(max_room_avatars, 65535)
        self.tick_hz = tick_hz
        self.horizons = tuple(float(h) for h in engine.horizons)
        self.rooms: dict[str, Room] = {}
        self._uids = itertools.count(1)
        self._to_join: dict[int, Member] = {}
        self._to_leave: list[str] = []
        self.n_players = 0  # players in rooms, detached ones included
        self.n_spectators = 0
        self.n_detached = 0
        self._detached: dict[int, Member] = {}  # uid -> player waiting for a resume
        self.downlink = DownlinkReckoner(
            engine.capacity, self.horizons, dr_threshold, dr_heartbeat, dr_lookahead
        )
        self.fanout = FanOut(
            self.downlink, InterestGrid(aoi_radius, aoi_cap), aoi_refresh, spectator_cap
        )

    # -- membership (loop thread, any time) ---------------------------------------------------

    def admit(self, hello: P.Hello, now: float) -> Member:
        """Admit a connection that sent `hello`. Raises ProtocolError room_full.

        A player id already in the room (connected, or detached within its grace period)
        is taken over: with that member's `resume` token the same member comes back (slot,
        handle, hidden state); without it the old member is removed and a fresh one joins.
        The caller closes the old connection, if any (`player` finds it first).
        """
        room = self.rooms.get(hello.room)
        if room is None:
            room = self.rooms[hello.room] = Room(hello.room)
        if hello.avatar is None:
            m = Member(next(self._uids), room, None, None, region=hello.region)
            room.spectators.append(m)
            self.n_spectators += 1
        else:
            old = room.players.get(hello.avatar)
            if (
                old is not None
                and hello.resume
                and secrets.compare_digest(hello.resume.encode(), old.resume.encode())
            ):
                m = self._reattach(old)
            else:
                if old is not None:
                    self.remove(old)
                    room = self.rooms.setdefault(hello.room, room)
                if len(room.players) >= self.max_room_avatars:
                    self._drop_empty(room)
                    raise P.ProtocolError("room_full", f"room {room.name!r} is full")
                m = Member(next(self._uids), room, hello.avatar, room.take_handle())
                room.players[hello.avatar] = m
                self._to_join[m.uid] = m
                self.n_players += 1
        m.resume = secrets.token_urlsafe(16)
        m.version = hello.v
        m.pos_encoding = hello.pos_encoding if m.is_player else "msgpack"
        return m

    def player(self, room: str, avatar: str | None) -> Member | None:
        """The member playing `avatar` in `room` (connected or detached), if any."""
        r = self.rooms.get(room)
        return None if r is None or avatar is None else r.players.get(avatar)

    def _reattach(self, m: Member) -> Member:
        if self._detached.pop(m.uid, None) is not None:
            self.n_detached -= 1
        m.detached_at = None
        m.transport = m.session = None
        m.seen.clear()  # the new connection knows no handles: joins for its whole view
        m.view_sig = -1
        m.outbox = Outbox()
        m.dropped = 0
        m.last_state = float("-inf")
        m.resync = False
        m.clock = ClockOffset()
        return m

    def detach(self, m: Member, now: float) -> None:
        """A player's connection dropped: keep its avatar (visible, slot, hidden state) for
        a reconnect with its resume token until `expire` removes it. Spectators go now."""
        if not m.is_player or m.room.players.get(m.avatar) is not m:
            self.remove(m)
            return
        m.transport = m.session = None
        if m.uid not in self._detached:
            m.detached_at = now
            self._detached[m.uid] = m
            self.n_detached += 1

    def expire(self, now: float, grace: float) -> int:
        """Remove players detached for `grace` seconds or more; returns how many."""
        gone = [m for m in self._detached.values() if now - m.detached_at >= grace]
        for m in gone:
            self.remove(m)
        return len(gone)

    def welcome(self, m: Member, server_time: float) -> bytes:
        """The `welcome` frame for a just admitted member."""
        return P.encode_welcome(
            P.Welcome(
                avatar=m.avatar,
                room=m.room.name,
                tick_hz=self.tick_hz,
                horizons=self.horizons,
                model=self.engine.version,
                server_time=server_time,
                resume=m.resume,
                handle=m.handle,
                v=m.version,
                dr=None
                if m.version < 2
                else {"threshold": self.downlink.threshold, "heartbeat": self.downlink.heartbeat},
                pos_encoding=m.pos_encoding,
            )
        )

    def remove(self, m: Member) -> None:
        """Forget a member (idempotent). Its avatar leaves everyone's view at the next tick."""
        room = m.room
        if m.is_player:
            if room.players.get(m.avatar) is not m:
                return
            if self._detached.pop(m.uid, None) is not None:
                self.n_detached -= 1
                m.detached_at = None
            del room.players[m.avatar]
            room.give_handle(m.handle)
            if self._to_join.pop(m.uid, None) is None:
                self._to_leave.append(self._key(m))
            m.slot = -1
            self.n_players -= 1
        else:
            if m not in room.spectators:
                return
            room.spectators.remove(m)
            self.n_spectators -= 1
        self._drop_empty(room)

    def _drop_empty(self, room: Room) -> None:
        if not len(room) and self.rooms.get(room.name) is room:
            del self.rooms[room.name]

    @staticmethod
    def _key(m: Member) -> str:
        return f"#{m.uid}"  # engine key: unique per connection, never reused

    # -- input (loop thread, any time) -----------------------------------------------------

    def receive_pos(self, m: Member, pos: P.Pos, now: float, rtt: float = 0.0) -> bool:
        """Keep `pos` as the member's newest sample; False if it is not newer than the last.

        Raises ProtocolError not_a_player for a spectator.
        """
        if not m.is_player:
            raise P.ProtocolError("not_a_player", "spectators cannot send pos")
        if not pos.t > m.newest_t:
            return False
        m.newest_t = pos.t
        m.clock.rtt = rtt
        m.clock.update(pos.t, now)
        anchor = pos.t + m.clock.offset  # the sample's time on the server clock
        if m.slot < 0:  # joins the engine at the next tick
            m.pending = (pos.t, pos.p, pos.seq, anchor)
        else:  # the protocol checked the fields, this the order: staged as it is
            self.engine.stage(m.slot, pos.t, pos.p, pos.seq, anchor)
        return True

    def set_view(self, m: Member, region: Region | None) -> None:
        """A spectator's region (None: whole room). Players' views follow their avatar; ignored."""
        if not m.is_player:
            m.region = region

    # -- the tick -----------------------------------------------------------------------------

    def begin_tick(self) -> None:
        """Apply queued joins/leaves to the engine and stage the first samples of the
        avatars that joined (the others' samples are staged as they arrive)."""
        eng = self.engine
        for key in self._to_leave:
            eng.leave(key)
        self._to_leave.clear()
        for m in self._to_join.values():
            m.slot = eng.join(self._key(m), m.room.name)
        self.downlink.grow(eng.capacity)
        self.downlink.forget([m.slot for m in self._to_join.values()])
        for m in self._to_join.values():
            if m.pending is not None:
                eng.stage(m.slot, *m.pending)
                m.pending = None
        self._to_join.clear()

    def fan_out(self, result: TickResult, server_time: float) -> list[Member]:
        """Fill every member's outbox for this tick (`server.core.fanout.FanOut`); returns
        the members with output."""
        return self.fanout.run(self.rooms.values(), result, server_time)
