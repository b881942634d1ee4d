"""Load test: many simulated WebSocket clients against a running avatar-stream server.

    python -m client_demo.loadtest --url ws://127.0.0.1:8765/ --clients 1000 --rate 20 \\
        --duration 30 --ramp 5 [--processes auto] [--protocol 2] --rooms 1 --json load.json
    python -m client_demo.loadtest --url ws://127.0.0.1:8700/ --route --rooms 8 ...  # a cluster

Clients connect over --ramp seconds, spread evenly over the worker processes (one asyncio
loop each, uvloop when installed), then each streams the training simulator's motion at
--rate Hz (random phase within the period); the measured window of --duration seconds
starts up to 1 s after the ramp (`settle_time`), and then everything stops: bounded in
count and time. Rooms are filled round-robin; in each room the avatars are
spread over a square sized for about --density neighbours within 30 m, so views are
realistic rather than all-see-all.

Processes: --processes auto (the default) starts ceil(clients / 350) workers, at least 1
and at most the CPUs this process may run on (os.sched_getaffinity, else os.cpu_count());
one worker drives about 350 clients before its own CPU limits the measurement. The
number used is in the report ("processes"; "processes_requested" says what was asked).

The generator shares the machine with the server, so its own cost per frame is kept
small: every frame is counted and sized; only every --sample-every-th client decodes its
`state` frames, to measure end-to-end latency (a `pos` sent -> the first `state` that
carries a prediction made from that seq) and the records per client. The server's tick
duration and overruns come from its /metrics, read before and after the measured window;
its CPU from /proc when --server-pid is given (or it runs on this machine and the PID is
found from the port).

Protocol (--protocol, default 2): a v2 client gets an avatar's record only when its path
changed, on a heartbeat or when it enters the view, so a tick may bring it no `state` at
all by design. "frames_fraction" is state frames received / ticks the connected clients
were in the window (frames expected); "updates_fraction" takes out of the expected frames
the ones the server skipped by design (the delta of avatar_state_frames_skipped_total over
the window, scaled to the window and to this run's share of the server's players), and the
service level uses it when there is one.

Cluster (--route): a cluster's workers (`python -m server --workers N --redis URL`, see
docs/scaling.md) each serve some rooms. With --route the tool asks --url's worker
`GET /route?room=load{k}` for every room the run uses, one after another (so the worker
spreads the new rooms), before its processes start; a null url (one server) or an HTTP
404 (an older server) means --url itself, and any other failure stops the run at the
start as an unreachable /metrics does. Each client connects to its room's worker and
follows an `error` `moved` (close 4001: the room lives elsewhere, or that worker drains) to
the URL it names, or looks the room up again on --url when it names none, at most 4 hops
(then "moved" is its error; "moves" counts the hops). The report names the servers
("workers": the distinct URLs the rooms went to, the cluster's workers, not this tool's
processes; "room_urls": {room: URL}). The server-side figures are then
the cluster's: /metrics is read from every worker the rooms went to and from --url (all
must answer, the slowest read is the one that counts) and summed sample by sample
(`merge_metrics`: tick histograms, counters and the connections gauge add up), and the
server CPU is the sum over the server PIDs' process trees (--server-pid, several allowed;
else the one listening on each worker's port on this machine; each with every process it
started, its step worker included: `client_demo.proctree`). With --workers N give the
supervisor's PID with --server-pid: its tree is the whole cluster. Without
--route every client connects to --url and a `moved` is an error, as before.

It never crashes on overload. A worker that does not report (it died, failed, or was not
ready / did not report by its deadline) is terminated by its PID and counted
("workers_missing", "workers_missing_why", "clients_unreported": those clients are in no
figure, "e2e_clients_lost": their decoding clients' latency samples are lost); a figure
that cannot be computed is null and "unmeasured" says why. Sends run on a schedule: their
lateness is measured ("generator": {"send_lag_ms"}), a send a whole period late is skipped
(counted, never bunched), and the generator is marked saturated ("generator": {"saturated",
"saturated_why"}) when a worker used >= 0.9 CPU s/s in the window, sends ran >= 20 ms late
at p99, or >= 1 % of them were skipped: then the latencies say as much about the
generator (or a machine too busy to run it on time) as about the server.

JSON (`--json`): {"clients", "connected", "connected_late", "errors", "error_kinds",
"close_codes", "protocol", "processes", "frames_expected", "frames_received",
"frames_fraction", "updates_expected", "updates_fraction", "server_frames_skipped",
"e2e_ms": {"p50","p95","p99","max"}, "e2e_samples", "e2e_clients", "tick_ms":
{"p50","p99"}, "model_step_ms": {"p50","p99"}, "overruns", "msgs_sent",
"bytes_out_per_s", "bytes_in_per_s", "server_bytes_out_per_s", "downlink_per_client":
{"bytes_per_s", "frames_per_s", "state_frames_per_s", "records_per_s", "records_from",
"server_records_per_s"}, "generator": {"cpu_s_per_s", "send_lag_ms", "sends_skipped",
"saturated", "saturated_why"}, "generator_cpu_s_per_s", "server_cpu_s_per_s",
"workers_missing", "workers_missing_why", "clients_unreported", "unmeasured",
"machine_listen_overflows", "route", "room_urls", "workers", "moves", "server_pids", ...};
`bytes_out` is what the clients sent, `bytes_in` what they got (whole run);
"downlink_per_client" counts the measured window only, per connected client-second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import re
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_any
from urllib.parse import urlsplit

import numpy as np

from client_demo import proctree
from client_demo.client import ROUTE_TIMEOUT, route_url
from server import cli

STATE_PREFIX = b"\xa4type\xa5state"  # bytes 1..11 of every state frame (a fixmap, "type" first)
DENSITY_RADIUS = 30.0
CLIENTS = ("picows", "websockets")
PROTOCOLS = (1, 2)
CLIENTS_PER_PROCESS = 350  # --processes auto: one worker per this many clients
SATURATED_CPU = 0.9  # CPU s/s of one worker in the window: about one core
SATURATED_LAG_MS = 20.0  # p99 of how late sends ran against their schedule
SATURATED_SKIPPED = 0.01  # fraction of the sends due in the window skipped (a period late)
CLOSE_TIMEOUT = 5.0  # seconds a worker waits for its clients' closing handshakes
CLOSE_WAIT = 15.0  # seconds a worker keeps its clients after the window, for the parent
CONNECT_TRY = 0.5  # seconds for one connection attempt of a /metrics read
MAX_MOVES = 4  # `moved` errors a client follows (--route) before it counts as an error


@dataclass
class ClientStats:
    connected: bool = False
    error: str | None = None
    close_code: int | None = None
    sent: int = 0
    bytes_out: int = 0
    frames: int = 0
    bytes_in: int = 0
    states_in_window: int = 0
    frames_in_window: int = 0  # every frame received in the window (state, join, leave...)
    bytes_in_window: int = 0
    window_s: float = 0.0
    expected_hz: float = 0.0
    connected_at: float | None = None  # loop time of the welcome
    ended_at: float | None = None  # loop time the server closed or dropped it
    records: int = 0  # avatars in the decoded state frames (sampled clients)
    record_bytes: int = 0  # bytes of those frames
    records_in_window: int = 0
    latencies: list[float] = field(default_factory=list)
    moves: int = 0  # `moved` errors followed (--route)


@dataclass
class WorkerJob:
    url: str
    first: int  # global index of this worker's first client
    count: int
    total: int
    rate: float
    duration: float
    ramp: float
    rooms: int
    density: float
    sample_every: int
    seed: int
    client: str = "picows"
    t_connect: float = 0.0  # time.time() when the ramp starts; sent once all workers are ready
    protocol: int = 2
    settle: float = 1.0  # seconds after the ramp before the measured window starts
    room_urls: dict[str, str] | None = None  # --route: each room's worker URL (else all: url)


def auto_processes(clients: int, cpus: int | None = None) -> int:
    """Worker processes for `clients`: ceil(clients / CLIENTS_PER_PROCESS), at least 1, at
    most `cpus` (default: the CPUs this process may run on)."""
    if cpus is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
    return max(1, min(math.ceil(clients / CLIENTS_PER_PROCESS), max(cpus, 1)))


def settle_time(ramp: float) -> float:
    """Seconds between the end of the ramp and the measured window: 1 s, less for a short
    ramp (few clients: their handshakes are done sooner)."""
    return min(1.0, 0.5 + ramp / 2)


def _room_side(clients_in_room: int, density: float) -> float:
    return math.sqrt(max(clients_in_room, 1) * math.pi * DENSITY_RADIUS**2 / max(density, 0.1))


TRACK_HZ = 50.0  # the pool's motion is tabulated at this rate; a send looks its position up


def _tracks(job: WorkerJob) -> tuple[np.ndarray, np.ndarray]:
    """Simulator motion for this worker's clients: a pool of tracks tabulated at TRACK_HZ
    (pool, steps, 3), each client one of them moved to its own place in its room, so
    simulating and sending stay cheap at thousands of clients."""
    from training.simulate import SimConfig, simulate

    n_pool = min(job.count, 64)
    span = job.ramp + job.settle + job.duration + 5.0
    cfg = SimConfig(world_size=60.0, base_rate=20.0, rate=(10.0, 20.0), teleport_per_min=0.0)
    pool = simulate(n_pool, span, seed=job.seed + job.first, config=cfg)
    grid = np.arange(0.0, span, 1.0 / TRACK_HZ)
    table = np.stack([np.nan_to_num(tr.truth_at(np.clip(grid, tr.start, tr.end))) for tr in pool])
    rng = np.random.default_rng(job.seed + 1 + job.first)
    per_room = math.ceil(job.total / job.rooms)
    side = _room_side(per_room, job.density)
    shift = rng.uniform(0, max(side - 60.0, 0.0), (job.count, 2))
    return table, shift


class _Conn:
    """One load client: its socket, its place in the motion table and its counters."""

    __slots__ = ("dx", "dy", "gi", "handle", "sample", "send", "sent_at", "stats", "track", "ws")

    def __init__(self, gi: int, track: int, dx: float, dy: float, sample: bool) -> None:
        self.gi, self.track, self.dx, self.dy, self.sample = gi, track, dx, dy, sample
        self.ws = None  # the library's connection object while open
        self.send = None  # frame -> None, no await; None when not open
        self.handle: int | None = None
        self.sent_at: dict[int, float] = {}
        self.stats = ClientStats()


def room_name(gi: int, rooms: int) -> str:
    """The room of the client with global index `gi`: rooms are filled round-robin."""
    return f"load{gi % rooms}"


def _hello(job: WorkerJob, c: _Conn) -> bytes:
    from server.core import protocol as P

    hello = P.Hello(room=room_name(c.gi, job.rooms), avatar=f"c{c.gi:06d}", v=job.protocol)
    return P.encode_client(hello)


def _first_url(job: WorkerJob, c: _Conn) -> str:
    """Where this client connects first: its room's worker (--route), else --url."""
    if job.room_urls is None:
        return job.url
    return job.room_urls.get(room_name(c.gi, job.rooms), job.url)


