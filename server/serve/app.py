"""The service, the uvicorn way: startup -> main loop (the tick) -> shutdown.

Thin on purpose: a connection's protocol state is a Sans-I/O `server.core.session.Session`
(`server.serve.connection` carries out what it answers), rooms, clocks and frames live in
`server.core.world.World`, the model step in `server.core.engine.TickEngine`, where that
step runs is `server.serve.steps.StepRunner`'s decision, and every frame goes out through
one counting send (`server.serve.wire.Wire`). This module owns sockets, timers and time:

    server = AvatarServer(Config(port=0))
    task = asyncio.create_task(server.serve())    # startup -> loop -> shutdown
    await server.started.wait()                   # server.port is bound now
    ...
    server.request_shutdown()                     # close 1001 to all, within shutdown_timeout
    await task

The tick loop runs on absolute deadlines (k / tick_hz after start) and counts the
deadlines it misses (overruns) instead of drifting. Each client's frames are written
without awaiting: a client whose socket does not drain has its `state` frames dropped
(each frame is complete, the next replaces it) and is closed after `max_dropped` in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from server.core import neighbours as NB
from server.core import protocol as P
from server.core import session as S
from server.core.blend import BlendConfig
from server.core.engine import TickEngine
from server.core.members import Member
from server.core.model import default_checkpoint_path, load_checkpoint
from server.core.stats import Stats
from server.core.world import World
from server.serve.config import Config
from server.serve.connection import ClientConnection
from server.serve.http import HttpRoutes, RouteHandler
from server.serve.metrics import Metrics
from server.serve.steps import StepRunner
from server.serve.transport_factory import make_transport
from server.serve.transports import Connection, HttpReply
from server.serve.wire import Wire

if TYPE_CHECKING:
    from server.cluster.member import ClusterMember

log = logging.getLogger("avatar_stream")


def build_engine(config: Config) -> TickEngine:
    """The engine `config` asks for: the checkpoint (or the shipped one), or CV when predictor=cv.

    Raises FileNotFoundError / ValueError for a missing or bad checkpoint or device.
    """
    torch.set_num_threads(config.threads)
    NB.set_threads(config.threads)  # the neighbour search's, on this (the loop's) thread
    if config.predictor == "cv":
        engine = TickEngine(None, device=config.device)
    else:
        engine = TickEngine(
            load_checkpoint(config.model, device=config.device),
            device=config.device,
            blend=BlendConfig() if config.blend else None,
        )
    engine.join("warm-up")  # the first step pays torch's lazy set-up; not a client's tick
    engine.submit("warm-up", 0.0, (0.0, 0.0, 0.0))
    engine.tick()
    engine.leave("warm-up")
    engine.ticks = 0
    return engine


class ServerClock:
    """Monotonic seconds with a Unix-like epoch taken once at start (never jumps)."""

    def __init__(self) -> None:
        self.epoch = time.time() - time.monotonic()  # server time = epoch + monotonic

    def __call__(self) -> float:
        return self.epoch + time.monotonic()


class AvatarServer:
    """The service: startup -> loop -> shutdown around one `World`. See the module docstring."""

    def __init__(self, config: Config | None = None, *, engine: TickEngine | None = None) -> None:
        """`engine` overrides the one `config` describes (tests). Nothing starts until `serve`."""
        self.config = config or Config()
        self._engine = engine
        self.world: World | None = None
        self.clock = ServerClock()
        self.stats = Stats()
        self.wire = Wire(self.stats)
        self.started = asyncio.Event()
        self.port: int | None = None
        self.n_connections = 0
        self.idle = asyncio.Event()  # set while no connection is open (a drain waits on it)
        self.idle.set()
        self.cluster: ClusterMember | None = None  # with --redis: this worker's membership
        self.sessions: dict[S.Session, ClientConnection] = {}
        self.claims: set[asyncio.Task] = set()  # cluster claims in flight, one per hello
        self.steps: StepRunner | None = None
        self.metrics = Metrics(self)
        self.routes = HttpRoutes(self)
        self._stop: asyncio.Event | None = None
        self._reload: asyncio.Task | None = None
        self._next_model: object = _NO_MODEL  # a loaded model waiting for the next tick
        self._model_mtime: float | None = None

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"ws://{host}:{self.port}/"

    @property
    def epoch(self) -> float:
        """The server clock's epoch: server time = epoch + time.monotonic()."""
        return self.clock.epoch

    @property
    def rules(self) -> S.SessionRules:
        """The limits every session enforces, from the config (and the cluster's rooms)."""
        cfg = self.config
        return S.SessionRules(
            max_msg_rate=cfg.max_msg_rate,
            hello_timeout=cfg.hello_timeout,
            idle_timeout=cfg.idle_timeout,
            max_frame=cfg.max_frame,
            max_hello_frame=cfg.max_hello_frame,
            secret=cfg.secret,
            resume_grace=cfg.resume_grace,
            owns=self.cluster.owns if self.cluster is not None else None,
        )

    # -- startup -> main loop -> shutdown ------------------------------------------------------

    async def serve(self) -> None:
        """Run until `request_shutdown`. Raises what startup raises (bad model, port in use,
        the room directory unreachable)."""
        transport = await self._startup()
        ticker = asyncio.create_task(self._tick_loop(), name="avatar-tick")
        self.started.set()
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await self._shutdown(transport)

    async def _startup(self) -> object:
        cfg = self.config
        self._stop = asyncio.Event()
        engine = self._engine or build_engine(cfg)
        self.world = World(
            engine,
            aoi_radius=cfg.aoi_radius,
            aoi_cap=cfg.aoi_cap,
            aoi_refresh=cfg.aoi_refresh,
            spectator_cap=cfg.spectator_cap,
            max_room_avatars=cfg.max_room_avatars,
            tick_hz=cfg.tick_hz,
            dr_threshold=cfg.dr_threshold,
            dr_heartbeat=cfg.dr_heartbeat,
            dr_lookahead=cfg.dr_lookahead,
        )
        self.metrics.set_model(engine.version, str(engine.device))
        self.steps = StepRunner(engine, inline_step_ms=cfg.inline_step_ms, threads=cfg.threads)
        sys.setswitchinterval(cfg.switch_interval)  # the step thread gets the GIL back fast
        # torch, numpy and the model are ~200k objects that live as long as the process:
        # keep them out of every full collection (otherwise long pauses under load)
        gc.collect()
        gc.freeze()
        transport = make_transport(
            cfg.transport,
            self,
            max_size=cfg.max_frame_hard,
            close_timeout=cfg.shutdown_timeout,
            compression=cfg.compression,
            send_buffer=cfg.send_buffer,
        )
        self.port = await transport.start(cfg.host, cfg.port)
        if cfg.redis:  # a cluster worker: register before the first client is admitted
            from server.cluster.member import ClusterMember

            self.cluster = ClusterMember(self, cfg, self.port)
            try:
                await self.cluster.start()
            except BaseException:
                await transport.stop()
                await self.steps.close()
                raise
        log.info(
            "avatar-stream serving %s (http://%s:%d/metrics) device=%s model=%s tick=%g Hz "
            "transport=%s",
            self.url, self.url.split("//")[1].split(":")[0], self.port, engine.device,
            engine.version, cfg.tick_hz, cfg.transport,
        )  # fmt: skip
        if cfg.watch_model and cfg.predictor == "gru":
            self._model_mtime = _mtime(cfg.model or str(default_checkpoint_path()))
        return transport

    async def _shutdown(self, transport) -> None:
        if self.cluster is not None:  # drain: clients move to other workers first
            await self.cluster.drain(self.config.shutdown_timeout)
            await self.cluster.stop()
        await transport.stop()  # 1001 to every client; the rest aborted after the timeout
        await self.steps.close()  # the worker killed by PID if it does not stop
        log.info("avatar-stream stopped")

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown (loop thread; signal handlers call this)."""
        if self._stop is not None:
            self._stop.set()

    # -- the main loop: one tick per deadline ----------------------------------------------------

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.config.tick_period
        # idle checks and pings at least 6 times per idle timeout, at most once a second
        housekeeping_every = max(1, round(min(1.0, self.config.idle_timeout / 6) / period))
        start = loop.time()
        k = 0
        while True:
            k += 1
            delay = start + k * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:  # late: let the loop read sockets (and /metrics) before the next tick
                await asyncio.sleep(0)
                if -delay >= period:  # deadlines passed while the last tick ran: skip, count
                    missed = int(-delay // period)
                    self.stats.overruns += missed
                    k += missed
            if self._next_model is not _NO_MODEL:
                try:
                    self._apply_model()
                except Exception:  # the engine is unchanged when a swap raises
                    self.stats.reloads_failed += 1
                    log.exception("model swap failed, still serving %s", self.world.engine.version)
            if k % housekeeping_every == 0:
                self._housekeeping()
            t0 = time.perf_counter()
            # No collection inside a tick: its garbage is collected between ticks, while the
            # loop reads sockets
            defer_gc = gc.isenabled()
            if defer_gc:
                gc.disable()
            try:
                await self._tick()
            except Exception:  # a bug in one tick must not stop the service
                self.stats.tick_errors += 1
                log.exception("tick %d failed", self.stats.ticks)
            finally:
                if defer_gc:
                    gc.enable()
            self.stats.ticks += 1
            self.metrics.tick_seconds.observe(time.perf_counter() - t0)

    async def _tick(self) -> None:
        world = self.world
        world.begin_tick()
        result, seconds = await self.steps.step()
        self.metrics.step_seconds.observe(seconds)
        members = world.fan_out(result, self.clock())
        self.wire.write_tick(
            members, self.config.send_buffer, self.config.max_dropped, self._too_slow
        )

    def _too_slow(self, m: Member) -> None:
        handler = self.sessions.get(m.session)
        err = P.ProtocolError(
            "too_slow", f"{self.config.max_dropped} frames in a row could not be sent"
        )
        actions = m.session.refuse(err)
        if handler is not None:
            handler.apply(actions)

    def _housekeeping(self) -> None:
        cfg, now = self.config, time.monotonic()
        self.stats.expired += self.world.expire(self.clock(), cfg.resume_grace)
        for handler in list(self.sessions.values()):
            handler.check(now)
        if self._model_mtime is not None:
            mtime = _mtime(cfg.model or str(default_checkpoint_path()))
            if mtime != self._model_mtime:
                self._model_mtime = mtime
                log.info("model file changed: reloading")
                self.request_reload()

    # -- hot reload ----------------------------------------------------------------------------

    def request_reload(self) -> asyncio.Task | None:
        """Reload the model checkpoint (loop thread; SIGHUP calls this).

        The file is loaded in a worker thread and swapped in between two ticks; nobody is
        disconnected. A file that fails to load (or predicts other horizons) is refused
        with a log line and the old model keeps serving. Returns the loading task (None
        when the server is not running or serves constant velocity).
        """
        if self.world is None or self.config.predictor == "cv":
            log.info("reload: nothing to reload (predictor %s)", self.config.predictor)
            return None
        if self._reload is None or self._reload.done():
            self._reload = asyncio.get_running_loop().create_task(self._load_model())
        return self._reload

    async def _load_model(self) -> None:
        cfg, engine = self.config, self.world.engine
        path = cfg.model or str(default_checkpoint_path())
        try:
            model = await asyncio.to_thread(load_checkpoint, path, str(engine.device))
            if tuple(model.features.horizons) != tuple(self.world.horizons):
                raise ValueError(
                    f"it predicts horizons {tuple(model.features.horizons)}, the clients were "
                    f"told {self.world.horizons}; restart the server to change them"
                )
        except Exception as e:  # unreadable, corrupt, wrong horizons, out of device memory
            self.stats.reloads_failed += 1
            log.error("model reload refused, still serving %s: %s", engine.version, e)
            return
        self._next_model = model  # swapped in by the tick loop, between two ticks

    def _apply_model(self) -> None:
        model, self._next_model = self._next_model, _NO_MODEL
        engine = self.world.engine
        old = engine.version
        kept = engine.swap_model(model)
        self.stats.reloads_ok += 1
        self.metrics.set_model(engine.version, str(engine.device))
        log.info(
            "model reloaded: %s -> %s (hidden states %s)",
            old, engine.version, "kept" if kept else "reset: another shape",
        )  # fmt: skip

    # -- what transports call ------------------------------------------------------------------

    def open_session(self, conn: Connection) -> ClientConnection:
        """A transport calls this for each new WebSocket connection (after the handshake)."""
        return ClientConnection(self, conn)

    def allow_origin(self, origin: str | None) -> bool:
        """Whether a WebSocket handshake with this Origin header may proceed (transports
        ask; a refused one gets HTTP 403). No Origin: not a browser, allowed."""
        allowed = self.config.origins
        if origin is None or allowed is None or origin.rstrip("/") in allowed:
            return True
        self.stats.origin_refused += 1
        log.info("refused a handshake from origin %r", origin)
        return False

    def http(self, path: str) -> HttpReply:
        """The reply to a plain HTTP GET of `path` (transports call this; never raises)."""
        return self.routes.reply(path)

    def add_route(self, path: str, handler: RouteHandler) -> None:
        """Serve HTTP GET `path` with `handler`; see `server.serve.http.HttpRoutes.add`."""
        self.routes.add(path, handler)

    # -- what a cluster member sees of this server (server.cluster.member.ClusterHost) --------

    def room_names(self) -> set[str]:
        """The rooms with members now."""
        return set(self.world.rooms) if self.world is not None else set()

    def move_room(self, room: str, why: str) -> int:
        """Tell every client of `room` to look it up again (close 4001); bots leave.
        Returns how many clients were told."""
        r = self.world.rooms.get(room) if self.world is not None else None
        if r is None:
            return 0
        told = 0
        for m in [*r.players.values(), *r.spectators]:
            if m.session is not None:
                self._move(m.session, why)
                told += 1
            else:
                self.world.remove(m)
        return told

    def move_unplaced(self, why: str) -> None:
        """Tell the connections in no room yet to look their room up again (close 4001)."""
        for session in list(self.sessions):
            self._move(session, why)

    def _move(self, session: S.Session, why: str) -> None:
        handler = self.sessions.get(session)
        actions = session.move_away(why)
        if handler is not None:
            handler.apply(actions)

    async def wait_idle(self) -> None:
        """Return once no client connection is left."""
        await self.idle.wait()


_NO_MODEL = object()


def _mtime(path: str) -> float | None:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return None
