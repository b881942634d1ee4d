"""The asyncio layer: WebSocket connections, the tick loop, fan-out, HTTP endpoints.

Thin on purpose: messages are decoded by `server.core.protocol`, the rooms, clocks and frames
live in `server.core.world.World`, the model step in `server.core.engine.TickEngine`. This module
owns sockets and time:

    server = AvatarServer(Config(port=0))
    task = asyncio.create_task(server.serve())    # startup -> loop -> shutdown
    await server.started.wait()                   # server.port is bound now
    ...
    server.request_shutdown()                     # close 1001 to all, within shutdown_timeout
    await task

The tick loop runs on absolute deadlines (k / tick_hz after start), counts the deadlines
it misses (overruns) instead of drifting, runs a short model step on the loop and a long
one in a thread, or, once a step of 256+ avatars runs long, in a step worker process
(`server.serve.stepper`: off the GIL), and writes each client's frames without awaiting: a
client whose socket does not drain has its `state` frames dropped (each frame is
complete, the next replaces it) and is closed after `max_dropped` in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)

from server.core import protocol as P
from server.core.auth import verify_token
from server.core.blend import EXPERTS, BlendConfig
from server.core.engine import TickEngine
from server.core.model import default_checkpoint_path, load_checkpoint
from server.core.world import Member, World
from server.serve.config import Config
from server.serve.transport_factory import make_transport
from server.serve.transports import Connection, HttpReply

if TYPE_CHECKING:
    from server.cluster.member import ClusterMember

log = logging.getLogger("avatar_stream")

RouteHandler = Callable[[str], tuple[int, str, bytes]]

_MS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12.5, 15, 20, 25, 30, 40, 50, 75, 100)
TICK_BUCKETS = tuple(ms / 1000 for ms in _MS[1:]) + (0.25, 0.5, 1.0)
STEP_BUCKETS = tuple(ms / 1000 for ms in _MS)

VIEWER_DIR = Path(__file__).resolve().parent.parent / "client_demo" / "viewer"


def build_engine(config: Config) -> TickEngine:
    """The engine `config` asks for: the checkpoint (or the shipped one), or CV when predictor=cv.

    Raises FileNotFoundError / ValueError for a missing or bad checkpoint or device.
    """
    torch.set_num_threads(config.threads)
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


def step_cost(engine: TickEngine, n: int = 512, repeats: int = 3) -> float:
    """Seconds per avatar of one engine step, measured on `n` throw-away avatars.

    Call it before any client joins: it runs `repeats` ticks (the tick count is restored).
    """
    ticks = engine.ticks
    keys = [f"calibrate-{i}" for i in range(n)]
    for k in keys:
        engine.join(k)
    best = float("inf")
    for r in range(repeats):
        for i, k in enumerate(keys):
            engine.submit(k, float(r + 1), (float(i), 0.0, 0.0))
        t0 = time.perf_counter()
        engine.tick()
        best = min(best, time.perf_counter() - t0)
    for k in keys:
        engine.leave(k)
    engine.ticks = ticks
    return best / n


class ServerClock:
    """Monotonic seconds with a Unix-like epoch taken once at start (never jumps)."""

    def __init__(self) -> None:
        self._base = time.time() - time.monotonic()

    def __call__(self) -> float:
        return self._base + time.monotonic()


@dataclass
class Stats:
    """Plain counters bumped in the hot path; exported at scrape time."""

    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    dropped: int = 0
    overruns: int = 0
    ticks: int = 0
    tick_errors: int = 0
    rate_dropped: int = 0  # messages dropped by the per-connection rate limit
    origin_refused: int = 0  # WebSocket handshakes from a browser origin not allowed
    resumed: int = 0  # reconnects that got their avatar back with a resume token
    replaced: int = 0  # connections closed because another took over their avatar
    expired: int = 0  # detached avatars removed after the resume grace period
    reloads_ok: int = 0
    reloads_failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)


WEIGHT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _expert_weights(engine: TickEngine):
    """The blend's weight of each expert over the avatars now (averaged over horizons)."""
    from prometheus_client.core import GaugeHistogramMetricFamily

    fam = GaugeHistogramMetricFamily(
        "avatar_expert_weight",
        "Avatars by the weight the online blend gives each expert now (server.blend)",
        labels=["expert"],
    )
    slots = engine.live_slots()
    weights = engine.last_weights[slots]
    for e, name in enumerate(EXPERTS):
        counts = np.searchsorted(np.sort(weights[:, e]), WEIGHT_BUCKETS, side="right")
        buckets = [(f"{b:g}", int(c)) for b, c in zip(WEIGHT_BUCKETS, counts, strict=True)]
        buckets.append(("+Inf", len(slots)))
        fam.add_metric([name], buckets, gsum_value=float(weights[:, e].sum()))
    return fam