async def _next_hop(job: WorkerJob, c: _Conn, reply) -> str | None:
    """Where a hello answered with `reply` (not a welcome) goes next: a `moved` error's
    url, or the room looked up again on --url when it names none. None: give up (no
    --route, not a `moved`, MAX_MOVES hops made, or the look-up failed: its error is set)."""
    if job.room_urls is None or getattr(reply, "code", None) != "moved":
        return None
    if c.stats.moves >= MAX_MOVES:
        return None
    url = getattr(reply, "url", None)
    if not url:
        try:
            url = await asyncio.to_thread(route_url, job.url, room_name(c.gi, job.rooms))
        except OSError:
            c.stats.error = "moved_route_failed"
            return None
    c.stats.moves += 1
    return url


def _ended(c: _Conn, error: str, code: int | None, now: float) -> None:
    """The server closed or dropped this client (not us at the end)."""
    if c.stats.error is None:
        c.stats.error, c.stats.close_code = error, code
    if c.stats.ended_at is None:
        c.stats.ended_at = now
    c.send = None


async def _connect(job: WorkerJob, c: _Conn, t_conn: float, window) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from server.core import protocol as P

    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t_conn - loop.time()))
    target = _first_url(job, c)
    while True:
        try:
            ws = await connect(
                target, max_size=2**22, compression=None, open_timeout=30, close_timeout=2
            )
            await ws.send(_hello(job, c))
            welcome = P.decode_server(await ws.recv())
        except ConnectionClosed as e:
            c.stats.error, c.stats.close_code = "closed", (e.rcvd.code if e.rcvd else None)
            return
        except (OSError, TimeoutError) as e:
            c.stats.error = type(e).__name__
            return
        except Exception as e:  # handshake refused, a frame that is not a server message
            c.stats.error = type(e).__name__
            return
        if isinstance(welcome, P.Welcome):
            break
        await ws.close()
        target = await _next_hop(job, c, welcome)
        if target is None:
            if c.stats.error is None:
                c.stats.error = getattr(welcome, "code", "no_welcome")
                c.stats.close_code = ws.close_code
            return
    from websockets.asyncio.connection import broadcast

    c.ws, c.handle = ws, welcome.handle
    c.send = lambda frame: broadcast((ws,), frame)  # framed and written now, no await
    c.stats.connected, c.stats.expected_hz = True, welcome.tick_hz
    c.stats.connected_at = loop.time()
    try:
        await _read(c, window)
        if c.ws is not None:  # the server closed it cleanly, not us at the end
            _ended(c, "closed", ws.close_code, loop.time())
    except ConnectionClosed as e:
        if c.ws is not None:  # not closed by us at the end
            _ended(c, "closed", e.rcvd.code if e.rcvd else None, loop.time())
    finally:
        c.send = None


def _on_state(c: _Conn, data, now: float, window) -> None:
    """Count one received frame; a sampled client decodes its state frames for latency."""
    from server.core import protocol as P

    stats = c.stats
    stats.frames += 1
    stats.bytes_in += len(data)
    in_window = window[0] <= now < window[1]
    if in_window:
        stats.frames_in_window += 1
        stats.bytes_in_window += len(data)
    if data[1:12] != STATE_PREFIX:
        return
    if in_window:
        stats.states_in_window += 1
    if not c.sample:
        return
    st = P.decode_server(bytes(data))
    stats.records += len(st)
    stats.record_bytes += len(data) if len(st) else 0
    if in_window:
        stats.records_in_window += len(st)
    own = np.flatnonzero(st.handle == c.handle)
    if len(own):
        seq = int(st.seq[own[0]])
        t_sent = c.sent_at.pop(seq, None)
        for old in [k for k in c.sent_at if k < seq]:  # superseded: never answered alone
            del c.sent_at[old]
        if t_sent is not None and window[0] <= t_sent < window[1]:
            stats.latencies.append(now - t_sent)


async def _connect_picows(job: WorkerJob, c: _Conn, t_conn: float, window) -> None:
    """The same client over picows: each frame is counted in a callback, no task per read."""
    from picows import WSListener, WSMsgType, ws_connect

    from server.core import protocol as P

    loop = asyncio.get_running_loop()

    class Listener(WSListener):
        """One connection attempt: the first frame answers the hello; only an attempt that
        was welcomed (`ok`) counts frames and ends the client (a refused one, e.g. `moved`,
        leaves it alone, however late its close arrives)."""

        def __init__(self) -> None:
            super().__init__()
            self.welcomed = loop.create_future()
            self.ok = False
            self.close_code: int | None = None

        def on_ws_frame(self, t, frame) -> None:
            kind = frame.msg_type
            if kind is WSMsgType.BINARY:
                data = frame.get_payload_as_memoryview()
                if self.ok:
                    _on_state(c, data, loop.time(), window)
                elif not self.welcomed.done():
                    try:
                        reply = P.decode_server(bytes(data))
                    except Exception as e:  # not a server message: no welcome
                        reply = type(e).__name__
                    self.ok = isinstance(reply, P.Welcome)
                    self.welcomed.set_result(reply)
            elif kind is WSMsgType.CLOSE:
                code = int(frame.get_close_code().value)
                if self.ok:
                    if c.ws is not None:  # not closed by us at the end
                        _ended(c, "closed", code, loop.time())
                    c.send = None
                else:
                    self.close_code = code
                    if not self.welcomed.done():
                        self.welcomed.set_result(None)
                t.send_close()
                t.disconnect()

        def on_ws_disconnected(self, t) -> None:
            if self.ok:
                if c.ws is not None and c.stats.connected:  # dropped without a close frame
                    _ended(c, "disconnected", None, loop.time())
                c.send = None
            if not self.welcomed.done():
                self.welcomed.set_result(None)

    await asyncio.sleep(max(0.0, t_conn - loop.time()))
    target = _first_url(job, c)
    while True:
        try:
            t, listener = await ws_connect(Listener, target, max_frame_size=2**22,
                                           websocket_handshake_timeout=30)  # fmt: skip
        except (OSError, TimeoutError) as e:
            c.stats.error = type(e).__name__
            return
        except Exception as e:  # picows' handshake errors
            c.stats.error = type(e).__name__
            return
        c.ws = t
        t.send(WSMsgType.BINARY, _hello(job, c))
        welcome = await listener.welcomed
        if isinstance(welcome, P.Welcome):
            break
        c.ws = None
        t.disconnect()
        target = await _next_hop(job, c, welcome)
        if target is None:
            if c.stats.error is None:
                code = getattr(welcome, "code", None) or (
                    welcome if isinstance(welcome, str) else None
                )
                c.stats.error = code or ("no_welcome" if listener.close_code is None else "closed")
                c.stats.close_code = listener.close_code
            return
    c.handle = welcome.handle
    c.send = lambda frame: t.send(WSMsgType.BINARY, frame)
    c.stats.connected, c.stats.expected_hz = True, welcome.tick_hz
    c.stats.connected_at = loop.time()
    await t.wait_disconnected()


