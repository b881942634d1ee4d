"""A worker's membership of the cluster: room-sharded workers sharing a Redis room directory
(docs/scaling.md).

    python -m server --redis redis://127.0.0.1:6379/0 --port 8701            # one worker
    python -m server --workers 4 --redis redis://127.0.0.1:6379/0 --port 8700 # 8700..8703

Rooms are the unit of sharding: a room lives in one worker process, with its members,
handles, engine slots and fan-out; nothing on the tick path crosses processes. Workers
that share a Redis (`server.cluster.directory.RoomDirectory`) form one cluster, on one machine or
many.

`ClusterMember` is what a worker adds to its server:

- start: register in the directory (Redis unreachable: `DirectoryUnavailable`, which the
  CLI turns into one clear line and exit status 2), then heartbeat every ttl / 4 from its
  own task (never on the tick path);
- `hello` for a room it does not own yet: one atomic claim (placed here if it has no live
  owner); owned elsewhere: the `moved` error with the owner's URL (close 4001);
- `GET /route?room=R`: never a Redis round trip: answered from this worker's view of the
  directory, refreshed with each heartbeat (the live workers and every placed room's
  owner, `RoomDirectory.rooms`): a placed room's live owner, whichever worker is asked;
  a room nobody (alive) owns: the least-loaded live worker, a suggestion (the claim at
  `hello` decides; an answer at most one heartbeat stale costs the client one `moved`
  hop);
- Redis lost while running: the rooms it owns keep being served, new rooms are refused
  (`server_full`, try again), one log line, counted in /metrics; when Redis is back the
  heartbeat registers the worker and its rooms again;
- SIGTERM: drain: no new rooms, its rooms released, every client closed with 4001
  (`moved`, no error message: look the room up again), exit when they are gone or after
  `--shutdown-timeout`.

The worker it belongs to is seen through `ClusterHost`: its rooms, its connection count,
and two ways to tell clients to move; nothing else of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Protocol

from server.cluster.directory import DirectoryError, Owner, RoomDirectory
from server.core import protocol as P

if TYPE_CHECKING:
    from server.serve.config import Config

log = logging.getLogger("avatar_stream.cluster")

CAPACITY = 700  # clients that make load 1.0 (the measured single-process ceiling)
SUGGESTED_S = 3.0  # a route answer counts as load on its worker this long
ROUTE_LINGER = 1.0  # seconds a drained worker keeps answering /route after its clients left


class ClusterHost(Protocol):
    """What a cluster member needs of the worker's server (`AvatarServer` is one)."""

    @property
    def n_connections(self) -> int:
        """Open client connections."""
        ...

    def room_names(self) -> set[str]:
        """The rooms with members now."""
        ...

    def move_room(self, room: str, why: str) -> int:
        """Tell every client of `room` to look the room up again (close 4001, `why` in the
        log only) and return how many were told; members without a connection leave."""
        ...

    def move_unplaced(self, why: str) -> None:
        """The same for the connections that are in no room yet."""
        ...

    async def wait_idle(self) -> None:
        """Return once no client connection is left."""
        ...


def advertised_url(config: Config, port: int) -> str:
    """The WebSocket URL clients use to reach the worker on `port`: `--advertise-url`
    (for one worker), else ws://HOST:PORT/ with HOST the listening interface, or this
    machine's host name when it listens on every interface."""
    if config.advertise_url:
        return config.advertise_url
    host = config.host
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"ws://{host}:{port}/"


def process_id(config: Config, port: int, nonce: str) -> str:
    """The directory id of the worker on `port` started with `nonce` (host:port:nonce)."""
    from urllib.parse import urlsplit

    u = urlsplit(advertised_url(config, port))
    return f"{u.hostname}:{u.port}:{nonce}"


