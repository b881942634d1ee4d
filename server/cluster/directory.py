"""Room directory in Redis: which process owns which room (docs/scaling.md §2).

Rooms are the unit of sharding: a room lives in exactly one server process. This module
keeps the shared map in Redis (``redis.asyncio``), off the tick path; it knows nothing of
the server's internals and is meant to be driven by it:

- at start-up, :meth:`RoomDirectory.start` registers the process;
- a background task calls :meth:`RoomDirectory.heartbeat` every ``ttl / 4`` seconds
  (``server.cluster.member`` does; or it runs :meth:`RoomDirectory.run_heartbeats`), and closes
  the clients of any room the heartbeat reports as ``lost``; in the same round it reads
  :meth:`RoomDirectory.processes` and :meth:`RoomDirectory.rooms` (one round trip each)
  into a local view;
- ``GET /route?room=`` never touches Redis: it answers from that view (a placed room's
  live owner, whichever process is asked; else the least-loaded live process, a
  suggestion), so it is at most one heartbeat old;
- before admitting a ``hello``, the server calls ``claim(room, here=True)`` (placement,
  atomic) and refuses with ``moved`` (and the returned ``url``) when the owner is another
  process;
- when a room empties it calls :meth:`RoomDirectory.release`; on SIGTERM it calls
  :meth:`RoomDirectory.drain` and then :meth:`RoomDirectory.stop` before closing clients.

The keys and the Lua scripts that change them atomically are `server.cluster.directory_scripts`;
what the directory returns and raises, `server.cluster.directory_results`.

``process_id`` is ``host:port:nonce`` with a random nonce per :class:`RoomDirectory`
(one per process start), so a restarted process is never taken for its predecessor.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server.cluster.directory_results import (
    DirectoryError,
    DirectoryUnavailable,
    Heartbeat,
    NoProcessAvailable,
    Owner,
    redact,
)
from server.cluster.directory_scripts import (
    CLAIM_LUA,
    HEARTBEAT_LUA,
    LOOKUP_LUA,
    RELEASE_LUA,
    ROOMS_LUA,
    heartbeat_args,
    redis_number,
)

T = TypeVar("T")


_UNAVAILABLE = (
    redis.exceptions.ConnectionError,  # includes BusyLoadingError, AuthenticationError
    redis.exceptions.TimeoutError,
    OSError,  # includes TimeoutError / asyncio.TimeoutError
)


class RoomDirectory:
    """The room directory of one server process (or of a lookup-only service).

    Construct it, then ``await start(ws_url, capacity)`` to register as a process that can
    own rooms; :meth:`claim` and :meth:`lookup` also work without ``start`` (a routing
    service that owns nothing). All methods are coroutines that talk to Redis; none
    belongs on the tick path. Redis failures raise :class:`DirectoryUnavailable`, are
    counted in ``errors`` and turn ``available`` False until a call succeeds again.

    Args:
        url: Redis URL, e.g. ``redis://127.0.0.1:6379/0``.
        prefix: key prefix shared by every process of one deployment.
        ttl: seconds the process key and owned room keys live without a heartbeat.
            Heartbeat every ``ttl / 4`` (1.25 s for the default 5 s).
        timeout: socket connect/read timeout per Redis call, in seconds (one retry on a
            fresh connection follows a connection error, e.g. after a Redis restart).
        max_tick_p99_ms: processes whose last reported tick p99 exceeds this get no new
            rooms (None: no limit).
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "avatar",
        ttl: float = 5.0,
        timeout: float = 1.0,
        max_tick_p99_ms: float | None = 25.0,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        self.url = url
        self.safe_url = redact(url)
        self.prefix = prefix
        self.ttl = float(ttl)
        self.ttl_ms = max(1, round(self.ttl * 1000))
        self.max_tick_p99_ms = max_tick_p99_ms
        self.nonce = secrets.token_hex(6)
        #: Redis calls that failed (any error), for /metrics.
        self.errors = 0
        #: True while the last Redis call succeeded; False before the first one.
        self.available = False
        #: The last failure, as text (None if none yet).
        self.last_error: str | None = None
        #: time.monotonic() of the last successful heartbeat (or start); None before.
        self.last_heartbeat: float | None = None
        #: True once drain() was called: no new rooms are placed on this process.
        self.draining = False
        #: Rooms this process knows it owns (claimed here, heartbeated, not released).
        self.owned: set[str] = set()
        self._process_id: str | None = None
        self._ws_url = ""
        self._capacity = 0
        self._host = ""
        self._port = 0
        self._started = False
        self._closed = False
        self._stopped_clean = False
        self._started_at = 0.0
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self._claim = self._redis.register_script(CLAIM_LUA)
        self._heartbeat = self._redis.register_script(HEARTBEAT_LUA)
        self._release = self._redis.register_script(RELEASE_LUA)
        self._lookup = self._redis.register_script(LOOKUP_LUA)
        self._rooms = self._redis.register_script(ROOMS_LUA)

    # -- keys -------------------------------------------------------------------------

    @property
    def processes_key(self) -> str:
        return f"{self.prefix}:processes"

    @property
    def rooms_key(self) -> str:
        return f"{self.prefix}:rooms"

    def process_key(self, process_id: str) -> str:
        return f"{self.prefix}:process:{process_id}"

    def room_key(self, room: str) -> str:
        return f"{self.prefix}:room:{room}"

    @property
    def process_id(self) -> str:
        """``host:port:nonce`` of this process. Raises RuntimeError before :meth:`start`."""
        if self._process_id is None:
            raise RuntimeError("RoomDirectory.start() has not been called")
        return self._process_id

    @property
    def heartbeat_age(self) -> float:
        """Seconds since the last successful heartbeat (inf before the first one).

        The split-brain rule of docs/scaling.md is the caller's: stop admitting when this
        exceeds ``ttl / 2``, close the clients when it exceeds ``ttl``.
        """
        if self.last_heartbeat is None:
            return math.inf
        return time.monotonic() - self.last_heartbeat

    # -- plumbing ---------------------------------------------------------------------

    async def _do(self, what: str, call: Awaitable[T]) -> T:
        if self._closed:
            if asyncio.iscoroutine(call):
                call.close()
            raise RuntimeError("RoomDirectory is stopped")
        try:
            result = await call
        except _UNAVAILABLE as e:
            self.errors += 1
            self.available = False
            self.last_error = f"{what}: {type(e).__name__}: {e}"
            raise DirectoryUnavailable(
                f"Redis at {self.safe_url} is unavailable ({what}): {type(e).__name__}: {e}"
            ) from e
        except redis.exceptions.RedisError as e:
            self.errors += 1
            self.last_error = f"{what}: {type(e).__name__}: {e}"
            raise DirectoryError(
                f"Redis at {self.safe_url} refused {what}: {type(e).__name__}: {e}"
            ) from e
        self.available = True
        return result

    def _require_started(self) -> str:
        if not self._started:
            raise RuntimeError("RoomDirectory.start() has not been called (or it failed)")
        return self.process_id

    async def _beat(
        self, load: float, rooms: list[str], clients: int, tick_p99_ms: float | None
    ) -> Heartbeat:
        if not (math.isfinite(load) and load >= 0):
            raise ValueError(f"load must be finite and >= 0, got {load!r}")
        now = time.time()
        fields = {
            "url": self._ws_url,
            "host": self._host,
            "port": str(self._port),
            "capacity": str(self._capacity),
            "load": redis_number(load),
            "clients": str(int(clients)),
            "rooms": str(len(rooms)),
            "tick_p99_ms": "" if tick_p99_ms is None else redis_number(tick_p99_ms),
            "draining": "1" if self.draining else "0",
            "started_at": redis_number(self._started_at),
            "updated_at": redis_number(now),
        }
        pid = self.process_id
        args = heartbeat_args(
            self.prefix, self.ttl_ms, pid, self._ws_url, load, self.draining, now, fields, rooms
        )
        existed, lost, reclaimed = await self._do(
            "heartbeat",
            self._heartbeat(
                keys=[self.process_key(pid), self.processes_key, self.rooms_key], args=args
            ),
        )
        self.last_heartbeat = time.monotonic()
        result = Heartbeat(
            reregistered=not existed, lost=frozenset(lost), reclaimed=frozenset(reclaimed)
        )
        self.owned |= set(rooms)
        self.owned -= result.lost
        return result

    # -- public API -------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that Redis answers. Raises :class:`DirectoryUnavailable` if it does not."""
        await self._do("PING", self._redis.ping())

    async def start(self, ws_url: str, capacity: int) -> None:
        """Register this process as one that can own rooms (load 0, no rooms).

        ``ws_url`` is the WebSocket URL clients of this process's rooms connect to (its
        host and port go into the process id); ``capacity`` is the client count that
        means load 1.0 (the measured ceiling), used to spread rooms placed between two
        heartbeats. After this, the caller must heartbeat every ``ttl / 4`` seconds.

        Raises :class:`DirectoryUnavailable` (with the Redis URL in the message) when
        Redis cannot be reached; start may then be retried. RuntimeError if already
        started.
        """
        if self._started:
            raise RuntimeError("RoomDirectory already started")
        parts = urlsplit(ws_url)
        if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
            raise ValueError(f"ws_url must be a ws:// or wss:// URL with a host, got {ws_url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme in ("wss", "https") else 80)
        self._ws_url = ws_url
        self._capacity = int(capacity)
        self._process_id = f"{self._host}:{self._port}:{self.nonce}"
        self._started_at = time.time()
        await self.ping()
        await self._beat(0.0, [], 0, None)
        self._started = True

    async def heartbeat(
        self,
        load: float,
        rooms: Iterable[str],
        clients: int,
        *,
        tick_p99_ms: float | None = None,
    ) -> Heartbeat:
        """Refresh this process's key and score and the TTL of ``rooms`` (one round trip).

        ``load`` is clients / capacity (the placement score); ``rooms`` are the rooms this
        process serves now; ``tick_p99_ms`` (optional) lets placement skip an overloaded
        process. Rooms whose key has gone are re-pointed at this process; if the process
        key itself had gone (Redis restarted), it is written afresh (``reregistered``).
        The caller must close the clients of every room in ``lost``.

        Call it from its own task every ``ttl / 4`` s. Raises
        :class:`DirectoryUnavailable` when Redis cannot be reached (keep serving the rooms
        you have and try again next period), RuntimeError before :meth:`start`.
        """
        self._require_started()
        return await self._beat(load, list(rooms), clients, tick_p99_ms)

    async def run_heartbeats(
        self,
        sample: Callable[[], tuple[float, Iterable[str], int]],
        *,
        interval: float | None = None,
        on_result: Callable[[Heartbeat], None] | None = None,
    ) -> None:
        """Heartbeat forever: ``sample()`` gives ``(load, rooms, clients)`` each period.

        Runs until cancelled (run it with ``asyncio.create_task``). Redis failures do
        not stop it: they are counted in ``errors`` and show in ``available``.
        ``on_result`` gets each successful :class:`Heartbeat` (close ``lost`` rooms
        there). ``interval`` defaults to ``ttl / 4``.
        """
        period = self.ttl / 4 if interval is None else interval
        while True:
            load, rooms, clients = sample()
            with contextlib.suppress(DirectoryError):
                result = await self.heartbeat(load, rooms, clients)
                if on_result is not None:
                    on_result(result)
            await asyncio.sleep(period)

    async def claim(self, room: str, *, here: bool = False) -> Owner:
        """Return the owner of ``room``, placing it first if it has no live owner.

        Atomic (one Lua script): if the room key exists and its owner is alive, that owner
        is returned (and, if it is this process, the room's TTL is refreshed). Otherwise
        the room goes to this process when ``here`` is true and this process can take
        rooms (started, not draining, not overloaded), else to the live process with the
        lowest load that is not draining or overloaded (dead entries are pruned on the
        way), and its load is raised by 1 / capacity until its next heartbeat. Any number
        of concurrent claims, from any processes, agree on one owner.

        A server calls ``claim(room, here=True)`` before admitting a ``hello`` and refuses
        with ``moved`` + ``owner.url`` when ``owner.process_id`` is not its own; a route
        service calls ``claim(room)``.

        Raises :class:`NoProcessAvailable` when no process can take the room,
        :class:`DirectoryUnavailable` when Redis cannot be reached.
        """
        me = self._process_id if self._started else ""
        reply = await self._do(
            "claim",
            self._claim(
                keys=[self.room_key(room), self.processes_key, self.rooms_key],
                args=[
                    f"{self.prefix}:process:",
                    self.ttl_ms,
                    redis_number(time.time()),
                    me or "",
                    "1" if here and me else "0",
                    "" if self.max_tick_p99_ms is None else redis_number(self.max_tick_p99_ms),
                    room,
                ],
            ),
        )
        if not reply:
            raise NoProcessAvailable(
                f"no live process can take room {room!r} (directory {self.safe_url}, "
                f"prefix {self.prefix!r}): all draining, overloaded or gone"
            )
        owner = Owner(process_id=reply[0], url=reply[1], placed=bool(int(reply[2])))
        if me and owner.process_id == me:
            self.owned.add(room)
        return owner

    async def lookup(self, room: str) -> Owner | None:
        """The live owner of ``room``, or None if it has none (never places it).

        Raises :class:`DirectoryUnavailable` when Redis cannot be reached.
        """
        reply = await self._do(
            "lookup",
            self._lookup(keys=[self.room_key(room)], args=[f"{self.prefix}:process:"]),
        )
        if not reply:
            return None
        return Owner(process_id=reply[0], url=reply[1])

    async def rooms(self) -> dict[str, Owner]:
        """Every placed room with a live owner, room → :class:`Owner` (one round trip,
        O(rooms); never places a room). For a local view refreshed with the heartbeats
        (``GET /route`` answers from it); the claim at ``hello`` still decides. Entries of
        dead owners are dropped from the index on the way. Raises
        :class:`DirectoryUnavailable` when Redis cannot be reached.
        """
        reply = await self._do(
            "rooms",
            self._rooms(
                keys=[self.rooms_key], args=[f"{self.prefix}:process:", f"{self.prefix}:room:"]
            ),
        )
        return {
            reply[i]: Owner(process_id=reply[i + 1], url=reply[i + 2])
            for i in range(0, len(reply), 3)
        }

    async def release(self, room: str) -> bool:
        """Delete ``room``'s key if this process owns it (compare-and-delete, atomic).

        Call it when a room empties, so the next client's claim can place it anew without
        waiting for the TTL. Returns True if the key was deleted, False if another process
        (or none) owned it. Raises :class:`DirectoryUnavailable` when Redis cannot be
        reached, RuntimeError before :meth:`start`.
        """
        pid = self._require_started()
        self.owned.discard(room)
        n = await self._do(
            "release",
            self._release(
                keys=[self.rooms_key, self.room_key(room)], args=[pid, f"{self.prefix}:room:"]
            ),
        )
        return bool(n)

    async def processes(self) -> list[tuple[str, str, float]]:
        """The live processes that can take rooms, ``(process_id, url, load)``, least
        loaded first (for a route that suggests where a new room should go; the claim at
        ``hello`` still decides). Raises :class:`DirectoryUnavailable`."""
        ids = await self._do(
            "processes", self._redis.zrange(self.processes_key, 0, -1, withscores=True)
        )
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for pid, _ in ids:
            pipe.hmget(self.process_key(pid), "url", "draining")
        rows = await self._do("processes", pipe.execute())
        return [
            (pid, url, float(load))
            for (pid, load), (url, draining) in zip(ids, rows, strict=True)
            if url is not None and draining != "1"
        ]

    async def evict(self, process_id: str) -> None:
        """Forget a process known to be dead (its supervisor saw it exit): its key and
        placement entry go now, so its rooms are placed anew at the next claim instead of
        after the TTL. Raises :class:`DirectoryUnavailable`."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self.processes_key, process_id)
        pipe.delete(self.process_key(process_id))
        await self._do("evict", pipe.execute())

    async def drain(self) -> None:
        """Stop taking new rooms; keep the rooms this process owns.

        The process leaves the placement set and is marked draining, so claims place new
        rooms elsewhere; heartbeats keep refreshing its key and its rooms. There is no
        undrain (restart the process). The flag is set locally first, so if Redis is
        unreachable (:class:`DirectoryUnavailable` is raised) the next heartbeat applies
        it. RuntimeError before :meth:`start`.
        """
        pid = self._require_started()
        self.draining = True
        pipe = self._redis.pipeline(transaction=True)
        pipe.zrem(self.processes_key, pid)
        pipe.hset(self.process_key(pid), "draining", "1")
        await self._do("drain", pipe.execute())

    async def stop(self) -> bool:
        """Unregister: release the owned rooms, drop the process key, close the connection.

        Call it on shutdown *before* closing clients, so their reconnects can be placed at
        once instead of after the TTL. Never raises for Redis trouble (shutdown must go
        on): returns True if nothing of this process is left in Redis (also when it never
        registered), False if Redis could not be reached (its keys then expire within
        ``ttl``). Idempotent (returns the same again); the directory is unusable after.
        """
        if self._closed:
            return self._stopped_clean
        ok = not self._started
        try:
            if self._started:
                pid = self.process_id
                pipe = self._redis.pipeline(transaction=True)
                if self.owned:
                    await self._release(
                        keys=[self.rooms_key, *(self.room_key(r) for r in sorted(self.owned))],
                        args=[pid, f"{self.prefix}:room:"],
                        client=pipe,
                    )
                pipe.zrem(self.processes_key, pid)
                pipe.delete(self.process_key(pid))
                with contextlib.suppress(DirectoryError):
                    await self._do("stop", pipe.execute())
                    ok = True
                self.owned.clear()
        finally:
            self._closed = True
            self._stopped_clean = ok
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        return ok