async def _close_all(conns: list[_Conn], client: str, timeout: float = CLOSE_TIMEOUT) -> None:
    """Close every open client (a close handshake, at most `timeout` s, then dropped)."""
    open_ws = [c.ws for c in conns if c.ws is not None]
    for c in conns:
        c.ws = None  # from here on a close is ours
        c.send = None
    if client == "picows":
        for t in open_ws:
            with contextlib.suppress(Exception):
                t.send_close()
        waits = [asyncio.ensure_future(t.wait_disconnected()) for t in open_ws]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
        for t, w in zip(open_ws, waits, strict=True):
            if not w.done():
                w.cancel()
                with contextlib.suppress(Exception):
                    t.disconnect()
        await asyncio.gather(*waits, return_exceptions=True)
    else:
        closes = [asyncio.ensure_future(ws.close()) for ws in open_ws]
        if closes:
            _, late = await asyncio.wait(closes, timeout=timeout)
            for w in late:
                w.cancel()
        await asyncio.gather(*closes, return_exceptions=True)


async def _read(c: _Conn, window) -> None:
    loop = asyncio.get_running_loop()
    async for data in c.ws:
        _on_state(c, data, loop.time(), window)


@dataclass
class _SendProbe:
    """How late the sends of one worker ran against their schedule, in the window."""

    lags: list[float] = field(default_factory=list)  # seconds late, one per group wake-up
    skipped: int = 0  # sends not made: a whole period late (clients x periods)
    scheduled: int = 0  # sends due in the window (clients x periods)


async def _send_group(
    job: WorkerJob, conns: list[_Conn], table, phase: float, t0, window, probe: _SendProbe
) -> None:
    """Every client of one phase group sends its position once per period, without awaiting
    each send (one timer per group, not per client). A wake-up a whole period (or more)
    late skips the missed sends (counted in `probe`) rather than bunching them."""
    import msgpack

    loop = asyncio.get_running_loop()
    period = 1.0 / job.rate
    t_start, t_end = window
    k = 0
    while True:
        due = t0 + (k + phase) * period
        if due >= t_end:
            return
        await asyncio.sleep(max(0.0, due - loop.time()))
        now = loop.time()
        late = now - due
        measured = due >= t_start
        if measured:
            probe.lags.append(max(0.0, late))  # a timer may fire a hair early
        if late >= period:
            missed = int(late // period)
            if measured:
                n_open = sum(c.send is not None for c in conns)
                probe.skipped += missed * n_open
                probe.scheduled += missed * n_open
            k += missed
            if t0 + (k + phase) * period >= t_end:
                return
        row = min(int((now - t0) * TRACK_HZ), table.shape[1] - 1)
        for c in conns:
            send = c.send
            if send is None:
                continue
            x, y, z = table[c.track, row].tolist()
            frame = msgpack.packb({"type": "pos", "seq": k, "t": now, "p": [x + c.dx, y + c.dy, z]})
            send(frame)
            if c.sample:
                c.sent_at[k] = now
            c.stats.sent += 1
            c.stats.bytes_out += len(frame)
            if measured:
                probe.scheduled += 1
        k += 1


async def _window_cpu(t_start: float, t_end: float) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of this process between t_start and t_end (loop time),
    read when the loop gets there (late on a saturated loop: the wall time says so)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t_start - loop.time()))
    c0, w0 = time.process_time(), loop.time()
    await asyncio.sleep(max(0.0, t_end - loop.time()))
    return time.process_time() - c0, loop.time() - w0


def _worker_result(
    job: WorkerJob, conns: list[_Conn], probe: _SendProbe, cpu: tuple[float, float], window
) -> dict:
    """This worker's figures, at the end of the window (before its clients are closed)."""
    t_start, t_end = window
    for c in conns:
        s = c.stats
        if not s.connected and s.error is None:  # still connecting at the end
            s.error = "not_connected"
        if s.connected_at is None:
            s.window_s = 0.0
            continue
        cut_end = 0.0 if s.ended_at is None else max(0.0, t_end - s.ended_at)
        s.window_s = max(0.0, job.duration - max(0.0, s.connected_at - t_start) - cut_end)
    stats = [c.stats for c in conns]
    sampled = [c.stats for c in conns if c.sample]
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "pid": os.getpid(),
        "clients": job.count,
        "connected": sum(s.connected for s in stats),
        "connected_late": sum(
            s.connected_at is not None and s.connected_at > t_start for s in stats
        ),
        "connected_at_end": sum(s.connected and s.ended_at is None for s in stats),
        "errors": [s.error for s in stats if s.error],
        "close_codes": [s.close_code for s in stats if s.close_code],
        "sent": sum(s.sent for s in stats),
        "bytes_out": sum(s.bytes_out for s in stats),
        "frames": sum(s.frames for s in stats),
        "bytes_in": sum(s.bytes_in for s in stats),
        "states_in_window": sum(s.states_in_window for s in stats),
        "frames_in_window": sum(s.frames_in_window for s in stats),
        "bytes_in_window": sum(s.bytes_in_window for s in stats),
        "client_seconds": sum(s.window_s for s in stats),
        "expected": sum(s.window_s * s.expected_hz for s in stats),
        "latencies": np.array([x for s in stats for x in s.latencies], dtype=np.float32),
        "records": sum(s.records for s in stats),
        "record_bytes": sum(s.record_bytes for s in stats),
        "records_in_window": sum(s.records_in_window for s in sampled),
        "sampled_clients": sum(s.window_s > 0 for s in sampled),
        "sampled_client_seconds": sum(s.window_s for s in sampled),
        "cpu_s": r.ru_utime + r.ru_stime,
        "window_cpu_s": cpu[0],
        "window_wall_s": cpu[1],
        "send_lags": np.array(probe.lags, dtype=np.float32),
        "sends_skipped": probe.skipped,
        "sends_scheduled": probe.scheduled,
        "moves": sum(s.moves for s in stats),
    }


def _wait_for_close(start, timeout: float) -> None:
    """Wait (at most `timeout` s) for the parent's word that it has read /metrics at the end
    of the window; a parent that is gone ends the wait too."""
    with contextlib.suppress(EOFError, OSError):
        if start.poll(timeout):
            start.recv()


async def _run_worker(
    job: WorkerJob, table: np.ndarray, shift: np.ndarray, link, start=None
) -> None:
    """Connect, send and count until the window ends; send the figures on `link`; wait for
    the parent's word on `start` (its /metrics read sees the clients still there); close."""
    loop = asyncio.get_running_loop()
    wall0 = time.time()
    base = loop.time() + (job.t_connect - wall0)
    t_start = base + job.ramp + job.settle  # everybody connected: the measured window starts
    t_end = t_start + job.duration
    window = (t_start, t_end)
    conns = [
        _Conn(job.first + i, i % table.shape[0], *shift[i], (job.first + i) % job.sample_every == 0)
        for i in range(job.count)
    ]
    connect = _connect_picows if job.client == "picows" else _connect
    readers = [
        asyncio.create_task(connect(job, c, base + job.ramp * c.gi / max(job.total, 1), window))
        for c in conns
    ]
    groups = 10  # phase groups spread the sends over the period; the golden-ratio hash
    # spreads any subset (e.g. the sampled clients, every k-th) over all of them
    member = [int(((c.gi * 0.6180339887) % 1.0) * groups) for c in conns]
    probe = _SendProbe()
    cpu = asyncio.create_task(_window_cpu(t_start, t_end))
    senders = [
        asyncio.create_task(
            _send_group(
                job,
                [c for c, g2 in zip(conns, member, strict=True) if g2 == g],
                table,
                (g + 0.5) / groups,
                base,
                window,
                probe,
            )
        )
        for g in range(groups)
    ]
    await asyncio.gather(*senders)
    result = _worker_result(job, conns, probe, await cpu, window)
    reporting = asyncio.ensure_future(asyncio.to_thread(link.send, ("result", result)))
    for c, task in zip(conns, readers, strict=True):
        if not c.stats.connected and not task.done():  # a handshake still in flight
            task.cancel()
    if start is not None:
        await asyncio.to_thread(_wait_for_close, start, CLOSE_WAIT)
    await _close_all(conns, job.client)
    _, late = await asyncio.wait(readers, timeout=1.0)
    for task in late:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await reporting


