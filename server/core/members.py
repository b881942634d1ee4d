"""Who is connected: a room's members, each one's clock offset and outbox. No asyncio."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from server.core import protocol as P

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


@dataclass(slots=True)
class Outbox:
    """One member's frames for this tick, filled by fan-out and emptied by the writer:
    join/leave control frames in order, then its newest state frame (if any)."""

    controls: list[bytes] = field(default_factory=list)
    state: bytes | None = None


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
    # Newest sample (t, p, seq, server-clock time) received before the engine gave this
    # avatar a slot (then samples are staged in the engine as they arrive).
    pending: tuple[float, tuple[float, float, float], int, float] | None = None
    newest_t: float = float("-inf")
    seen: dict[int, tuple[int, str]] = field(default_factory=dict)  # uid -> (handle, id) in view
    view_sig: int = -1  # hash of the uids in view last tick (a changed view changes it)
    outbox: Outbox = field(default_factory=lambda: Outbox())  # this tick's frames
    dropped: int = 0  # consecutive state frames dropped (slow socket)
    version: int = P.VERSION  # protocol version of the connection (hello.v)
    pos_encoding: str = "msgpack"  # how it sends pos (hello.pos_encoding; players only)
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
        # Area-of-interest cache: the visible uids it was computed for, one view per row
        # (padded with -1 to the longest view) and each view's length.
        self.aoi_key: bytes | None = None
        self.aoi_views = np.empty((0, 0), dtype=np.int64)
        self.aoi_lens = np.empty(0, dtype=np.int64)
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