class ClusterMember:
    """One worker's membership of the cluster; see the module docstring."""

    def __init__(self, host: ClusterHost, config: Config, port: int) -> None:
        self.host = host
        self.config = config
        self.url = advertised_url(config, port)
        self.directory = RoomDirectory(
            config.redis, prefix=config.cluster_prefix, ttl=config.directory_ttl
        )
        if config.cluster_nonce:
            self.directory.nonce = config.cluster_nonce
        self.moved = 0  # hellos answered with `moved`
        self.refused = 0  # hellos refused because the directory could not be reached
        self.moved_away = 0  # clients of a room told to look it up again (close 4001)
        self.outages = 0  # times the directory became unreachable
        self._peers: list[tuple[str, str, float]] = []  # (id, url, load): last heartbeat's view
        # room -> its live owner: the directory's room map as of the last heartbeat, plus
        # the owners that claims found since
        self._rooms: dict[str, Owner] = {}
        self._suggested: dict[str, tuple[float, str]] = {}  # room -> (time, url) of a route
        self._claims: dict[str, asyncio.Future] = {}  # room -> its claim in flight
        self._down = False
        self._task: asyncio.Task | None = None
        self._beaten = asyncio.Event()  # set when a heartbeat round ends (then replaced)

    @property
    def available(self) -> bool:
        return not self._down

    @property
    def peers(self) -> list[tuple[str, str, float]]:
        """The live workers taking rooms, (process id, url, load), as of the last heartbeat."""
        return list(self._peers)

    async def start(self) -> None:
        """Register and start heartbeating. Raises DirectoryUnavailable (Redis unreachable)."""
        await self.directory.start(self.url, CAPACITY)
        with contextlib.suppress(DirectoryError):
            self._peers = await self.directory.processes()
            self._rooms = await self.directory.rooms()
        log.info(
            "cluster: registered as %s in %s", self.directory.process_id, self.directory.safe_url
        )
        self._task = asyncio.get_running_loop().create_task(self._beat_forever(), name="directory")

    def owns(self, room: str) -> bool:
        """Whether this worker serves `room` now (no Redis round trip)."""
        return room in self.directory.owned and not self.directory.draining

    async def claim(self, room: str) -> str | None:
        """Claim `room` for a `hello`: None when this worker serves it now, else the URL of
        the worker that does. Raises ProtocolError moved (draining) or server_full (the
        directory cannot be reached and the room is not served here)."""
        if self.directory.draining:
            raise P.ProtocolError("moved", "this worker is shutting down; look the room up again")
        claim = self._claims.get(room)
        if claim is None:  # one claim per room in flight: the hellos of a crowd share it
            claim = self._claims[room] = asyncio.ensure_future(
                self.directory.claim(room, here=True)
            )
            claim.add_done_callback(lambda f: self._claim_done(room, f))
        try:
            owner = await asyncio.shield(claim)
        except DirectoryError as e:
            self.refused += 1
            raise P.ProtocolError(
                "server_full", f"the room directory cannot be reached ({type(e).__name__})"
            ) from None
        if owner.process_id == self.directory.process_id:
            return None
        self._rooms[room] = owner
        self.moved += 1
        return owner.url

    def _claim_done(self, room: str, claim: asyncio.Future) -> None:
        self._claims.pop(room, None)
        if not claim.cancelled():
            claim.exception()  # retrieved: the hellos that awaited it have raised it

    def route(self, room: str) -> str:
        """Where a client of `room` should connect (synchronous, no Redis round trip: from
        this worker's view as of its last heartbeat). A placed room: its owner, if that
        worker is alive and takes clients (not draining); otherwise a suggestion."""
        if self.owns(room):
            return self.url
        me = self.directory.process_id
        peers = [p for p in self._peers if not (self.directory.draining and p[0] == me)]
        owner = self._rooms.get(room)
        if owner is not None and owner.process_id in {pid for pid, _, _ in peers}:
            return self.url if owner.process_id == me else owner.url
        if not peers:
            return self.url
        # A room suggested in the last few seconds gets the same answer (the crowd that
        # joins a new room goes to one worker, whose claim at `hello` then places it), and
        # counts as load until its clients show in the heartbeats: consecutive new rooms
        # spread over the workers.
        now = time.monotonic()
        self._suggested = {
            r: (t, u) for r, (t, u) in self._suggested.items() if now - t < SUGGESTED_S
        }
        urls = {u for _, u, _ in peers}
        if room in self._suggested and self._suggested[room][1] in urls:
            return self._suggested[room][1]
        extra: dict[str, int] = {}
        for _, u in self._suggested.values():
            extra[u] = extra.get(u, 0) + 1
        _, url, _ = min(peers, key=lambda p: p[2] + extra.get(p[1], 0) / CAPACITY)
        self._suggested[room] = (now, url)
        return url

    async def next_beat(self) -> None:
        """Wait for the end of the next heartbeat round (tests, tools)."""
        await self._beaten.wait()

    async def _beat_forever(self) -> None:
        period = self.directory.ttl / 4
        while True:
            await self._beat()
            done, self._beaten = self._beaten, asyncio.Event()
            done.set()
            await asyncio.sleep(period)

    async def _beat(self) -> None:
        host, directory = self.host, self.directory
        rooms = host.room_names()
        try:
            for room in directory.owned - rooms - self._claims.keys():  # emptied: free at once
                await directory.release(room)
            clients = host.n_connections
            hb = await directory.heartbeat(clients / CAPACITY, rooms, clients)
            self._peers = await directory.processes()
            self._rooms = await directory.rooms()
            # a suggested room that is placed now counts in its owner's load already
            for room in self._suggested.keys() & self._rooms.keys():
                del self._suggested[room]
        except DirectoryError as e:
            if not self._down:
                self._down = True
                self.outages += 1
                log.error(
                    "cluster: the room directory %s cannot be reached (%s); still serving "
                    "the %d rooms here, refusing new ones until it is back",
                    directory.safe_url, e, len(rooms),
                )  # fmt: skip
            return
        if self._down:
            self._down = False
            log.warning("cluster: the room directory %s is back", directory.safe_url)
        for room in hb.lost:  # another worker owns it now (this one was cut off too long)
            self.close_room(room, "this room is now served by another worker")

    def close_room(self, room: str, why: str) -> None:
        """Tell every client of `room` to move: close 4001, no error message (they look
        the room up again)."""
        self.moved_away += self.host.move_room(room, why)

    async def drain(self, timeout: float) -> None:
        """Stop taking rooms, release this worker's rooms, tell every client to move, and
        wait (at most `timeout` s) for them to go, then ROUTE_LINGER s more (the listener
        still open: the clients it moved ask it `GET /route` first, and a browser may know
        no other worker). Never raises for Redis trouble."""
        host = self.host
        deadline = asyncio.get_running_loop().time() + timeout
        with contextlib.suppress(DirectoryError):
            await self.directory.drain()
        rooms = sorted(host.room_names())
        with contextlib.suppress(DirectoryError):
            for room in rooms:
                await self.directory.release(room)
        n = host.n_connections
        for room in rooms:
            self.close_room(room, "this worker is shutting down; look the room up again")
        host.move_unplaced("this worker is shutting down")
        log.info("cluster: draining: %d clients told to move", n)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(host.wait_idle(), timeout)
        if n:
            left = deadline - asyncio.get_running_loop().time()
            await asyncio.sleep(max(0.0, min(ROUTE_LINGER, left)))

    async def stop(self) -> None:
        """Stop heartbeating and leave the directory (never raises)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.directory.stop()