def _worker_main(job: WorkerJob, link, start) -> None:
    """A worker process: ("ready", None) once its motion is made, then ("result", figures)
    after the window, or ("fatal", why) on any failure; never hangs its parent."""
    from server.serve import runner

    try:
        table, shift = _tracks(job)  # the slow part of starting, before the common start
        link.send(("ready", None))
        job.t_connect = start.recv()
        runner.run(_run_worker(job, table, shift, link, start))
    except BaseException as e:  # report, never hang the parent
        with contextlib.suppress(Exception):
            link.send(("fatal", f"{type(e).__name__}: {e}"))


# -- server side readings -------------------------------------------------------------------


def fetch_metrics(url: str, timeout: float = 10.0) -> str:
    """The server's /metrics text (same host and port as the WebSocket URL), within `timeout` s.

    A connection not accepted within CONNECT_TRY s is tried afresh until the timeout: a
    full accept queue (a connection storm) drops SYNs, which the kernel retries only after
    1, 3, 7 ... s. Raises OSError: refused, timed out, or an HTTP status other than 200.
    """
    import http.client
    from urllib.error import HTTPError

    where = metrics_url(url)
    u = urlsplit(where)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        conn = http.client.HTTPConnection(
            u.hostname, u.port, timeout=max(0.01, min(CONNECT_TRY, left))
        )
        try:
            try:
                conn.connect()
            except TimeoutError:
                if deadline - time.monotonic() <= 0:
                    raise
                continue
            conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
            conn.request("GET", u.path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise HTTPError(where, resp.status, resp.reason, resp.headers, None)
            return body.decode()
        except http.client.HTTPException as e:  # not HTTP: an OSError like the others
            raise OSError(f"{where}: {type(e).__name__}: {e}") from None
        finally:
            conn.close()


def route_rooms(url: str, rooms: int, timeout: float = ROUTE_TIMEOUT) -> dict[str, str]:
    """{room: worker URL} for the rooms load0 .. load{rooms-1}, asked of `url`'s worker one
    after another (a worker spreads consecutive new rooms over the cluster). OSError as
    `route_url`."""
    names = [room_name(k, rooms) for k in range(rooms)]
    return {room: route_url(url, room, timeout) for room in names}


def _sample_line(line: str) -> tuple[str, float] | None:
    """(name with its labels as written, value) of one exposition line; None for a
    comment, a blank line or one that does not parse."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if "}" in line:  # a label value may hold spaces (and braces): split after the last }
        cut = line.rindex("}") + 1
        key, rest = line[:cut], line[cut:].split()
    else:
        key, *rest = line.split()
    try:
        return key, float(rest[0])  # a timestamp after the value, if any, is dropped
    except (IndexError, ValueError):
        return None


def _prom_float(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def merge_metrics(texts: list[str]) -> str:
    """Several servers' /metrics texts as one: the samples with the same name and labels
    summed over the texts (histogram buckets, _sum and _count, counters and the
    connections gauge add up: the histogram of the merged buckets is that of all the
    servers' observations together), in the order first seen; comment lines dropped.
    Pure. (A gauge that does not add up, e.g. a start time, is summed all the same.)"""
    sums: dict[str, float] = {}
    for text in texts:
        for line in text.splitlines():
            sample = _sample_line(line)
            if sample is not None:
                key, v = sample
                sums[key] = sums.get(key, 0.0) + v
    return "".join(f"{key} {_prom_float(v)}\n" for key, v in sums.items())


def _buckets(metrics: str, name: str) -> list[tuple[float, float]]:
    return [
        (math.inf if le == "+Inf" else float(le), float(v))
        for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', metrics, re.M)
    ]


def histogram_quantiles(before: str, after: str, name: str, qs=(0.5, 0.99)) -> dict:
    """Quantiles (ms) of a Prometheus histogram over the window between two scrapes."""
    b = dict(_buckets(before, name))
    return bucket_quantiles([(le, n - b.get(le, 0.0)) for le, n in _buckets(after, name)], qs)


def bucket_quantiles(rows: list[tuple[float, float]], qs=(0.5, 0.99)) -> dict:
    """Quantiles (ms) from cumulative histogram buckets [(le seconds, count)], sorted by le,
    interpolated within a bucket as Prometheus' histogram_quantile; None when empty."""
    total = rows[-1][1] if rows else 0.0
    out = {}
    for q in qs:
        val, lo_le, lo_n = None, 0.0, 0.0
        for le, n in rows:
            if total > 0 and n >= q * total:
                hi = le if math.isfinite(le) else lo_le
                val = 1000 * (lo_le + (hi - lo_le) * (q * total - lo_n) / max(n - lo_n, 1e-12))
                break
            lo_le, lo_n = le, n
        out[f"p{round(q * 100)}"] = val
    return out


def _series(metrics: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample (`name` with exactly `labels`), None when it is not there."""
    if labels:
        inner = ",".join(f'{k}="{re.escape(v)}"' for k, v in labels.items())
        pattern = rf"^{re.escape(name)}\{{{inner}\}} (\S+)$"
    else:
        pattern = rf"^{re.escape(name)} (\S+)$"
    m = re.search(pattern, metrics, re.M)
    return float(m.group(1)) if m else None


def counter(metrics: str, name: str, labels: dict[str, str] | None = None) -> float:
    """A counter's (or gauge's) value, 0 when the server does not export it."""
    v = _series(metrics, name, labels)
    return 0.0 if v is None else v


def listen_overflows() -> int | None:
    """The machine's count of connections dropped by a full accept queue (Linux
    /proc/net/netstat TcpExt ListenOverflows; every listener on the machine), None elsewhere."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            row = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            with contextlib.suppress(KeyError, ValueError):
                return int(row["ListenOverflows"])
    return None


@dataclass
class Scrape:
    """One read of /metrics (and the server's CPU) from the parent: `text` None when it
    failed (`why`); `t` the wall time in the middle of the request, `took` its seconds (a
    server that answers late makes the middle a guess), `cpu` read when it was sent, at
    `t_sent`."""

    text: str | None = None
    t: float = 0.0
    cpu: float | None = None
    why: str | None = None
    took: float = 0.0
    t_sent: float = 0.0


def _pid_list(pids) -> list[int]:
    """None, a PID or PIDs -> the distinct PIDs, in order."""
    if pids is None:
        return []
    return list(dict.fromkeys(int(p) for p in ([pids] if isinstance(pids, int) else pids) if p))


def scrape(
    url: str | list[str], server_pid: int | list[int] | None = None, timeout: float = 10.0
) -> Scrape:
    """Read /metrics and the server's CPU now; never raises (a failure is in `why`).

    Several URLs (a cluster's workers): every /metrics is read at once (one thread each)
    and the texts merged (`merge_metrics`); the read fails if any one does; `took` is the
    slowest read. `cpu` is the CPU seconds of the server PIDs' whole process trees (a
    step worker, a cluster's workers: `proctree`), None if one cannot be read; a server in
    this very process counts without this process's children (the load tool's own)."""
    urls = [url] if isinstance(url, str) else list(dict.fromkeys(url))
    pids = _pid_list(server_pid)
    t0 = time.time()
    cpu = None
    if pids:
        ours = proctree.children(os.getpid()) if os.getpid() in pids else []
        with contextlib.suppress(OSError, ValueError, IndexError):
            cpu = proctree.tree_cpu_s(pids, exclude=ours)

    def read(u: str) -> tuple[str | None, str | None, float]:
        t = time.time()
        try:
            return fetch_metrics(u, timeout), None, time.time() - t
        except (OSError, ValueError) as e:
            return None, f"{metrics_url(u)}: {cli.first_line(e)}", time.time() - t

    if len(urls) == 1:
        reads = [read(urls[0])]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(urls)) as pool:
            reads = list(pool.map(read, urls))
    t1 = time.time()
    whys = [w for _, w, _ in reads if w]
    text = None
    if not whys:
        text = reads[0][0] if len(reads) == 1 else merge_metrics([t for t, _, _ in reads])
    took = max(k for _, _, k in reads) if len(reads) > 1 else t1 - t0
    return Scrape(text, (t0 + t1) / 2, cpu, "; ".join(whys) or None, took, t0)


