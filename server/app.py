"""The asyncio layer: WebSocket connections, the tick loop, fan-out, HTTP endpoints.

Thin on purpose: messages are decoded by `server.protocol`, the rooms, clocks and frames
live in `server.world.World`, the model step in `server.engine.TickEngine`. This module
owns sockets and time:

    server = AvatarServer(Config(port=0))
    task = asyncio.create_task(server.serve())    # startup -> loop -> shutdown
    await server.started.wait()                   # server.port is bound now
    ...
    server.request_shutdown()                     # close 1001 to all, within shutdown_timeout
    await task

The tick loop runs on absolute deadlines (k / tick_hz after start), counts the deadlines
it misses (overruns) instead of drifting, runs the model step in a worker thread so the
event loop keeps reading sockets, and writes each client's frames without awaiting: a
client whose socket does not drain has its `state` frames dropped (each frame is
complete, the next replaces it) and is closed after `max_dropped` in a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State as WsState

from server import protocol as P
from server.config import Config
from server.engine import TickEngine
from server.model import load_checkpoint
from server.world import Member, World

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
            load_checkpoint(config.model, device=config.device), device=config.device
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
    errors: dict[str, int] = field(default_factory=dict)


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
        ):
            yield CounterMetricFamily(name, doc, value=value)
        errors = CounterMetricFamily(
            "avatar_protocol_errors", "Protocol errors by code", labels=["code"]
        )
        for code in P.ERROR_CODES:
            errors.add_metric([code], s.errors.get(code, 0))
        yield errors
        conns = GaugeMetricFamily("avatar_connections", "Open connections by kind", labels=["kind"])
        n_players = w.n_players if w else 0
        n_spect = w.n_spectators if w else 0
        conns.add_metric(["player"], n_players)
        conns.add_metric(["spectator"], n_spect)
        conns.add_metric(["pending"], self.server.n_connections - n_players - n_spect)
        yield conns
        yield GaugeMetricFamily(
            "avatar_avatars", "Avatars in the engine", value=len(w.engine) if w else 0
        )
        yield GaugeMetricFamily(
            "avatar_rooms", "Rooms with members", value=len(w.rooms) if w else 0
        )


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
        self._stop: asyncio.Event | None = None
        self._background: set[asyncio.Task] = set()  # keep references until done
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

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"ws://{host}:{self.port}/"

    def request_shutdown(self) -> None:
        """Begin a graceful shutdown (loop thread; signal handlers call this)."""
        if self._stop is not None:
            self._stop.set()

    async def serve(self) -> None:
        """Run until `request_shutdown`. Raises what startup raises (bad model, port in use)."""
        cfg = self.config
        self._stop = asyncio.Event()
        engine = self._engine or build_engine(cfg)
        self.world = World(
            engine,
            aoi_radius=cfg.aoi_radius,
            aoi_cap=cfg.aoi_cap,
            spectator_cap=cfg.spectator_cap,
            max_room_avatars=cfg.max_room_avatars,
            tick_hz=cfg.tick_hz,
        )
        self.info.labels(engine.version, str(engine.device)).set(1)
        # A step predicted to take under inline_step_ms runs on the loop (CPU only): shorter
        # than handing it to a thread, which then waits for the GIL behind socket I/O.
        self._step_cost = step_cost(engine) if engine.device.type == "cpu" else float("inf")
        sys.setswitchinterval(cfg.switch_interval)  # the step thread gets the GIL back fast
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="avatar-step")
        ws_server = await serve(
            self._handle,
            cfg.host,
            cfg.port,
            process_request=self._http,
            compression="deflate" if cfg.compression else None,
            max_size=cfg.max_frame_hard,
            close_timeout=cfg.shutdown_timeout,
            server_header="avatar-stream",
        )
        self.port = ws_server.sockets[0].getsockname()[1]
        log.info(
            "avatar-stream serving %s (http://%s:%d/metrics) device=%s model=%s tick=%g Hz",
            self.url,
            self.url.split("//")[1].split(":")[0],
            self.port,
            engine.device,
            engine.version,
            cfg.tick_hz,
        )
        ticker = asyncio.create_task(self._tick_loop(), name="avatar-tick")
        self.started.set()
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            ws_server.close(close_connections=True)  # 1001 going away to every client
            try:
                await asyncio.wait_for(ws_server.wait_closed(), cfg.shutdown_timeout)
            except TimeoutError:
                for conn in list(ws_server.connections):
                    conn.transport.abort()
                log.warning("shutdown: aborted connections that did not close in time")
            self._executor.shutdown(wait=True, cancel_futures=True)
            log.info("avatar-stream stopped")

    # -- HTTP on the same port ----------------------------------------------------------------

    def add_route(self, path: str, handler: RouteHandler) -> None:
        """Serve HTTP GET `path` (exact, query string ignored for matching) with `handler`.

        `handler(path_with_query)` returns (status, content_type, body) and must not block;
        an exception in it gives a 500. Raises ValueError for a path the server owns.
        """
        if path in ("/", "/index.html", "/healthz", "/metrics") or path.startswith("/viewer/"):
            raise ValueError(f"{path} is served by the server itself")
        self._routes[path] = handler

    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # a WebSocket handshake, on any path
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return _response(http.HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        if path == "/metrics":
            return _response(
                http.HTTPStatus.OK, generate_latest(self.registry), CONTENT_TYPE_LATEST
            )
        if path in ("/", "/index.html") or path.startswith("/viewer/"):
            return self._static(path)
        if path in self._routes:
            try:
                status, kind, body = self._routes[path](request.path)
            except Exception:
                log.exception("route %s failed", path)
                return _response(http.HTTPStatus.INTERNAL_SERVER_ERROR, b"error\n", "text/plain")
            return _response(http.HTTPStatus(status), body, kind)
        return _response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _static(self, path: str) -> Response:
        name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/viewer/")
        target = (VIEWER_DIR / name).resolve()
        if VIEWER_DIR in target.parents and target.is_file():
            kind = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}.get(
                target.suffix, "application/octet-stream"
            )
            return _response(http.HTTPStatus.OK, target.read_bytes(), kind + "; charset=utf-8")
        body = (
            f"avatar-stream: connect a WebSocket client to {self.url} "
            "(protocol: docs/protocol.md); /metrics, /healthz\n"
        ).encode()
        return _response(http.HTTPStatus.OK, body, "text/plain; charset=utf-8")

    # -- one connection -----------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        cfg, world = self.config, self.world
        self.n_connections += 1
        member: Member | None = None
        try:
            if self.n_connections > cfg.max_connections:
                raise P.ProtocolError("server_full", "too many connections; try again later")
            try:
                first = await asyncio.wait_for(ws.recv(), cfg.hello_timeout)
            except TimeoutError:
                raise P.ProtocolError(
                    "hello_timeout", f"send hello within {cfg.hello_timeout:g} s"
                ) from None
            self._count_in(first)
            hello = P.decode_client(first, max_size=cfg.max_frame)
            if not isinstance(hello, P.Hello):
                raise P.ProtocolError("expected_hello", "the first message must be hello")
            member = world.admit(hello, self.clock())
            member.transport = ws
            await self._send(ws, world.welcome(member, self.clock()))
            self._probe_rtt(ws)
            async for data in ws:
                self.stats.frames_in += 1
                self.stats.bytes_in += len(data)
                msg = P.decode_client(data, max_size=cfg.max_frame)
                if isinstance(msg, P.Pos):
                    world.receive_pos(member, msg, self.clock(), ws.latency)
                elif isinstance(msg, P.Ping):
                    await self._send(ws, P.encode_pong(msg.t, self.clock()))
                elif isinstance(msg, P.View):
                    world.set_view(member, msg.region)
                elif isinstance(msg, P.Bye):
                    await ws.close(P.CLOSE_NORMAL, "bye")
                    break
                else:  # a second hello
                    raise P.ProtocolError("expected_hello", "hello was already received")
        except P.ProtocolError as e:
            await self._refuse(ws, e)
        except ConnectionClosed:
            pass
        finally:
            self.n_connections -= 1
            if member is not None:
                member.transport = None
                world.remove(member)

    def _count_in(self, data) -> None:
        self.stats.frames_in += 1
        self.stats.bytes_in += len(data)

    async def _send(self, ws: ServerConnection, frame: bytes) -> None:
        self.stats.frames_out += 1
        self.stats.bytes_out += len(frame)
        await ws.send(frame)

    async def _refuse(self, ws: ServerConnection, e: P.ProtocolError) -> None:
        self.stats.errors[e.code] = self.stats.errors.get(e.code, 0) + 1
        log.info("closing %s: %s (%s)", _peer(ws), e.code, e)
        frame = P.encode_error(e.code, str(e))
        if ws.protocol.state is WsState.OPEN:
            self.stats.frames_out += 1
            self.stats.bytes_out += len(frame)
            broadcast([ws], frame)  # no await: a client that does not read cannot stall us
        with contextlib.suppress(ConnectionClosed):
            await ws.close(e.close_code, e.code)

    def _probe_rtt(self, ws: ServerConnection) -> None:
        async def probe() -> None:
            with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
                waiter = await ws.ping()
                await asyncio.wait_for(waiter, self.config.hello_timeout)

        self._spawn(probe())

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the tick loop --------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.config.tick_period
        start = loop.time()
        k = 0
        while True:
            k += 1
            delay = start + k * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay >= period:  # deadlines passed while the last tick ran: skip, count
                missed = int(-delay // period)
                self.stats.overruns += missed
                k += missed
            t0 = time.perf_counter()
            try:
                await self._tick(loop)
            except Exception:  # a bug in one tick must not stop the service
                self.stats.tick_errors += 1
                log.exception("tick %d failed", self.stats.ticks)
            self.stats.ticks += 1
            self.tick_seconds.observe(time.perf_counter() - t0)

    async def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        world = self.world
        world.begin_tick()
        t0 = time.perf_counter()
        n = world.engine.pending
        if n * self._step_cost * 1000.0 <= self.config.inline_step_ms:
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
            ws: ServerConnection | None = m.transport
            if ws is None or ws.protocol.state is not WsState.OPEN:
                m.controls.clear()
                m.state = None
                continue
            if ws.transport.get_write_buffer_size() > limit:
                m.dropped += 1
                stats.dropped += 1
                m.state = None  # the next tick's frame replaces it; join/leave are kept
                if m.dropped == max_dropped:
                    m.transport = None
                    self.world.remove(m)  # others stop seeing it now, not after the close
                    self._spawn(
                        self._refuse(
                            ws,
                            P.ProtocolError(
                                "too_slow", f"{max_dropped} frames in a row could not be sent"
                            ),
                        )
                    )
                continue
            m.dropped = 0
            frames = m.controls
            if m.state is not None:
                frames.append(m.state)
            try:  # frame them with the Sans-I/O protocol, then one vectored write, no await
                proto = ws.protocol
                for frame in frames:
                    proto.send_binary(frame)
                    stats.bytes_out += len(frame)
                stats.frames_out += len(frames)
                chunks = proto.data_to_send()
                if all(chunks):
                    ws.transport.writelines(chunks)
                else:  # a close is under way: an empty chunk means half-close (EOF)
                    for chunk in chunks:
                        if chunk:
                            ws.transport.write(chunk)
                        elif ws.transport.can_write_eof():
                            ws.transport.write_eof()
            except Exception:  # one client's broken socket never stops the fan-out
                log.debug("write to %s failed", _peer(ws), exc_info=True)
            m.controls = []
            m.state = None


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def _peer(ws: ServerConnection) -> str:
    try:
        host, port = ws.remote_address[:2]
        return f"{host}:{port}"
    except Exception:
        return "?"
