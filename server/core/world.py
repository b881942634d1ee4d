"""The tick core behind the app: rooms, members, clocks and per-client frames. No asyncio.

`World` owns the `TickEngine` and everything the app needs between sockets and model:

    member = world.admit(hello, now)         # ProtocolError if refused
    world.receive_pos(member, pos, now)      # any number of times; the newest sample wins
    world.remove(member)                     # on disconnect
    # each tick, in this order:
    world.begin_tick()                       # loop thread: joins/leaves and samples into the engine
    result = world.step()                    # worker thread allowed: the batched model step
    world.fan_out(result, server_time)       # loop thread: member.controls / member.state filled

Only `begin_tick`, `step` and `fan_out` touch the engine, and the app never runs them
concurrently; the other calls only touch the world's own tables, so they are safe while
`step` runs in a worker thread. Times passed in (`now`, `server_time`) are the server clock.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
from dataclasses import dataclass, field

import numpy as np

from server.core import protocol as P
from server.core.downlink import DownlinkReckoner
from server.core.engine import TickEngine, TickResult
from server.core.interest import InterestGrid, in_region

Region = tuple[float, float, float, float]


class ClockOffset:
    """Estimate of (server clock - client clock) for one connection.

    Each sample's `server_recv - client_t` is the offset plus that message's one-way delay;
    the minimum over recent samples is the offset plus the smallest delay. The estimate
    follows a new minimum at once and otherwise rises by at most `drift` seconds per second
    (clock drift, a route change); half the round trip is then subtracted.
    """

    def __init__(self, drift: float = 1e-3) -> None:
        self.drift = drift
        self.base: float | None = None
        self._last = 0.0
        self.rtt = 0.0

    def update(self, client_t: float, server_recv: float) -> None:
        sample = server_recv - client_t
        if self.base is None:
            self.base = sample
        else:
            self.base = min(sample, self.base + self.drift * max(0.0, server_recv - self._last))
        self._last = server_recv

    @property
    def offset(self) -> float:
        """Seconds to add to a client time to get the server time (0 before any sample)."""
        return 0.0 if self.base is None else self.base - 0.5 * self.rtt


@dataclass(eq=False)
class Member:
    """One connection admitted by `World.admit`: a player (avatar) or a spectator."""

    uid: int
    room: Room
    avatar: str | None
    handle: int | None
    region: Region | None = None
    resume: str = ""
    clock: ClockOffset = field(default_factory=ClockOffset)
    slot: int = -1  # engine slot once joined there (players)
    # Newest sample received before the engine gave this avatar a slot (then it is
    # written to the world's per-slot input arrays instead).
    pending: tuple[float, tuple[float, float, float], int, float] | None = None
    newest_t: float = float("-inf")
    seen: dict[int, tuple[int, str]] = field(default_factory=dict)  # uid -> (handle, id) in view
    view_sig: int = -1  # hash of the uids in view last tick (a changed view changes it)
    # Outbox, filled by fan_out, emptied by the app: join/leave in order, then the newest state.
    controls: list[bytes] = field(default_factory=list)
    state: bytes | None = None
    dropped: int = 0  # consecutive state frames dropped (slow socket)
    version: int = P.VERSION  # protocol version of the connection (hello.v)
    last_state: float = float("-inf")  # server time of its last state frame
    resync: bool = False  # v2: a state frame was dropped; the next one carries the whole view
    detached_at: float | None = None  # server time its connection dropped (None: connected)
    transport: object = None  # the app's handle for this member's connection
    session: object = None  # and for its protocol state

    @property
    def is_player(self) -> bool:
        return self.avatar is not None


class Room:
    """Players by avatar id, spectators, and the room-scoped uint16 handles."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.players: dict[str, Member] = {}
        self.spectators: list[Member] = []
        # Area-of-interest cache: the visible uids it was computed for, one view per row.
        self.aoi_key: bytes | None = None
        self.aoi_views: list[np.ndarray] = []
        self._free: list[int] = []
        self._next = 0

    def take_handle(self) -> int:
        if self._free:
            return heapq.heappop(self._free)
        self._next += 1
        return self._next - 1

    def give_handle(self, handle: int) -> None:
        heapq.heappush(self._free, handle)

    def __len__(self) -> int:
        return len(self.players) + len(self.spectators)


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
        self.grid = InterestGrid(aoi_radius, aoi_cap)
        self.aoi_refresh = aoi_refresh
        self.spectator_cap = spectator_cap
        self.max_room_avatars = min(max_room_avatars, 65535)
        self.tick_hz = tick_hz
        self.horizons = tuple(float(h) for h in engine.horizons)
        self.rooms: dict[str, Room] = {}
        self._uids = itertools.count(1)
        # Newest sample per engine slot since the last tick (latest wins), with the clock
        # offset that anchors it on the server clock; flushed to the engine in one call.
        self._in_has = np.zeros(engine.capacity, dtype=bool)
        self._in_t = np.zeros(engine.capacity)
        self._in_p = np.zeros((engine.capacity, 3))
        self._in_seq = np.zeros(engine.capacity, dtype=np.int64)
        self._in_off = np.zeros(engine.capacity)
        self._to_join: dict[int, Member] = {}
        self._to_leave: list[str] = []
        self._anchor = np.zeros(engine.capacity)  # server-clock time of each slot's sample
        self.n_players = 0  # players in rooms, detached ones included
        self.n_spectators = 0
        self.n_detached = 0
        self._detached: dict[int, Member] = {}  # uid -> player waiting for a resume
        self.downlink = DownlinkReckoner(
            engine.capacity, self.horizons, dr_threshold, dr_heartbeat, dr_lookahead
        )
        self.records_sent: dict[int, int] = {}  # protocol version -> records in state frames
        self.frames_skipped = 0  # v2 members given no state frame on a tick
        self.dr_resends = 0  # records due by the downlink rule

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
        m.controls = []
        m.state = None
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
            if m.slot >= 0:
                self._in_has[m.slot] = False  # the slot may be reused before the next flush
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
        if m.slot < 0:  # joins the engine at the next tick
            m.pending = (pos.t, pos.p, pos.seq, m.clock.offset)
        else:
            self._store(m.slot, pos.t, pos.p, pos.seq, m.clock.offset)
        return True

    def _store(self, slot: int, t: float, p, seq: int, offset: float) -> None:
        self._in_has[slot] = True
        self._in_t[slot] = t
        self._in_p[slot] = p
        self._in_seq[slot] = seq
        self._in_off[slot] = offset

    def set_view(self, m: Member, region: Region | None) -> None:
        """A spectator's region (None: whole room). Players' views follow their avatar; ignored."""
        if not m.is_player:
            m.region = region

    # -- the tick -----------------------------------------------------------------------------

    def begin_tick(self) -> None:
        """Apply queued joins/leaves to the engine and hand it every pending sample."""
        eng = self.engine
        for key in self._to_leave:
            eng.leave(key)
        self._to_leave.clear()
        for m in self._to_join.values():
            m.slot = eng.join(self._key(m), m.room.name)
        if len(self._anchor) < eng.capacity:  # joins grew the engine
            extra = eng.capacity - len(self._anchor)
            self._anchor = np.concatenate([self._anchor, np.zeros(extra)])
            self._in_has = np.concatenate([self._in_has, np.zeros(extra, dtype=bool)])
            self._in_t = np.concatenate([self._in_t, np.zeros(extra)])
            self._in_p = np.concatenate([self._in_p, np.zeros((extra, 3))])
            self._in_seq = np.concatenate([self._in_seq, np.zeros(extra, dtype=np.int64)])
            self._in_off = np.concatenate([self._in_off, np.zeros(extra)])
        self.downlink.grow(eng.capacity)
        self.downlink.forget([m.slot for m in self._to_join.values()])
        for m in self._to_join.values():
            if m.pending is not None:
                self._store(m.slot, *m.pending)
                m.pending = None
        self._to_join.clear()
        slots = np.flatnonzero(self._in_has)
        if not len(slots):
            return
        self._in_has[slots] = False
        t = self._in_t[slots]
        anchor = t + self._in_off[slots]  # the samples' times on the server clock
        ok = eng.submit_many(slots, t, self._in_p[slots], self._in_seq[slots], clock=anchor)
        self._anchor[slots[ok]] = anchor[ok]

    def step(self) -> TickResult:
        """The batched model step (may run in a worker thread; see the module docstring)."""
        return self.engine.tick()

    def fan_out(self, result: TickResult, server_time: float) -> list[Member]:
        """Fill every member's outbox for this tick; returns the members with output.

        v1 members get every avatar of their view with its newest prediction. v2 members
        get only the records that are due by the downlink rule (`DownlinkReckoner`: off
        the path last sent, heartbeat, first path), plus the path last sent of every avatar
        that enters their view (all of it after a dropped frame: `Member.resync`), and no
        state frame when nothing is due, except one empty frame per heartbeat (a clock).
        """
        eng = self.engine
        H = len(self.horizons)
        dr = self.downlink
        out: list[Member] = []
        for room in self.rooms.values():
            players = [m for m in room.players.values() if m.slot >= 0]
            slots = np.fromiter((m.slot for m in players), dtype=np.int64, count=len(players))
            live = ~np.isnan(eng.last_t[slots])  # players with a prediction are visible
            vis = [m for m, ok in zip(players, live, strict=True) if ok]
            vslots = slots[live]
            pos, anchor = eng.last_pos[vslots], self._anchor[vslots]
            off, seq = eng.last_off[vslots], eng.last_seq[vslots]
            due = dr.due(vslots, anchor, pos, server_time, off)
            dr.commit(vslots[due], anchor[due], pos[due], off[due], seq[due], server_time)
            self.dr_resends += int(due.sum())
            sent_off = dr.off[vslots]
            dims = 3 if (np.abs(off[..., 2]) >= 5e-4).any() else 2
            if dims == 2 and (np.abs(sent_off[..., 2]) >= 5e-4).any():
                dims = 3
            handles = np.fromiter((m.handle for m in vis), dtype=np.int64, count=len(vis))
            versions = {m.version for m in players} | {m.version for m in room.spectators}
            rec1 = rec2 = None
            if 1 in versions:  # the newest prediction of everyone
                rec1 = P.pack_records(handles, server_time - anchor, seq, pos, off, dims)
            if 2 in versions:  # the path each viewer was last sent
                rec2 = P.pack_records(
                    handles,
                    server_time - dr.anchor[vslots],
                    dr.seq[vslots],
                    dr.pos[vslots],
                    sent_off,
                    dims,
                )
            framer = P.StateFramer(result.tick, server_time, H, dims)
            uids = np.fromiter((m.uid for m in vis), dtype=np.int64, count=len(vis))
            indptr, indices = self._views(room, pos, uids, result.tick)
            # One gather for every viewer of the room (raw bytes: a structured gather is
            # slower); each viewer's frame takes a slice of it. v2: only the due rows.
            size = P.record_dtype(H, dims).itemsize
            bounds = indptr.tolist()
            if rec1 is not None:
                all1 = memoryview(rec1.view(f"V{size}")[indices].tobytes())
            if rec2 is not None:
                due_flat = due[indices]
                all2 = memoryview(rec2.view(f"V{size}")[indices[due_flat]].tobytes())
                cum_due = np.zeros(len(indices) + 1, dtype=np.int64)
                np.cumsum(due_flat, out=cum_due[1:])
                due_bounds = cum_due[indptr].tolist()
            view_uids = uids[indices]
            # A view that did not change since the last tick needs no join/leave diff: one
            # signature per viewer (a sum of hashed uids) tells which did.
            cum = np.zeros(len(indices) + 1, dtype=np.uint64)
            np.cumsum(_mix(view_uids), out=cum[1:])
            sigs = (cum[indptr[1:]] - cum[indptr[:-1]]).tolist()
            row_of_viewer = {m.uid: i for i, m in enumerate(vis)}  # every visible one views
            for m in players:
                if m.detached_at is not None:  # no connection: visible to others only
                    continue
                i = row_of_viewer.get(m.uid)
                if i is None:  # no position yet: an empty view
                    if m.seen:
                        self._diff(m, [], [], vis)
                    m.view_sig = -1
                    self._frame(m, framer, 0, b"", server_time)
                else:
                    a, b = bounds[i], bounds[i + 1]
                    entered: list[int] = []
                    if sigs[i] != m.view_sig or b - a != len(m.seen):
                        entered = self._diff(m, view_uids[a:b].tolist(), indices[a:b].tolist(), vis)
                        m.view_sig = sigs[i]
                    if m.version == 1:
                        self._frame(m, framer, b - a, all1[a * size : b * size], server_time)
                    elif entered or m.resync:
                        rows = self._v2_rows(m, indices[a:b], due, entered)
                        self._frame(m, framer, len(rows), rec2[rows].tobytes(), server_time)
                    else:
                        c, d = due_bounds[i], due_bounds[i + 1]
                        self._frame(m, framer, d - c, all2[c * size : d * size], server_time)
                if m.state is not None or m.controls:
                    out.append(m)
            for m in room.spectators:
                idx = in_region(pos, m.region, self.spectator_cap)
                entered = self._diff(m, uids[idx].tolist(), idx.tolist(), vis)
                if m.version == 1:
                    self._frame(m, framer, len(idx), rec1[idx].tobytes(), server_time)
                else:
                    rows = self._v2_rows(m, idx, due, entered)
                    self._frame(m, framer, len(rows), rec2[rows].tobytes(), server_time)
                if m.state is not None or m.controls:
                    out.append(m)
        return out

    @staticmethod
    def _v2_rows(m: Member, view: np.ndarray, due: np.ndarray, entered: list[int]) -> np.ndarray:
        """The rows of `view` a v2 member gets: the due ones and those that just entered
        (every one after a dropped frame)."""
        if m.resync:
            m.resync = False
            return view
        pick = due[view]
        if entered:
            pick |= np.isin(view, entered)
        return view[pick]

    def _frame(
        self, m: Member, framer: P.StateFramer, n: int, records: bytes | memoryview, now: float
    ) -> None:
        """Queue the state frame of `n` records for `m`; for a v2 member an empty one only
        once per heartbeat (the rest are skipped, and counted)."""
        if n == 0 and m.version >= 2 and now - m.last_state < self.downlink.heartbeat - 1e-9:
            self.frames_skipped += 1
            return
        m.state = framer.frame(n, records)
        m.last_state = now
        self.records_sent[m.version] = self.records_sent.get(m.version, 0) + n

    def _views(
        self, room: Room, pos: np.ndarray, uids: np.ndarray, tick: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """CSR views of every visible player (rows of `pos`). With aoi_refresh k > 1 each
        view is recomputed every k-th tick, a k-th of the rows per tick (so no tick pays
        for all); a change in who is visible recomputes every row at once."""
        k, n = self.aoi_refresh, len(uids)
        key = uids.tobytes()
        if k == 1 or n == 0 or room.aoi_key != key:
            indptr, indices = self.grid.query(pos)
            if k > 1:
                room.aoi_key = key
                room.aoi_views = np.split(indices, indptr[1:-1])
            return indptr, indices
        views = room.aoi_views
        rows = np.arange(tick % k, n, k)
        if len(rows):
            sub_ptr, sub_idx = self.grid.query(pos, rows)
            for r, view in zip(rows.tolist(), np.split(sub_idx, sub_ptr[1:-1]), strict=True):
                views[r] = view
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, views), np.int64, n), out=indptr[1:])
        return indptr, np.concatenate(views)

    @staticmethod
    def _diff(m: Member, now_uids: list[int], rows: list[int], vis: list[Member]) -> list[int]:
        """Queue leave / join frames so `m.seen` becomes `now_uids` (rows index `vis`);
        returns the rows that joined."""
        seen = m.seen
        current = set(now_uids)
        entered: list[int] = []
        if current != seen.keys():
            gone = [u for u in seen if u not in current]
            if gone:
                m.controls.append(
                    P.encode_leave([seen[u][1] for u in gone], [seen[u][0] for u in gone])
                )
                for u in gone:
                    del seen[u]
            entered = [i for i, u in zip(rows, now_uids, strict=True) if u not in seen]
            if entered:
                new = [vis[i] for i in entered]
                for a in new:
                    seen[a.uid] = (a.handle, a.avatar)
                m.controls.append(P.encode_join([a.avatar for a in new], [a.handle for a in new]))
        return entered


def _mix(uids: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each uid (splitmix64's finaliser), for order-free view signatures."""
    z = uids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))