# -- the run ---------------------------------------------------------------------------------


def parse_processes(value) -> int | None:
    """--processes: "auto" (or None) -> None, else an int >= 1; ValueError otherwise."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    n = int(value)
    if n < 1:
        raise ValueError(f"processes must be auto or >= 1, not {value!r}")
    return n


def check_args(
    clients: int,
    rate: float,
    duration: float,
    ramp: float,
    processes: int | str | None,
    rooms: int,
    sample_every: int,
    client: str,
    protocol: int = 2,
) -> None:
    """Raise ValueError (saying which) unless the arguments of `run` make sense."""
    try:
        parse_processes(processes)
    except (TypeError, ValueError):
        raise ValueError(f"need processes auto or >= 1, not {processes!r}") from None
    if clients < 1 or rate <= 0 or duration <= 0 or ramp < 0 or rooms < 1:
        raise ValueError(
            "need clients >= 1, rate > 0, duration > 0, ramp >= 0, processes >= 1, rooms >= 1"
        )
    if sample_every < 1:
        raise ValueError("need sample_every >= 1")
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}")


@contextlib.contextmanager
def _sigint_ignored():
    """Processes started inside inherit an ignored SIGINT: Ctrl-C is the parent's to handle
    (it stops the run; the workers are terminated by their PID on the way out)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def collect(procs, links, pending: set[int], kind: str, deadline: float, got: dict, why: dict):
    """Receive each pending worker's `kind` message until `deadline` (time.time()).

    `links[i]` is the read end of worker i's pipe, `procs[i]` its process. A message lands
    in `got[i]`; a worker that sent "fatal", died or exited first gets its reason in `why[i]`;
    the ones still pending at the deadline are returned (the caller says why). Never raises
    for what a worker does; never waits past the deadline.
    """
    pending = set(pending)
    while pending:
        left = deadline - time.time()
        if left <= 0:
            break
        ready = set(wait_any([links[i] for i in pending] + [procs[i].sentinel for i in pending],
                             timeout=left))  # fmt: skip
        for i in sorted(pending):
            link, proc = links[i], procs[i]
            if link in ready or (proc.sentinel in ready and _poll(link)):
                try:
                    tag, body = link.recv()
                except (EOFError, OSError):
                    proc.join(0.5)
                    why[i] = f"died before reporting ({_exit_text(proc.exitcode)})"
                    pending.discard(i)
                    continue
                except Exception as e:  # a message that does not unpickle
                    why[i] = f"sent an unreadable report: {type(e).__name__}: {e}"
                    pending.discard(i)
                    continue
                if tag == kind:
                    got[i] = body
                    pending.discard(i)
                elif tag == "fatal":
                    why[i] = f"failed: {body}"
                    pending.discard(i)
            elif proc.sentinel in ready:
                proc.join(0.5)
                why[i] = f"exited before reporting ({_exit_text(proc.exitcode)})"
                pending.discard(i)
    return pending


def _poll(link) -> bool:
    try:
        return link.poll()
    except (EOFError, OSError):
        return False


def stop_workers(procs, grace: float = 2.0) -> None:
    """Terminate every worker still alive by its PID: SIGTERM (and SIGCONT, for a stopped
    one), then SIGKILL after `grace` seconds. Only these processes, never by name."""
    alive = [p for p in procs if p.pid is not None and p.is_alive()]
    for p in alive:
        for sig in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, sig)
    deadline = time.time() + grace
    for p in alive:
        p.join(max(0.0, deadline - time.time()))
    for p in alive:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p.pid, signal.SIGKILL)
            p.join(2.0)


def run(
    url: str,
    clients: int,
    rate: float = 20.0,
    duration: float = 10.0,
    ramp: float = 2.0,
    processes: int | str | None = None,
    rooms: int = 1,
    density: float = 30.0,
    sample_every: int = 20,
    seed: int = 0,
    server_pid: int | None = None,
    client: str = "picows",
    protocol: int = 2,
    ready_timeout: float = 120.0,
    report_timeout: float = 30.0,
    on_start: Callable[[list[int]], None] | None = None,
    route: bool = False,
    server_pids: list[int] | None = None,
    room_urls: dict[str, str] | None = None,
) -> dict:
    """Run one bounded load test; returns the figures (see the module docstring).

    `processes` None or "auto": `auto_processes(clients)`. A worker not ready within
    `ready_timeout` s, or without its figures `report_timeout` s after the window, is
    terminated by its PID and counted missing. `on_start(pids)` is called with the started
    workers' PIDs as their clients begin to connect (to watch, pin or profile them).

    `route`: look every room up on `url` (`GET /route`, `route_rooms`) before the workers
    start, connect each client to its room's server and follow `moved`; /metrics is then
    read from every server the rooms went to and from `url`, and summed. The server CPU is
    that of the process trees of `server_pids` and `server_pid` (none given: the process
    listening on each of those servers' ports on this machine, when every one is found;
    each with its step worker). With `python -m server --workers N` pass the supervisor's
    PID in `server_pids`: its tree is every worker (it is not found by port: it does not
    listen).
    `room_urls` ({room_name: URL}, without `route`): a fixed placement used the same way
    (rooms it does not name go to `url`), e.g. rooms split by hand over plain servers.

    Raises ValueError for bad arguments and OSError if the server's /metrics (or, with
    `route`, its /route) is unreachable at the start; after that it always returns a report.
    """
    check_args(clients, rate, duration, ramp, processes, rooms, sample_every, client, protocol)
    requested = parse_processes(processes)
    n_proc = auto_processes(clients) if requested is None else min(requested, clients)
    fetch_metrics(url)  # fail fast when the server is not there
    room_urls = route_rooms(url, rooms) if route else (dict(room_urls) if room_urls else None)
    workers = list(dict.fromkeys(room_urls.values())) if room_urls else [url]
    metrics_from = list(dict.fromkeys([url, *workers]))
    pids, pids_why = _pid_list([*(server_pids or []), *_pid_list(server_pid)]), None
    if not pids:
        found = {u: find_server_pid(u) for u in metrics_from}
        lost = [u for u, p in found.items() if p is None]
        if lost:
            pids_why = (
                "no --server-pid, and no process on this machine listens on the port of "
                + ", ".join(lost)
            )
        else:
            pids = _pid_list(list(found.values()))
    settle = settle_time(ramp)
    share = [clients // n_proc + (k < clients % n_proc) for k in range(n_proc)]
    firsts = np.concatenate([[0], np.cumsum(share)[:-1]]).astype(int)
    jobs = [
        WorkerJob(url, int(f), n, clients, rate, duration, ramp, rooms, density, sample_every,
                  seed, client, protocol=protocol, settle=settle, room_urls=room_urls)
        for f, n in zip(firsts, share, strict=True)
    ]  # fmt: skip
    setup = {
        "clients": clients,
        "rate_hz": rate,
        "duration_s": duration,
        "ramp_s": ramp,
        "settle_s": settle,
        "processes": n_proc,
        "processes_requested": "auto" if requested is None else requested,
        "rooms": rooms,
        "client": client,
        "protocol": protocol,
        "sample_every": sample_every,
        "route": route,
        "room_urls": room_urls or {room_name(k, rooms): url for k in range(rooms)},
        "workers": workers,
        "server_pids": pids,
        "server_pids_why": pids_why,
    }
    overflows0 = listen_overflows()
    ctx = mp.get_context("spawn")
    links, starts, procs = [], [], []
    got: dict[int, dict] = {}
    why: dict[int, str] = {}
    m0 = m1 = after = Scrape(why="no worker started")
    try:
        with _sigint_ignored():
            for i, j in enumerate(jobs):
                link_r, link_w = ctx.Pipe(duplex=False)
                start_r, start_w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_worker_main, args=(j, link_w, start_r), daemon=True)
                links.append(link_r)
                starts.append(start_w)
                procs.append(p)
                try:
                    p.start()
                except OSError as e:  # out of processes or memory: run with the others
                    why[i] = f"could not start: {type(e).__name__}: {e}"
                link_w.close()  # the parent's copies: a dead worker's link reads EOF
                start_r.close()
        ready: dict[int, None] = {}
        late = collect(procs, links, set(range(n_proc)) - why.keys(), "ready",
                       time.time() + ready_timeout, ready, why)  # fmt: skip
        for i in late:
            why[i] = f"not ready within {ready_timeout:g} s (importing, making its motion)"
        stop_workers([procs[i] for i in why])
        t_connect = time.time() + 0.2
        started = []
        for i in sorted(ready):
            try:
                starts[i].send(t_connect)
                started.append(i)
            except OSError as e:
                why[i] = f"could not be started: {type(e).__name__}: {e}"
        if started:
            if on_start is not None:
                on_start([procs[i].pid for i in started])
            window_start = t_connect + ramp + settle
            # read /metrics around the measured window, from this (idle) parent process
            time.sleep(max(0.0, window_start - time.time()))
            m0 = scrape(metrics_from, pids)
            time.sleep(max(0.0, window_start + duration - time.time()))
            m1 = scrape(metrics_from, pids)
            for i in started:  # read with the clients still there: they may close now
                with contextlib.suppress(OSError):
                    starts[i].send("close")
            deadline = max(time.time(), window_start + duration) + report_timeout
            late = collect(procs, links, set(started) - why.keys(), "result", deadline, got, why)
            for i in late:
                why[i] = f"did not report within {report_timeout:g} s after the window"
            stop_workers([procs[i] for i in late])
            # the reported ones are closing their clients: give them the time they take
            close_by = time.time() + CLOSE_TIMEOUT + 3.0
            for i in got:
                procs[i].join(max(0.0, close_by - time.time()))
            after = scrape(metrics_from, pids)
    finally:
        stop_workers(procs)
        for c in links + starts:
            with contextlib.suppress(OSError):
                c.close()
    missing = {
        i: (jobs[i].first, jobs[i].count, procs[i].pid, why.get(i))
        for i in range(n_proc)
        if i not in got
    }
    overflows1 = listen_overflows()
    report = build_report(setup, [got[i] for i in sorted(got)], missing, m0, m1, after)
    report["machine_listen_overflows"] = (
        overflows1 - overflows0 if overflows0 is not None and overflows1 is not None else None
    )
    return report