class _StatsCollector:
    def __init__(self, server: AvatarServer) -> None:
        self.server = server

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s, w = self.server.stats, self.server.world
        for name, doc, value in (
            ("avatar_frames_in", "WebSocket frames received", s.frames_in),
            ("avatar_bytes_in", "Bytes of WebSocket payload received", s.bytes_in),
            ("avatar_frames_out", "WebSocket frames sent", s.frames_out),
            ("avatar_bytes_out", "Bytes of WebSocket payload sent", s.bytes_out),
            ("avatar_frames_dropped", "State frames dropped for slow clients", s.dropped),
            ("avatar_tick_overruns", "Tick deadlines missed", s.overruns),
            ("avatar_ticks", "Ticks run", s.ticks),
            ("avatar_tick_errors", "Ticks that raised (logged)", s.tick_errors),
            ("avatar_messages_rate_dropped", "Messages dropped by the rate limit", s.rate_dropped),
            ("avatar_origin_refused", "Handshakes refused for their Origin", s.origin_refused),
            ("avatar_resumed", "Reconnects that resumed their avatar", s.resumed),
            ("avatar_replaced", "Connections replaced by a newer one", s.replaced),
            ("avatar_expired", "Detached avatars removed after the grace period", s.expired),
            ("avatar_model_reloads", "Model reloads applied", s.reloads_ok),
            ("avatar_model_reloads_failed", "Model reloads refused", s.reloads_failed),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        errors = CounterMetricFamily(
            "avatar_protocol_errors", "Protocol errors by code", labels=["code"]
        )
        for code in P.ERROR_CODES:
            errors.add_metric([code], s.errors.get(code, 0))
        yield errors
        records = CounterMetricFamily(
            "avatar_state_records",
            "Avatar records sent in state frames, by the viewer's protocol version",
            labels=["version"],
        )
        for v in P.VERSIONS:
            records.add_metric([str(v)], w.records_sent.get(v, 0) if w else 0)
        yield records
        yield CounterMetricFamily(
            "avatar_state_frames_skipped",
            "Ticks on which a v2 client got no state frame: nothing in its view was due",
            value=w.frames_skipped if w else 0,
        )
        yield CounterMetricFamily(
            "avatar_dr_resends",
            "Avatar records due by the downlink dead-reckoning rule (off path, heartbeat, new)",
            value=w.dr_resends if w else 0,
        )
        conns = GaugeMetricFamily("avatar_connections", "Open connections by kind", labels=["kind"])
        n_players = w.n_players - w.n_detached if w else 0
        n_spect = w.n_spectators if w else 0
        conns.add_metric(["player"], n_players)
        conns.add_metric(["spectator"], n_spect)
        conns.add_metric(["pending"], self.server.n_connections - n_players - n_spect)
        yield conns
        yield GaugeMetricFamily(
            "avatar_detached",
            "Avatars waiting for a resume (connection dropped, within the grace period)",
            value=w.n_detached if w else 0,
        )
        yield GaugeMetricFamily(
            "avatar_avatars", "Avatars in the engine", value=len(w.engine) if w else 0
        )
        if w is not None and w.engine.blend is not None and w.engine.model is not None:
            yield _expert_weights(w.engine)
        yield GaugeMetricFamily(
            "avatar_rooms", "Rooms with members", value=len(w.rooms) if w else 0
        )
        c = self.server.cluster
        if c is not None:  # a cluster worker (--redis)
            yield GaugeMetricFamily(
                "avatar_directory_available",
                "1 while the room directory (Redis) answers, 0 while it does not",
                value=1.0 if c.available else 0.0,
            )
            yield GaugeMetricFamily(
                "avatar_cluster_workers",
                "Live workers taking rooms in this worker's view (its last heartbeat)",
                value=len(c.peers),
            )
            for name, doc, value in (
                ("avatar_directory_errors", "Room directory calls that failed", c.directory.errors),
                (
                    "avatar_directory_outages",
                    "Times the room directory became unreachable",
                    c.outages,
                ),
                (
                    "avatar_hellos_moved",
                    "Hellos answered with moved (room served elsewhere)",
                    c.moved,
                ),
                (
                    "avatar_clients_moved_away",
                    "Clients closed with 4001 to look their room up again (drain, room lost)",
                    c.moved_away,
                ),
                (
                    "avatar_hellos_refused_no_directory",
                    "Hellos for new rooms refused while the directory was unreachable",
                    c.refused,
                ),
            ):
                yield CounterMetricFamily(name, doc, value=value)


class AvatarServer:
    """The service: startup -> loop -> shutdown around one `World`. See the module docstring."""

    def __init__(self, config: Config | None = None, *, engine: TickEngine | None = None) -> None:
        """`engine` overrides the one `config` describes (tests). Nothing starts until `serve`."""
        self.config = config or Config()
        self._engine = engine
        self.world: World | None = None
        self.clock = ServerClock()
        self.stats = Stats()
        self.started = asyncio.Event()
        self.port: int | None = None
        self.n_connections = 0
        self.idle = asyncio.Event()  # set while no connection is open (a drain waits on it)
        self.idle.set()
        self.cluster: ClusterMember | None = None  # with --redis: this worker's membership
        self.sessions: set[Session] = set()
        self._stop: asyncio.Event | None = None
        self._reload: asyncio.Task | None = None
        self._next_model: object = _NO_MODEL  # a loaded model waiting for the next tick
        self._model_mtime: float | None = None
        self._routes: dict[str, RouteHandler] = {}
        self._step_cost = float("inf")  # seconds per avatar of a model step (CPU), measured
        self._executor: ThreadPoolExecutor | None = None
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(self))
        self.tick_seconds = Histogram(
            "avatar_tick_seconds",
            "Tick duration: input flush, model step, fan-out and socket writes",
            buckets=TICK_BUCKETS,
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "avatar_model_step_seconds",
            "Engine step (features, GRU, decode) per tick",
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.info = Gauge(
            "avatar_server_info",
            "Constant 1, labelled with the model version and device",
            ["model", "device"],
            registry=self.registry,
        )

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
                m.session.move_away(why)
                told += 1
            else:
                self.world.remove(m)
        return told

    def move_unplaced(self, why: str) -> None:
        """Tell the connections in no room yet to look their room up again (close 4001)."""
        for session in list(self.sessions):
            session.move_away(why)

    async def wait_idle(self) -> None:
        """Return once no client connection is left."""
        await self.idle.wait()

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"ws://{host}:{self.port}/"

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown (loop thread; signal handlers call this)."""
        if self._stop is not None:
            self._stop.set()

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
        self.info.clear()
        self.info.labels(engine.version, str(engine.device)).set(1)
        log.info(
            "model reloaded: %s -> %s (hidden states %s)",
            old, engine.version, "kept" if kept else "reset: another shape",
        )  # fmt: skip

    def allow_origin(self, origin: str | None) -> bool:
        """Whether a WebSocket handshake with this Origin header may proceed (transports
        ask; a refused one gets HTTP 403). No Origin: not a browser, allowed."""
        allowed = self.config.origins
        if origin is None or allowed is None or origin.rstrip("/") in allowed:
            return True
        self.stats.origin_refused += 1
        log.info("refused a handshake from origin %r", origin)
        return False

    async def serve(self) -> None:
        """Run until `request_shutdown`. Raises what startup raises (bad model, port in use)."""
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
        self.info.labels(engine.version, str(engine.device)).set(1)
        # A step predicted to take under inline_step_ms runs on the loop (CPU only): shorter
        # than handing it to a thread, which then waits for the GIL behind socket I/O.
        self._step_cost = step_cost(engine) if engine.device.type == "cpu" else float("inf")
        sys.setswitchinterval(cfg.switch_interval)  # the step thread gets the GIL back fast
        # torch, numpy and the model are ~200k objects that live as long as the process:
        # keep them out of every full collection (otherwise a 60-130 ms pause under load)
        gc.collect()
        gc.freeze()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="avatar-step")
        # A CPU step too long for the loop (inline_step_ms) of MIN_BATCH avatars or more moves
        # to a child process (server.stepper): in a thread it waits for the GIL behind the
        # loop (1,000 clients: 37 vs 4.5 ms alone)
        from server.serve.stepper import Stepper

        self._stepper = Stepper(engine, threads=cfg.threads)
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
                self._executor.shutdown(wait=False)
                raise
        log.info(
            "avatar-stream serving %s (http://%s:%d/metrics) device=%s model=%s tick=%g Hz "
            "transport=%s",
            self.url,
            self.url.split("//")[1].split(":")[0],
            self.port,
            engine.device,
            engine.version,
            cfg.tick_hz,
            cfg.transport,
        )
        if cfg.watch_model and cfg.predictor == "gru":
            self._model_mtime = _mtime(cfg.model or str(default_checkpoint_path()))
        ticker = asyncio.create_task(self._tick_loop(), name="avatar-tick")
        self.started.set()
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if self.cluster is not None:  # drain: clients move to other workers first
                await self.cluster.drain(cfg.shutdown_timeout)
                await self.cluster.stop()
            await transport.stop()  # 1001 to every client; the rest aborted after the timeout
            self._executor.shutdown(wait=True, cancel_futures=True)
            await asyncio.to_thread(self._stepper.close)  # killed by PID if it does not stop
            log.info("avatar-stream stopped")

    # -- HTTP on the same port ----------------------------------------------------------------

    def add_route(self, path: str, handler: RouteHandler) -> None:
        """Serve HTTP GET `path` (exact, query string ignored for matching) with `handler`.

        `handler(path_with_query)` returns (status, content_type, body) and must not block;
        an exception in it gives a 500. Raises ValueError for a path the server owns.
        """
        own = ("/", "/index.html", "/healthz", "/metrics", "/experts")
        if path in own or path.startswith("/viewer/"):
            raise ValueError(f"{path} is served by the server itself")
        self._routes[path] = handler

    def http(self, path: str) -> HttpReply:
        """The reply to a plain HTTP GET of `path` (transports call this; never raises)."""
        route = path.split("?", 1)[0]
        if route == "/healthz":
            return HttpReply(200, "text/plain; charset=utf-8", b"ok\n")
        if route == "/metrics":
            return HttpReply(200, CONTENT_TYPE_LATEST, generate_latest(self.registry))
        if route in ("/", "/index.html") or route.startswith("/viewer/"):
            return self._static(route)
        if route in self._routes:
            try:
                return HttpReply(*self._routes[route](path))
            except Exception:
                log.exception("route %s failed", route)
                return HttpReply(500, "text/plain; charset=utf-8", b"error\n")
        if route == "/route":
            return self._route_reply(path)
        if route == "/experts":
            return self._experts_reply(path)
        return HttpReply(404, "text/plain; charset=utf-8", b"not found\n")

    def _route_reply(self, path: str) -> HttpReply:
        """GET /route?room=R: where a client of room R connects. One process serves every
        room itself: {"url": null} ("the URL you asked"). A cluster worker: see
        server.cluster. Readable from any origin (CORS *)."""
        url = None
        if self.cluster is not None:
            room = parse_qs(urlsplit(path).query).get("room", [""])[0]
            if not room:
                return HttpReply(400, "text/plain; charset=utf-8", b"route needs ?room=NAME\n")
            url = self.cluster.route(room)
        body = json.dumps({"url": url}).encode()
        # a web app on another origin looks rooms up too (the WebSocket checks its origin)
        return HttpReply(200, "application/json", body, (("Access-Control-Allow-Origin", "*"),))

    def _experts_reply(self, path: str) -> HttpReply:
        """GET /experts?room=R: the weight the online blend gives each expert now, per
        avatar of room R (averaged over the horizons): {"experts": [...], "avatars": {id:
        [w, ...]}}; {"avatars": {}} with the blend off or no such room."""
        room = parse_qs(urlsplit(path).query).get("room", [""])[0]
        w = self.world
        out: dict = {"experts": list(EXPERTS), "avatars": {}}
        r = w.rooms.get(room) if w is not None else None
        if r is not None and w.engine.blend is not None and w.engine.model is not None:
            eng = w.engine
            for avatar, m in r.players.items():
                if m.slot >= 0 and not np.isnan(eng.last_t[m.slot]):
                    out["avatars"][avatar] = np.round(eng.last_weights[m.slot], 3).tolist()
        body = json.dumps(out).encode()
        return HttpReply(200, "application/json", body, (("Access-Control-Allow-Origin", "*"),))

    def _static(self, path: str) -> HttpReply:
        name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/viewer/")
        target = (VIEWER_DIR / name).resolve()
        if VIEWER_DIR in target.parents and target.is_file():
            kind = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}.get(
                target.suffix, "application/octet-stream"
            )
            return HttpReply(200, kind + "; charset=utf-8", target.read_bytes())
        body = (
            f"avatar-stream: connect a WebSocket client to {self.url} "
            "(protocol: docs/protocol.md); /metrics, /healthz\n"
        ).encode()
        return HttpReply(200, "text/plain; charset=utf-8", body)

    # -- one connection -----------------------------------------------------------------------

    def open_session(self, conn: Connection) -> Session:
        """A transport calls this for each new WebSocket connection (after the handshake)."""
        return Session(self, conn)

    def refuse(self, conn: Connection, e: P.ProtocolError) -> None:
        """Send `error` for `e` (if the connection is still open) and close with its code."""
        self.stats.errors[e.code] = self.stats.errors.get(e.code, 0) + 1
        log.info("closing %s: %s (%s)", conn.peer, e.code, e)
        if conn.is_open:
            frame = P.encode_error(e.code, str(e), e.url)
            self.stats.frames_out += 1
            self.stats.bytes_out += len(frame)
            conn.send([frame])
            conn.close(e.close_code, e.code)

    # -- the tick loop --------------------------------------------------------------------------

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
            # loop reads sockets (measured at 800 clients: tick p99 27 vs 30 ms over 3 runs)
            defer_gc = gc.isenabled()
            if defer_gc:
                gc.disable()
            try:
                await self._tick(loop)
            except Exception:  # a bug in one tick must not stop the service
                self.stats.tick_errors += 1
                log.exception("tick %d failed", self.stats.ticks)
            finally:
                if defer_gc:
                    gc.enable()
            self.stats.ticks += 1
            self.tick_seconds.observe(time.perf_counter() - t0)

    def _housekeeping(self) -> None:
        cfg, now = self.config, time.monotonic()
        expired = self.world.expire(self.clock(), cfg.resume_grace)
        self.stats.expired += expired
        ping_every = cfg.idle_timeout / 3.0
        for session in list(self.sessions):
            session.check_idle(now, cfg.idle_timeout, ping_every)
        if self._model_mtime is not None:
            mtime = _mtime(cfg.model or str(default_checkpoint_path()))
            if mtime != self._model_mtime:
                self._model_mtime = mtime
                log.info("model file changed: reloading")
                self.request_reload()

    async def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        world, stepper = self.world, self._stepper
        world.begin_tick()
        t0 = time.perf_counter()
        n = world.engine.pending
        off_loop = n * self._step_cost * 1000.0 > self.config.inline_step_ms
        stepper.between_ticks(n, off_loop)  # starts the step worker; hands the engine over
        if stepper.active:  # in the worker process; the loop waits, without the GIL
            result = stepper.step()
            dt = time.perf_counter() - t0
        elif not off_loop:
            result = world.step()  # short: never stalls the loop longer than inline_step_ms
            dt = time.perf_counter() - t0
            if n >= 64:  # keep the estimate true (a slower machine, a busier one)
                self._step_cost = 0.9 * self._step_cost + 0.1 * dt / n
        else:
            result = await loop.run_in_executor(self._executor, world.step)
            dt = time.perf_counter() - t0
        self.step_seconds.observe(dt)
        members = world.fan_out(result, self.clock())
        self._write(members)

    def _write(self, members: list[Member]) -> None:
        limit, max_dropped, stats = self.config.send_buffer, self.config.max_dropped, self.stats
        for m in members:
            conn: Connection | None = m.transport
            if conn is None or not conn.is_open:
                m.controls.clear()
                m.state = None
                continue
            if conn.buffered() > limit:
                m.dropped += 1
                stats.dropped += 1
                if m.state is not None:  # v1: the next frame replaces it; v2: carries it all
                    m.resync = True
                m.state = None  # join/leave are kept
                if m.dropped == max_dropped:  # leaves others' views now, not after the close
                    m.session.refuse(
                        P.ProtocolError(
                            "too_slow", f"{max_dropped} frames in a row could not be sent"
                        )
                    )
                continue
            m.dropped = 0
            frames = m.controls
            if m.state is not None:
                frames.append(m.state)
            for frame in frames:
                stats.bytes_out += len(frame)
            stats.frames_out += len(frames)
            try:  # written now, no await
                conn.send(frames)
            except Exception:  # one client's broken socket never stops the fan-out
                log.debug("write to %s failed", conn.peer, exc_info=True)
            m.controls = []
            m.state = None


class Session:
    """One connection's protocol state, transport-neutral: hello (within hello_timeout),
    then pos / ping / view / bye. A bad message closes this connection only: a protocol
    error with its documented code, anything else (a server bug) with internal_error."""

    __slots__ = (
        "_claiming",
        "_drops",
        "_last_ping",
        "_refill_at",
        "_timer",
        "_tokens",
        "closed",
        "conn",
        "last_rx",
        "member",
        "server",
    )

    def __init__(self, server: AvatarServer, conn: Connection) -> None:
        self.server = server
        self.conn = conn
        self.member: Member | None = None
        self.closed = False
        self.last_rx = self._last_ping = self._refill_at = time.monotonic()
        cfg = server.config
        self._tokens = cfg.max_msg_rate  # token bucket: one second's worth of burst
        self._drops = 0.0
        server.n_connections += 1
        server.idle.clear()
        server.sessions.add(self)
        self._claiming = False
        conn.on_pong = self._pong
        self._timer: asyncio.TimerHandle | None = None
        if server.n_connections > cfg.max_connections:
            self.refuse(P.ProtocolError("server_full", "too many connections; try again later"))
        else:
            self._timer = asyncio.get_running_loop().call_later(
                cfg.hello_timeout,
                self.refuse,
                P.ProtocolError("hello_timeout", f"send hello within {cfg.hello_timeout:g} s"),
            )

    def on_message(self, data: bytes | str) -> None:
        """One whole client message (the transport calls this). Never raises."""
        if self.closed:
            return
        srv = self.server
        stats = srv.stats
        stats.frames_in += 1
        stats.bytes_in += len(data)
        now = time.monotonic()
        self.last_rx = now
        cfg = srv.config
        # Rate limit: a token bucket refilled at max_msg_rate. Excess is dropped; a client
        # that keeps sending over the limit (drops outpace their decay) is closed.
        rate = cfg.max_msg_rate
        self._tokens = min(rate, self._tokens + (now - self._refill_at) * rate)
        self._drops = max(0.0, self._drops - (now - self._refill_at) * rate * 0.5)
        self._refill_at = now
        if self._tokens < 1.0:
            stats.rate_dropped += 1
            self._drops += 1.0
            if self._drops > 2.0 * rate:
                self.refuse(P.ProtocolError("rate_limited", f"over {rate:g} messages/s, sustained"))
            return
        self._tokens -= 1.0
        with self._refusing("handling a message"):
            m = self.member
            if m is None:
                if self._claiming:  # hello is being placed: nothing else is read meanwhile
                    return
                self._hello(P.decode_client(data, max_size=cfg.max_hello_frame))
                return
            msg = P.decode_client(data, max_size=cfg.max_frame)
            if isinstance(msg, P.Pos):
                srv.world.receive_pos(m, msg, srv.clock(), self.conn.latency)
            elif isinstance(msg, P.Ping):
                frame = P.encode_pong(msg.t, srv.clock())
                stats.frames_out += 1
                stats.bytes_out += len(frame)
                self.conn.send([frame])
            elif isinstance(msg, P.View):
                srv.world.set_view(m, msg.region)
            elif isinstance(msg, P.Bye):
                self._leave()
                self.conn.close(P.CLOSE_NORMAL, "bye")
            else:  # a second hello
                raise P.ProtocolError("expected_hello", "hello was already received")

    @contextlib.contextmanager
    def _refusing(self, doing: str) -> Iterator[None]:
        """A protocol error inside closes this connection with its code; anything else (a
        server bug) with internal_error: the server and the other connections stay."""
        try:
            yield
        except P.ProtocolError as e:
            self.refuse(e)
        except Exception:
            log.exception("%s from %s failed", doing, self.conn.peer)
            self.refuse(P.ProtocolError("internal_error", "the server failed on a message"))

    def _hello(self, msg: P.ClientMessage) -> None:
        if not isinstance(msg, P.Hello):
            raise P.ProtocolError("expected_hello", "the first message must be hello")
        srv = self.server
        if srv.config.secret is not None:
            verify_token(srv.config.secret, msg.token, msg.avatar, msg.room)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        cluster = srv.cluster
        if cluster is not None and not cluster.owns(msg.room):  # one directory round trip
            self._claiming = True
            asyncio.get_running_loop().create_task(self._claim_then_admit(cluster, msg))
            return
        self._admit(msg)

    async def _claim_then_admit(self, cluster: ClusterMember, msg: P.Hello) -> None:
        try:
            url = await cluster.claim(msg.room)
        except P.ProtocolError as e:
            self.refuse(e)
            return
        finally:
            self._claiming = False
        if self.closed:
            return
        if url is not None:
            self.refuse(P.ProtocolError("moved", f"room {msg.room!r} is served at {url}", url))
            return
        if not cluster.owns(msg.room):  # this worker began to drain meanwhile
            self.refuse(P.ProtocolError("moved", "this worker is shutting down; look again"))
            return
        with self._refusing("admitting a hello"):
            self._admit(msg)

    def _admit(self, msg: P.Hello) -> None:
        srv = self.server
        world = srv.world
        prev = world.player(msg.room, msg.avatar)
        prev_session = prev.session if prev is not None else None
        prev_resume = prev.resume if prev is not None else None
        m = world.admit(msg, srv.clock())
        if prev_session is not None:  # another connection had this avatar: it goes
            prev_session.replaced()
        if m is prev and msg.resume == prev_resume:
            srv.stats.resumed += 1
        m.transport = self.conn
        m.session = self
        self.member = m
        frame = world.welcome(m, srv.clock())
        srv.stats.frames_out += 1
        srv.stats.bytes_out += len(frame)
        self.conn.send([frame])
        self.ping()  # the first round trip, for the clock-offset estimate

    def ping(self) -> None:
        self._last_ping = time.monotonic()
        self.conn.ping()

    def _pong(self) -> None:
        self.last_rx = time.monotonic()

    def check_idle(self, now: float, idle_timeout: float, ping_every: float) -> None:
        """Close after idle_timeout without a message or pong; ping every ping_every."""
        if self.closed:
            return
        if now - self.last_rx > idle_timeout:
            self.refuse(P.ProtocolError("idle_timeout", f"nothing received for {idle_timeout:g} s"))
        elif now - self._last_ping >= ping_every and self.member is not None:
            self.ping()

    def replaced(self) -> None:
        """Another connection took this one's avatar: close this one, keep the avatar."""
        if self.member is not None:
            self.member = None  # now the new connection's
            self.server.stats.replaced += 1
        self.refuse(P.ProtocolError("replaced", "another connection took over this avatar"))

    def refuse(self, e: P.ProtocolError) -> None:
        """Close this connection with `e`'s error and code; its avatar leaves now."""
        if self.closed:
            return
        self._leave()
        self.server.refuse(self.conn, e)

    def move_away(self, why: str) -> None:
        """Close with 4001 (`moved`) and no error message (nothing went wrong: the client
        looks its room up again and reconnects at once); its avatar leaves now."""
        if self.closed:
            return
        self._leave()
        log.info("moving %s away: %s", self.conn.peer, why)
        if self.conn.is_open:
            self.conn.close(P.CLOSE_MOVED, "moved")

    def _leave(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        m, self.member = self.member, None
        if m is not None:
            m.transport = m.session = None
            self.server.world.remove(m)

    def on_disconnect(self, clean: bool = False) -> None:
        """The connection is gone (the transport calls this once; `clean`: the client sent
        a close frame). A player whose connection dropped (no bye, no close frame, not
        refused) keeps its avatar for resume_grace seconds."""
        srv = self.server
        m, self.member = self.member, None
        if m is not None and not self.closed and not clean and srv.config.resume_grace > 0:
            srv.world.detach(m, srv.clock())
        elif m is not None:
            m.transport = m.session = None
            srv.world.remove(m)
        self._leave()
        srv.n_connections -= 1
        srv.sessions.discard(self)
        if srv.n_connections == 0:
            srv.idle.set()


_NO_MODEL = object()


def _mtime(path: str) -> float | None:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return None
