"""Load test: many simulated WebSocket clients against a running avatar-stream server.

    python -m client_demo.loadtest --url ws://127.0.0.1:8765/ --clients 1000 --rate 20 \\
        --duration 30 --ramp 5 --processes 2 --rooms 1 --json load.json

Clients connect over --ramp seconds, spread evenly over --processes worker processes
(one asyncio loop each, uvloop when installed), then each streams the training
simulator's motion at --rate Hz for --duration seconds (random phase within the period)
and stops: everything is bounded in count and time. Rooms are filled round-robin; in
each room the avatars are spread over a square sized for about --density neighbours
within 30 m, so views are realistic rather than all-see-all.

The generator shares the machine with the server, so its own cost per frame is kept
small: every frame is counted and sized; only every --sample-every-th client decodes its
`state` frames, to measure end-to-end latency (a `pos` sent -> the first `state` that
carries a prediction made from that seq). The server's tick duration and overruns come
from its /metrics, read before and after the measured window; its CPU from /proc when
--server-pid is given (or it runs on this machine and the PID is found from the port).

JSON (`--json`): {"clients", "connected", "errors", "close_codes", "frames_expected",
"frames_received", "frames_fraction", "e2e_ms": {"p50","p95","p99","max"}, "e2e_samples",
"tick_ms": {"p50","p99"}, "model_step_ms": {"p50","p99"}, "overruns", "msgs_sent",
"bytes_out_per_s", "bytes_in_per_s", "server_bytes_out_per_s", "generator_cpu_s_per_s",
"server_cpu_s_per_s", ...}; `bytes_out` is what the clients sent, `bytes_in` what they got.
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
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

from server import cli

STATE_PREFIX = b"\xa4type\xa5state"  # bytes 1..11 of every state frame (a fixmap, "type" first)
DENSITY_RADIUS = 30.0
CLIENTS = ("picows", "websockets")


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
    window_s: float = 0.0
    expected_hz: float = 0.0
    records: int = 0  # avatars in the decoded state frames (sampled clients)
    record_bytes: int = 0  # bytes of those frames
    latencies: list[float] = field(default_factory=list)


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


def _room_side(clients_in_room: int, density: float) -> float:
    return math.sqrt(max(clients_in_room, 1) * math.pi * DENSITY_RADIUS**2 / max(density, 0.1))


TRACK_HZ = 50.0  # the pool's motion is tabulated at this rate; a send looks its position up


def _tracks(job: WorkerJob) -> tuple[np.ndarray, np.ndarray]:
    """Simulator motion for this worker's clients: a pool of tracks tabulated at TRACK_HZ
    (pool, steps, 3), each client one of them moved to its own place in its room, so
    simulating and sending stay cheap at thousands of clients."""
    from training.simulate import SimConfig, simulate

    n_pool = min(job.count, 64)
    span = job.ramp + job.duration + 5.0
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


async def _connect(job: WorkerJob, c: _Conn, t_conn: float, window) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from server import protocol as P

    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, t_conn - loop.time()))
    try:
        ws = await connect(job.url, max_size=2**22, compression=None, open_timeout=30)
        await ws.send(
            P.encode_client(P.Hello(room=f"load{c.gi % job.rooms}", avatar=f"c{c.gi:06d}"))
        )
        welcome = P.decode_server(await ws.recv())
    except ConnectionClosed as e:
        c.stats.error, c.stats.close_code = "closed", (e.rcvd.code if e.rcvd else None)
        return
    except (OSError, TimeoutError) as e:
        c.stats.error = type(e).__name__
        return
    if not isinstance(welcome, P.Welcome):
        c.stats.error = getattr(welcome, "code", "no_welcome")
        await ws.close()
        return
    from websockets.asyncio.connection import broadcast

    c.ws, c.handle = ws, welcome.handle
    c.send = lambda frame: broadcast((ws,), frame)  # framed and written now, no await
    c.stats.connected, c.stats.expected_hz = True, welcome.tick_hz
    try:
        await _read(c, window)
    except ConnectionClosed as e:
        if c.ws is not None:  # not closed by us at the end
            c.stats.error, c.stats.close_code = "closed", (e.rcvd.code if e.rcvd else None)
    finally:
        c.send = None


def _on_state(c: _Conn, data, now: float, window) -> None:
    """Count one received frame; a sampled client decodes its state frames for latency."""
    from server import protocol as P

    stats = c.stats
    stats.frames += 1
    stats.bytes_in += len(data)
    if data[1:12] != STATE_PREFIX:
        return
    if window[0] <= now < window[1]:
        stats.states_in_window += 1
    if not c.sample:
        return
    st = P.decode_server(bytes(data))
    stats.records += len(st)
    stats.record_bytes += len(data) if len(st) else 0
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

    from server import protocol as P

    loop = asyncio.get_running_loop()
    welcomed = loop.create_future()

    class Listener(WSListener):
        def on_ws_frame(self, t, frame) -> None:
            kind = frame.msg_type
            if kind is WSMsgType.BINARY:
                data = frame.get_payload_as_memoryview()
                if c.handle is None and not welcomed.done():
                    welcomed.set_result(P.decode_server(bytes(data)))
                    return
                _on_state(c, data, loop.time(), window)
            elif kind is WSMsgType.CLOSE:
                if c.ws is not None:  # not closed by us at the end
                    c.stats.error, c.stats.close_code = "closed", int(frame.get_close_code().value)
                    if not welcomed.done():
                        welcomed.set_result(None)
                c.send = None
                t.send_close()
                t.disconnect()

        def on_ws_disconnected(self, t) -> None:
            c.send = None
            if not welcomed.done():
                welcomed.set_result(None)

    await asyncio.sleep(max(0.0, t_conn - loop.time()))
    try:
        t, _ = await ws_connect(Listener, job.url, max_frame_size=2**22,
                                websocket_handshake_timeout=30)  # fmt: skip
    except (OSError, TimeoutError) as e:
        c.stats.error = type(e).__name__
        return
    except Exception as e:  # picows' handshake errors
        c.stats.error = type(e).__name__
        return
    c.ws = t
    t.send(WSMsgType.BINARY, P.encode_client(P.Hello(room=f"load{c.gi % job.rooms}",
                                                     avatar=f"c{c.gi:06d}")))  # fmt: skip
    welcome = await welcomed
    if not isinstance(welcome, P.Welcome):
        if c.stats.error is None:
            c.stats.error = getattr(welcome, "code", "no_welcome")
        c.ws = None
        t.disconnect()
        return
    c.handle = welcome.handle
    c.send = lambda frame: t.send(WSMsgType.BINARY, frame)
    c.stats.connected, c.stats.expected_hz = True, welcome.tick_hz
    await t.wait_disconnected()


async def _close_all(conns: list[_Conn], client: str) -> None:
    open_ws = [c.ws for c in conns if c.ws is not None]
    for c in conns:
        c.ws = None  # from here on a close is ours
        c.send = None
    if client == "picows":
        for t in open_ws:
            t.send_close()
        await asyncio.gather(*(t.wait_disconnected() for t in open_ws), return_exceptions=True)
    else:
        await asyncio.gather(*(ws.close() for ws in open_ws), return_exceptions=True)


async def _read(c: _Conn, window) -> None:
    loop = asyncio.get_running_loop()
    async for data in c.ws:
        _on_state(c, data, loop.time(), window)


async def _send_group(job: WorkerJob, conns: list[_Conn], table, phase: float, t0, t_end) -> None:
    """Every client of one phase group sends its position once per period, without awaiting
    each send (one timer per group, not per client)."""
    import msgpack

    loop = asyncio.get_running_loop()
    period = 1.0 / job.rate
    k = 0
    while True:
        due = t0 + (k + phase) * period
        if due >= t_end:
            return
        await asyncio.sleep(max(0.0, due - loop.time()))
        now = loop.time()
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
        k += 1


async def _run_worker(job: WorkerJob, table: np.ndarray, shift: np.ndarray) -> dict:
    loop = asyncio.get_running_loop()
    wall0 = time.time()
    base = loop.time() + (job.t_connect - wall0)
    t_start = base + job.ramp + 1.0  # everybody connected: the measured window starts
    t_end = t_start + job.duration
    conns = [
        _Conn(job.first + i, i % table.shape[0], *shift[i], (job.first + i) % job.sample_every == 0)
        for i in range(job.count)
    ]
    connect = _connect_picows if job.client == "picows" else _connect
    readers = [
        asyncio.create_task(
            connect(job, c, base + job.ramp * c.gi / max(job.total, 1), (t_start, t_end))
        )
        for c in conns
    ]
    groups = 10  # phase groups spread the sends over the period; the golden-ratio hash
    # spreads any subset (e.g. the sampled clients, every k-th) over all of them
    member = [int(((c.gi * 0.6180339887) % 1.0) * groups) for c in conns]
    senders = [
        asyncio.create_task(
            _send_group(
                job,
                [c for c, g2 in zip(conns, member, strict=True) if g2 == g],
                table,
                (g + 0.5) / groups,
                base,
                t_end,
            )
        )
        for g in range(groups)
    ]
    await asyncio.gather(*senders)
    for c in conns:
        c.stats.window_s = job.duration if c.stats.connected and not c.stats.error else 0.0
    await _close_all(conns, job.client)
    await asyncio.gather(*readers, return_exceptions=True)
    stats = [c.stats for c in conns]
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "connected": sum(s.connected for s in stats),
        "errors": [s.error for s in stats if s.error],
        "close_codes": [s.close_code for s in stats if s.close_code],
        "sent": sum(s.sent for s in stats),
        "bytes_out": sum(s.bytes_out for s in stats),
        "frames": sum(s.frames for s in stats),
        "bytes_in": sum(s.bytes_in for s in stats),
        "states_in_window": sum(s.states_in_window for s in stats),
        "expected": sum(s.window_s * s.expected_hz for s in stats),
        "latencies": [x for s in stats for x in s.latencies],
        "records": sum(s.records for s in stats),
        "record_bytes": sum(s.record_bytes for s in stats),
        "cpu_s": r.ru_utime + r.ru_stime,
    }


def _worker_main(job: WorkerJob, out, start) -> None:
    from server import runner

    try:
        table, shift = _tracks(job)  # the slow part of starting, before the common start
        out.put("ready")
        job.t_connect = start.recv()
        out.put(runner.run(_run_worker(job, table, shift)))
    except BaseException as e:  # report, never hang the parent
        out.put({"fatal": f"{type(e).__name__}: {e}"})


# -- server side readings -------------------------------------------------------------------


def fetch_metrics(url: str) -> str:
    """The server's /metrics text (same host and port as the WebSocket URL)."""
    with urllib.request.urlopen(metrics_url(url), timeout=10) as r:
        return r.read().decode()


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