# -- the report --------------------------------------------------------------------------------


def generator_verdict(
    cpu_s_per_s: list[float | None], lag_p99_ms: float | None, skipped: int, scheduled: int
) -> list[str]:
    """Why the generator was saturated in the window (empty: it was not): a worker at about
    one core, sends running late at p99, or >= 1 % of the sends skipped a whole period late.
    Late sends on a worker far from a core mean the machine starved it (other processes)."""
    out = []
    for k, c in enumerate(cpu_s_per_s):
        if c is not None and c >= SATURATED_CPU:
            out.append(f"worker {k} used {c:.2f} CPU s/s (>= {SATURATED_CPU:g}: about one core)")
    if lag_p99_ms is not None and lag_p99_ms >= SATURATED_LAG_MS:
        out.append(f"sends ran {lag_p99_ms:.0f} ms late at p99 (>= {SATURATED_LAG_MS:g} ms)")
    if skipped and skipped >= SATURATED_SKIPPED * scheduled:
        out.append(f"{skipped} of {scheduled} sends skipped, a whole period late")
    return out


def _quantiles_ms(values: np.ndarray, qs) -> dict:
    return {k: float(np.percentile(values, q)) if len(values) else None for k, q in qs}


def _decoding_clients(first: int, count: int, every: int) -> int:
    """How many of the clients first .. first+count-1 decode (index % every == 0)."""
    return -(-(first + count) // every) - -(-first // every)


def build_report(
    setup: dict, results: list[dict], missing: dict, m0: Scrape, m1: Scrape, after: Scrape
) -> dict:
    """The run's figures from the workers' `results`, the `missing` workers ({index:
    (first client, clients, pid, why)}) and the /metrics scrapes around the window (m0, m1)
    and after the run. Pure: every figure that cannot be computed is None and
    report["unmeasured"][key] says why."""
    unmeasured: dict[str, str] = {}
    duration, ramp, settle = setup["duration_s"], setup["ramp_s"], setup["settle_s"]
    every, protocol = setup["sample_every"], setup["protocol"]

    def tot(key: str) -> float:
        return sum(r[key] for r in results)

    def cat(key: str) -> np.ndarray:
        parts = [np.asarray(r[key], dtype=np.float64) for r in results]
        return np.concatenate(parts) if parts else np.zeros(0)

    no_worker = "no worker reported" if not results else None
    errors = [e for r in results for e in r["errors"]]
    close_codes: dict[str, int] = {}
    for r in results:
        for c in r["close_codes"]:
            close_codes[str(c)] = close_codes.get(str(c), 0) + 1
    connected = int(tot("connected"))
    expected = float(tot("expected"))
    received = int(tot("states_in_window"))
    frames_fraction = received / expected if expected > 0 else None
    if frames_fraction is None:
        unmeasured["frames_fraction"] = no_worker or "no client was connected in the window"

    # -- the server's side, from /metrics around the window
    ok = m0.text is not None and m1.text is not None
    metrics_why = None if ok else (m0.why or m1.why or "no /metrics read")
    interval = (m1.t - m0.t) if ok and m1.t > m0.t else None
    if ok and interval is None:
        ok, metrics_why = False, "the two /metrics reads were not apart in time"
    if ok and m0.took + m1.took > 0.25 * interval:
        ok, metrics_why = (
            False,
            (
                f"the /metrics reads around the window took {m0.took:.1f} s and {m1.took:.1f} s "
                "(the server answered late), so when it counted is uncertain by "
                f"{m0.took + m1.took:.1f} s of the {interval:.1f} s between them"
            ),
        )
    players = None
    if ok:  # were the reads answered while this run's clients were there?
        p0, p1 = (_series(m.text, "avatar_connections", {"kind": "player"}) for m in (m0, m1))
        ours0 = tot("connected") - tot("connected_late")  # connected when the window began
        ours1 = sum(r.get("connected_at_end", r["connected"]) for r in results)
        if p0 is not None and p1 is not None:
            players = (p0 + p1) / 2
            if p0 < 0.5 * ours0 or p1 < 0.5 * ours1:
                ok, metrics_why = (
                    False,
                    (
                        f"the /metrics reads around the window were answered with {p0:.0f} and "
                        f"{p1:.0f} players connected, while {ours0:.0f} and {ours1:.0f} of this "
                        f"run's clients were (the reads took {m0.took:.1f} s and {m1.took:.1f} s: "
                        "the server answered them late), so they do not bracket the window"
                    ),
                )

    def delta(name: str, labels=None) -> float | None:
        return counter(m1.text, name, labels) - counter(m0.text, name, labels) if ok else None

    empty_q = {"p50": None, "p99": None}
    tick_ms = histogram_quantiles(m0.text, m1.text, "avatar_tick_seconds") if ok else empty_q
    step_ms = histogram_quantiles(m0.text, m1.text, "avatar_model_step_seconds") if ok else empty_q
    for key, q in (("tick_ms", tick_ms), ("model_step_ms", step_ms)):
        if q["p99"] is None:
            unmeasured[key] = metrics_why or "no tick (model step) ended in the window"
    overruns = delta("avatar_tick_overruns_total")
    end = after if after.text is not None else m1
    dropped = (
        counter(end.text, "avatar_frames_dropped_total")
        - counter(m0.text, "avatar_frames_dropped_total")
        if ok and end.text is not None
        else None
    )
    out_bytes = delta("avatar_bytes_out_total")
    server_bytes_out_per_s = out_bytes / interval if out_bytes is not None else None
    for key, v in (("overruns", overruns), ("dropped_frames", dropped),
                   ("server_bytes_out_per_s", server_bytes_out_per_s)):  # fmt: skip
        if v is None:
            unmeasured[key] = metrics_why
    if m0.cpu is not None and m1.cpu is not None and m1.t_sent > m0.t_sent:
        server_cpu = (m1.cpu - m0.cpu) / (m1.t_sent - m0.t_sent)
    else:
        server_cpu = None
        pids = setup.get("server_pids") or _pid_list(setup.get("server_pid"))
        if pids:
            unmeasured["server_cpu_s_per_s"] = f"could not read /proc/PID/stat of every PID {pids}"
        else:
            unmeasured["server_cpu_s_per_s"] = setup.get("server_pids_why") or (
                "no --server-pid, and no process on this machine listens on the URL's port"
            )

    # -- updates: state frames expected less the ones the server skipped by design (v2)
    skipped_raw = delta("avatar_state_frames_skipped_total")
    updates_expected = updates_fraction = skipped_est = None
    if protocol == 1:
        skipped_est = 0.0  # the server skips frames for v2 clients only
    elif ok:
        if _series(m1.text, "avatar_state_frames_skipped_total") is None:
            unmeasured["server_frames_skipped"] = (
                "the server exports no avatar_state_frames_skipped_total (taken as 0)"
            )
        share = min(1.0, connected / players) if players else 1.0
        skipped_est = skipped_raw * (duration / interval) * share
    else:
        unmeasured["updates_fraction"] = f"no skipped-frame count: {metrics_why}"
    if skipped_est is not None and no_worker is None:
        updates_expected = expected - skipped_est
        if updates_expected > 0:
            updates_fraction = received / updates_expected
        else:
            unmeasured["updates_fraction"] = "no frame was due in the window"
    elif no_worker:
        unmeasured["updates_fraction"] = no_worker

    # -- per client downlink, in the window
    cs = float(tot("client_seconds"))
    scs = float(tot("sampled_client_seconds"))
    sampled = int(tot("sampled_clients"))

    def per_cs(key: str, seconds: float) -> float | None:
        return float(tot(key)) / seconds if seconds > 0 else None

    version_records = delta("avatar_state_records_total", {"version": str(protocol)})
    downlink = {
        "bytes_per_s": per_cs("bytes_in_window", cs),
        "frames_per_s": per_cs("frames_in_window", cs),
        "state_frames_per_s": per_cs("states_in_window", cs),
        "records_per_s": per_cs("records_in_window", scs),
        "records_from": (
            f"the {sampled} decoding clients (every {every}-th client) over "
            f"{scs:.0f} client-seconds, averaged over them, not extrapolated"
        ),
        "server_records_per_s": (
            version_records / interval / players
            if version_records is not None and players
            else None
        ),
    }
    for key in ("bytes_per_s", "frames_per_s", "state_frames_per_s"):
        if downlink[key] is None:
            unmeasured[f"downlink_per_client.{key}"] = (
                no_worker or "no client was connected in the window"
            )
    if downlink["records_per_s"] is None:
        unmeasured["downlink_per_client.records_per_s"] = (
            no_worker or f"no decoding client (every {every}-th) was connected in the window"
        )
    if downlink["server_records_per_s"] is None:
        unmeasured["downlink_per_client.server_records_per_s"] = (
            metrics_why or "the server reported no connected player"
        )

    # -- end to end latency (decoding clients)
    lat = cat("latencies") * 1000.0
    e2e = _quantiles_ms(lat, (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100)))
    if not len(lat):
        unmeasured["e2e_ms"] = no_worker or (
            f"no decoding client (every {every}-th) was connected in the window"
            if not sampled
            else "no decoding client's pos was answered in the window"
        )
    records, record_bytes = tot("records"), tot("record_bytes")
    state_bytes = record_bytes / records if records else None
    if state_bytes is None:
        unmeasured["state_bytes_per_avatar"] = no_worker or "no decoded state frame had a record"

    # -- the generator itself
    cpu_per = [
        r["window_cpu_s"] / r["window_wall_s"] if r["window_wall_s"] > 0 else None for r in results
    ]
    lags = cat("send_lags") * 1000.0
    send_lag = _quantiles_ms(lags, (("p50", 50), ("p99", 99), ("max", 100)))
    skipped_sends, scheduled = int(tot("sends_skipped")), int(tot("sends_scheduled"))
    saturated_why = generator_verdict(cpu_per, send_lag["p99"], skipped_sends, scheduled)
    if not results:
        unmeasured["generator"] = no_worker
    elif not len(lags):
        unmeasured["generator.send_lag_ms"] = "no send was due in the window"
    gen_cpu = tot("cpu_s") / (duration + ramp + settle) if results else None
    if gen_cpu is None:
        unmeasured["generator_cpu_s_per_s"] = no_worker

    missing_why = [
        f"worker {i} (pid {pid}, clients {first}..{first + n - 1}): {why or 'no report'}"
        for i, (first, n, pid, why) in sorted(missing.items())
    ]
    return {
        **{
            k: v
            for k, v in setup.items()
            if k not in ("sample_every", "server_pid", "server_pids_why")
        },
        "connected": connected,
        "connected_late": int(tot("connected_late")),
        "errors": len(errors),
        "error_kinds": {e: errors.count(e) for e in sorted(set(errors))},
        "close_codes": close_codes,
        "workers_missing": len(missing),
        "workers_missing_why": missing_why,
        "clients_unreported": sum(n for _, n, _, _ in missing.values()),
        "frames_expected": round(expected),
        "frames_received": received,
        "frames_fraction": frames_fraction,
        "server_frames_skipped": skipped_raw,
        "updates_expected": None if updates_expected is None else round(updates_expected),
        "updates_fraction": updates_fraction,
        "e2e_ms": e2e,
        "e2e_samples": len(lat),
        "e2e_clients": sampled,
        "e2e_clients_lost": sum(_decoding_clients(f, n, every) for f, n, _, _ in missing.values()),
        "tick_ms": tick_ms,
        "model_step_ms": step_ms,
        "overruns": overruns,
        "dropped_frames": dropped,
        "moves": int(sum(r.get("moves", 0) for r in results)),
        "metrics_window_s": interval,
        "metrics_read_s": [m0.took, m1.took],
        "state_bytes_per_avatar": state_bytes,
        "msgs_sent": int(tot("sent")),
        "bytes_out_per_s": tot("bytes_out") / (duration + ramp),
        "bytes_in_per_s": tot("bytes_in") / (duration + ramp),
        "server_bytes_out_per_s": server_bytes_out_per_s,
        "downlink_per_client": downlink,
        "generator": {
            "processes": setup["processes"],
            "cpu_s_per_s": cpu_per,
            "send_lag_ms": send_lag,
            "sends_skipped": skipped_sends,
            "sends_scheduled": scheduled,
            "saturated": bool(saturated_why) if results else None,
            "saturated_why": saturated_why,
        },
        "generator_cpu_s_per_s": gen_cpu,
        "server_cpu_s_per_s": server_cpu,
        "unmeasured": unmeasured,
    }


def meets_service_level(r: dict, e2e_p99_ms=100.0, tick_p99_ms=25.0, frames=0.95) -> bool:
    """The service level of the capacity benchmark: no errors, every worker reported, e2e
    p99, tick p99, and the fraction of state frames: "updates_fraction" when there is one
    (v2 frames the server skipped by design are not missing), else "frames_fraction" (a
    lower bound of it). A figure that could not be measured does not hold."""
    e2e, tick = r["e2e_ms"]["p99"], r["tick_ms"]["p99"]
    fraction = r.get("updates_fraction")
    if fraction is None:
        fraction = r.get("frames_fraction")
    return (
        r["errors"] == 0
        and not r.get("workers_missing")
        and e2e is not None
        and e2e <= e2e_p99_ms
        and tick is not None
        and tick <= tick_p99_ms
        and fraction is not None
        and fraction >= frames
    )


def print_summary(r: dict) -> None:
    e, t, d = r["e2e_ms"], r["tick_ms"], r.get("downlink_per_client", {})
    g = r.get("generator", {})

    def f(v, fmt=".1f", scale=1.0):
        return "-" if v is None else format(v * scale, fmt)

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    lag = g.get("send_lag_ms") or {}
    lines = [
        f"clients {r['clients']} (connected {r['connected']}, errors {r['errors']}"
        f"{', ' + str(r.get('connected_late')) + ' late' if r.get('connected_late') else ''}) "
        f"at {r['rate_hz']:g} Hz for {r['duration_s']:g} s, protocol v{r.get('protocol', 1)}, "
        f"{r['processes']} worker(s) ({r.get('processes_requested', '-')})",
        f"  frames   {r['frames_received']}/{r['frames_expected']} ({pct(r['frames_fraction'])}), "
        f"updates {r['frames_received']}/{f(r.get('updates_expected'), '.0f')} "
        f"({pct(r.get('updates_fraction'))}; server skipped "
        f"{f(r.get('server_frames_skipped'), '.0f')} by design), dropped by server "
        f"{f(r['dropped_frames'], '.0f')}",
        f"  e2e ms   p50 {f(e['p50'])}  p95 {f(e['p95'])}  p99 {f(e['p99'])}  max {f(e['max'])}"
        f"  ({r['e2e_samples']} samples from {r.get('e2e_clients', '-')} clients)",
        f"  tick ms  p50 {f(t['p50'])}  p99 {f(t['p99'])}  overruns {f(r['overruns'], '.0f')};"
        f"  model step p99 {f(r['model_step_ms']['p99'])} ms"
        + (
            f" (/metrics {r['metrics_window_s']:.1f} s apart)"
            if r.get("metrics_window_s") and abs(r["metrics_window_s"] - r["duration_s"]) > 0.5
            else ""
        ),
        f"  traffic  up {r['bytes_out_per_s'] / 1e3:.0f} kB/s, down "
        f"{r['bytes_in_per_s'] / 1e6:.2f} MB/s ({f(r['state_bytes_per_avatar'])} B per avatar "
        f"in a state frame)",
        f"  per client down: {f(d.get('bytes_per_s'), '.0f')} B/s, "
        f"{f(d.get('state_frames_per_s'))} state frames/s, {f(d.get('records_per_s'))} "
        f"records/s (decoding clients; server says {f(d.get('server_records_per_s'))})",
        f"  cpu s/s  generator {f(r['generator_cpu_s_per_s'], '.2f')} (per worker in the window: "
        f"{', '.join(f(c, '.2f') for c in g.get('cpu_s_per_s', [])) or '-'}), server "
        f"{f(r['server_cpu_s_per_s'], '.2f')}",
        f"  sends    late ms p50 {f(lag.get('p50'))}  p99 {f(lag.get('p99'))}  max "
        f"{f(lag.get('max'))}; skipped {g.get('sends_skipped', 0)}",
    ]
    if r.get("route") or len(r.get("workers") or []) > 1:
        rooms_at: dict[str, int] = {}
        for u in (r.get("room_urls") or {}).values():
            rooms_at[u] = rooms_at.get(u, 0) + 1
        lines.append(
            f"  cluster  {len(r.get('workers') or [])} server(s) for {r['rooms']} room(s) "
            f"(GET /route): "
            + ", ".join(f"{u} ({n} room{'s' * (n != 1)})" for u, n in rooms_at.items())
            + f"; moves followed {r.get('moves', 0)}; /metrics summed over them, server CPU "
            f"over PIDs {', '.join(map(str, r.get('server_pids') or [])) or '-'}"
        )
    if r.get("machine_listen_overflows") and r["connected"] < r["clients"]:
        lines.append(
            f"  connects {r['machine_listen_overflows']} dropped by full accept queues on this "
            "machine during the run (TcpExt ListenOverflows, every listener): SYNs are "
            "retried after 1, 3, 7 ... s; a longer --ramp eases the storm"
        )
    if g.get("saturated"):
        lines.append(
            "  GENERATOR SATURATED (it could not keep its schedule; latencies include it): "
            + "; ".join(g["saturated_why"])
        )
    if r.get("workers_missing"):
        lines.append(
            f"  MISSING  {r['workers_missing']} worker(s), {r['clients_unreported']} clients "
            f"in no figure: " + "; ".join(r["workers_missing_why"])
        )
    by_why: dict[str, list[str]] = {}
    for key, why in (r.get("unmeasured") or {}).items():
        by_why.setdefault(why, []).append(key)
    for why, keys in by_why.items():
        lines.append(f"  unmeasured {', '.join(keys)}: {why}")
    lines.append(
        f"  service level (e2e p99 <= 100 ms, tick p99 <= 25 ms, >= 95 % updates): "
        f"{'HELD' if meets_service_level(r) else 'BROKEN'}"
    )
    print("\n".join(lines), flush=True)