def counter(metrics: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", metrics, re.M)
    return float(m.group(1)) if m else 0.0


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the run ---------------------------------------------------------------------------------


def check_args(
    clients: int,
    rate: float,
    duration: float,
    ramp: float,
    processes: int,
    rooms: int,
    sample_every: int,
    client: str,
) -> None:
    """Raise ValueError (saying which) unless the arguments of `run` make sense."""
    if clients < 1 or rate <= 0 or duration <= 0 or ramp < 0 or processes < 1 or rooms < 1:
        raise ValueError(
            "need clients >= 1, rate > 0, duration > 0, ramp >= 0, processes >= 1, rooms >= 1"
        )
    if sample_every < 1:
        raise ValueError("need sample_every >= 1")
    if client not in CLIENTS:
        raise ValueError(f"client must be one of {CLIENTS}")


@contextlib.contextmanager
def _sigint_ignored():
    """Processes started inside inherit an ignored SIGINT: Ctrl-C is the parent's to handle
    (it stops the run; the daemonic workers are terminated when it exits)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def run(
    url: str,
    clients: int,
    rate: float = 20.0,
    duration: float = 10.0,
    ramp: float = 2.0,
    processes: int = 1,
    rooms: int = 1,
    density: float = 30.0,
    sample_every: int = 20,
    seed: int = 0,
    server_pid: int | None = None,
    client: str = "picows",
) -> dict:
    """Run one bounded load test; returns the figures (see the module docstring).

    Raises ValueError for bad arguments and OSError if the server's /metrics is unreachable.
    """
    check_args(clients, rate, duration, ramp, processes, rooms, sample_every, client)
    processes = min(processes, clients)
    fetch_metrics(url)  # fail fast when the server is not there
    share = [clients // processes + (k < clients % processes) for k in range(processes)]
    firsts = np.concatenate([[0], np.cumsum(share)[:-1]]).astype(int)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    jobs = [
        WorkerJob(url, int(f), n, clients, rate, duration, ramp, rooms, density, sample_every,
                  seed, client)
        for f, n in zip(firsts, share, strict=True)
    ]  # fmt: skip
    pipes = [ctx.Pipe(duplex=False) for _ in jobs]
    workers = [
        ctx.Process(target=_worker_main, args=(j, out, recv), daemon=True)
        for j, (recv, _) in zip(jobs, pipes, strict=True)
    ]
    with _sigint_ignored():
        for w in workers:
            w.start()
    for _ in workers:  # every worker has imported and made its motion: start together
        msg = out.get(timeout=300)
        if msg != "ready":
            raise RuntimeError(f"load worker failed: {msg.get('fatal', msg)}")
    t_connect = time.time() + 0.2
    for _, send in pipes:
        send.send(t_connect)
    window_start = t_connect + ramp + 1.0
    # read /metrics around the measured window, from this (idle) parent process
    time.sleep(max(0.0, window_start - time.time()))
    m0 = fetch_metrics(url)
    c0 = process_cpu(server_pid) if server_pid else None
    time.sleep(max(0.0, window_start + duration - time.time()))
    m1 = fetch_metrics(url)
    c1 = process_cpu(server_pid) if server_pid else None
    deadline = time.time() + duration + ramp + 60
    results = [out.get(timeout=max(1.0, deadline - time.time())) for _ in workers]
    for w in workers:
        w.join(timeout=10)
    fatal = [r["fatal"] for r in results if "fatal" in r]
    if fatal:
        raise RuntimeError(f"load worker failed: {fatal[0]}")
    lat = np.array([x for r in results for x in r["latencies"]]) * 1000.0
    errors = [e for r in results for e in r["errors"]]
    close_codes: dict[str, int] = {}
    for r in results:
        for c in r["close_codes"]:
            close_codes[str(c)] = close_codes.get(str(c), 0) + 1
    expected = sum(r["expected"] for r in results)
    received = sum(r["states_in_window"] for r in results)
    after = fetch_metrics(url)
    return {
        "clients": clients,
        "connected": sum(r["connected"] for r in results),
        "errors": len(errors),
        "error_kinds": {e: errors.count(e) for e in set(errors)},
        "close_codes": close_codes,
        "rate_hz": rate,
        "duration_s": duration,
        "processes": processes,
        "rooms": rooms,
        "client": client,
        "frames_expected": round(expected),
        "frames_received": received,
        "frames_fraction": received / expected if expected else 0.0,
        "e2e_ms": {
            k: float(np.percentile(lat, q)) if len(lat) else None
            for k, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        },
        "e2e_samples": len(lat),
        "tick_ms": histogram_quantiles(m0, m1, "avatar_tick_seconds"),
        "model_step_ms": histogram_quantiles(m0, m1, "avatar_model_step_seconds"),
        "overruns": counter(m1, "avatar_tick_overruns_total")
        - counter(m0, "avatar_tick_overruns_total"),
        "dropped_frames": counter(after, "avatar_frames_dropped_total")
        - counter(m0, "avatar_frames_dropped_total"),
        "state_bytes_per_avatar": (
            sum(r["record_bytes"] for r in results) / max(1, sum(r["records"] for r in results))
        ),
        "msgs_sent": sum(r["sent"] for r in results),
        "bytes_out_per_s": sum(r["bytes_out"] for r in results) / (duration + ramp),
        "bytes_in_per_s": sum(r["bytes_in"] for r in results) / (duration + ramp),
        "server_bytes_out_per_s": (
            counter(m1, "avatar_bytes_out_total") - counter(m0, "avatar_bytes_out_total")
        )
        / duration,
        "generator_cpu_s_per_s": sum(r["cpu_s"] for r in results) / (duration + ramp + 1.0),
        "server_cpu_s_per_s": (c1 - c0) / duration if c0 is not None else None,
    }


def meets_service_level(r: dict, e2e_p99_ms=100.0, tick_p99_ms=25.0, frames=0.95) -> bool:
    """The service level of the capacity benchmark: no errors, e2e p99, tick p99, frames."""
    e2e, tick = r["e2e_ms"]["p99"], r["tick_ms"]["p99"]
    return (
        r["errors"] == 0
        and e2e is not None
        and e2e <= e2e_p99_ms
        and tick is not None
        and tick <= tick_p99_ms
        and r["frames_fraction"] >= frames
    )


def print_summary(r: dict) -> None:
    e, t = r["e2e_ms"], r["tick_ms"]

    def f(v):
        return "-" if v is None else f"{v:.1f}"

    print(
        f"clients {r['clients']} (connected {r['connected']}, errors {r['errors']}) "
        f"at {r['rate_hz']:g} Hz for {r['duration_s']:g} s, {r['processes']} worker(s)\n"
        f"  frames   {r['frames_received']}/{r['frames_expected']} "
        f"({100 * r['frames_fraction']:.1f} %), dropped by server {r['dropped_frames']:.0f}\n"
        f"  e2e ms   p50 {f(e['p50'])}  p95 {f(e['p95'])}  p99 {f(e['p99'])}  max {f(e['max'])}"
        f"  ({r['e2e_samples']} samples)\n"
        f"  tick ms  p50 {f(t['p50'])}  p99 {f(t['p99'])}  overruns {r['overruns']:.0f};"
        f"  model step p99 {f(r['model_step_ms']['p99'])} ms\n"
        f"  traffic  up {r['bytes_out_per_s'] / 1e3:.0f} kB/s, down {r['bytes_in_per_s'] / 1e6:.2f} MB/s"
        f" ({r['state_bytes_per_avatar']:.1f} B per avatar in a state frame)\n"
        f"  cpu s/s  generator {r['generator_cpu_s_per_s']:.2f}, server "
        f"{'-' if r['server_cpu_s_per_s'] is None else format(r['server_cpu_s_per_s'], '.2f')}\n"
        f"  service level (e2e p99 <= 100 ms, tick p99 <= 25 ms, >= 95 % frames): "
        f"{'HELD' if meets_service_level(r) else 'BROKEN'}"
    )


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


@cli.command("python -m client_demo.loadtest")
def main(argv: list[str] | None = None) -> int:
    """Run one load test (see ``--help``), print its summary; returns 0.

    A server that is not there (or has no /metrics) exits with one line naming the URL.
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
    ap.add_argument("--processes", type=int, default=1, help="worker processes")
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
    ap.add_argument("--server-pid", type=int, help="for the server's CPU (default: by port)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    try:
        check_args(args.clients, args.rate, args.duration, args.ramp, args.processes,
                   args.rooms, args.sample_every, args.client)  # fmt: skip
    except ValueError as e:
        ap.error(str(e))
    if args.server_pid and os.path.isdir("/proc") and not os.path.isdir(f"/proc/{args.server_pid}"):
        ap.error(f"--server-pid {args.server_pid}: no such process")
    try:
        fetch_metrics(args.url)
    except OSError as e:
        raise cli.UserError(
            f"cannot read {metrics_url(args.url)} (the server of --url {args.url}): "
            f"{cli.explain(e)[0]}",
            "is an avatar-stream server running there? start one with avatar-server",
        ) from None
    pid = args.server_pid or find_server_pid(args.url)
    r = run(
        args.url, args.clients, args.rate, args.duration, args.ramp, args.processes,
        args.rooms, args.density, args.sample_every, args.seed, pid, args.client,
    )  # fmt: skip
    print_summary(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