def find_server_pid(url: str) -> int | None:
    """The PID listening on the URL's port on this machine, if it can be found (Linux)."""
    port = urlsplit(url).port
    try:
        inodes = set()
        for path in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(path) as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":
                        inodes.add(parts[9])
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with_fd = f"/proc/{pid}/fd"
            try:
                for fd in os.listdir(with_fd):
                    link = os.readlink(f"{with_fd}/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return int(pid)
            except OSError:
                continue
    except OSError:
        return None
    return None


def metrics_url(url: str) -> str:
    """The server's /metrics URL for its WebSocket URL."""
    u = urlsplit(url)
    return f"http://{u.hostname}:{u.port}/metrics"


def _processes_arg(value: str) -> str | int:
    try:
        n = parse_processes(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 1, not {value!r}") from None
    return "auto" if n is None else n


def _pids_arg(value: str) -> list[int]:
    try:
        pids = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        pids = []
    if not pids or min(pids) < 1:
        raise argparse.ArgumentTypeError(f"expected a PID or PID,PID,..., not {value!r}")
    return pids


@cli.command("python -m client_demo.loadtest")
def main(argv: list[str] | None = None) -> int:
    """Run one load test (see ``--help``), print its summary (and write --json); returns 0.

    A server that is not there (or has no /metrics) exits with one line naming the URL.
    Once it runs, the report is always printed, whatever overload it met.
    """
    ap = argparse.ArgumentParser(
        prog="python -m client_demo.loadtest",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--url", type=cli.ws_url, default="ws://127.0.0.1:8765/")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate", type=float, default=20.0, help="pos per client per second")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--ramp", type=float, default=2.0, help="seconds to connect everybody")
    ap.add_argument(
        "--processes",
        type=_processes_arg,
        default="auto",
        help=f"worker processes; auto: ceil(clients / {CLIENTS_PER_PROCESS}), at least 1, "
        "at most the CPUs this process may use",
    )
    ap.add_argument(
        "--protocol",
        type=int,
        choices=PROTOCOLS,
        default=2,
        help="the clients' protocol version (2: downlink dead reckoning, a tick may bring "
        "no state frame by design)",
    )
    ap.add_argument("--rooms", type=int, default=1)
    ap.add_argument("--density", type=float, default=30.0, help="neighbours within 30 m")
    ap.add_argument("--sample-every", type=int, default=20, help="decode every k-th client")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--client",
        choices=CLIENTS,
        default="picows",
        help="the generator's WebSocket library (picows costs the generator less CPU per frame)",
    )
    ap.add_argument(
        "--server-pid",
        type=_pids_arg,
        action="append",
        help="the server's PID for its CPU; several (repeated or a comma list) are summed "
        "(a cluster's workers, and its supervisor if wanted) (default: the process listening "
        "on each server's port on this machine)",
    )
    ap.add_argument(
        "--route",
        action="store_true",
        help="a cluster: look each room up (GET /route on --url), connect its clients to its "
        "worker, follow `moved` (at most 4 hops); /metrics and CPU summed over the workers",
    )
    ap.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="seconds for the workers to start; a later one is terminated and counted missing",
    )
    ap.add_argument(
        "--report-timeout",
        type=float,
        default=30.0,
        help="seconds after the window for the workers' figures; a later one is terminated "
        "and counted missing",
    )
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    try:
        check_args(args.clients, args.rate, args.duration, args.ramp, args.processes,
                   args.rooms, args.sample_every, args.client, args.protocol)  # fmt: skip
    except ValueError as e:
        ap.error(str(e))
    if args.ready_timeout <= 0 or args.report_timeout < 0:
        ap.error("need --ready-timeout > 0 and --report-timeout >= 0")
    pids = _pid_list([p for group in args.server_pid or [] for p in group])
    for pid in pids:
        if os.path.isdir("/proc") and not os.path.isdir(f"/proc/{pid}"):
            ap.error(f"--server-pid {pid}: no such process")
    try:
        fetch_metrics(args.url)
    except OSError as e:
        raise cli.UserError(
            f"cannot read {metrics_url(args.url)} (the server of --url {args.url}): "
            f"{cli.explain(e)[0]}",
            "is an avatar-stream server running there? start one with avatar-server",
        ) from None
    try:
        r = run(
            args.url, args.clients, args.rate, args.duration, args.ramp, args.processes,
            args.rooms, args.density, args.sample_every, args.seed, None, args.client,
            protocol=args.protocol, ready_timeout=args.ready_timeout,
            report_timeout=args.report_timeout, route=args.route, server_pids=pids or None,
        )  # fmt: skip
    except OSError as e:  # only before anything started: /metrics or (--route) /route
        raise cli.UserError(
            f"cannot start on --url {args.url}: {cli.first_line(e)}",
            "is an avatar-stream server (of this version, for --route) running there?",
        ) from None
    print_summary(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
