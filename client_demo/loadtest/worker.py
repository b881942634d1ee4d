"""One worker process of a load run: its clients' motion (`tracks`: the training simulator's,
tabulated), their connections (`client_demo.loadtest.clients`), the sends on a schedule in
phase groups (one timer per group, lateness measured, a send a whole period late skipped,
never bunched), its own CPU in the window, and its figures sent to the parent
(`worker_main`: "ready", then "result" or "fatal"; it never hangs its parent)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import resource
import time
from dataclasses import dataclass, field

import numpy as np

from client_demo.loadtest.clients import Conn, close_all, connect_picows, connect_websockets
from client_demo.loadtest.job import WorkerJob

DENSITY_RADIUS = 30.0
TRACK_HZ = 50.0  # the pool's motion is tabulated at this rate; a send looks its position up
CLOSE_WAIT = 15.0  # seconds a worker keeps its clients after the window, for the parent


def _room_side(clients_in_room: int, density: float) -> float:
    return math.sqrt(max(clients_in_room, 1) * math.pi * DENSITY_RADIUS**2 / max(density, 0.1))


def tracks(job: WorkerJob) -> tuple[np.ndarray, np.ndarray]:
    """Simulator motion for this worker's clients: a pool of tracks tabulated at TRACK_HZ
    (pool, steps, 3), each client one of them moved to its own place in its room, so
    simulating and sending stay cheap at thousands of clients."""
    from training.sim_config import SimConfig
    from training.simulate import simulate

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


@dataclass
class _SendProbe:
    """How late the sends of one worker ran against their schedule, in the window."""

    lags: list[float] = field(default_factory=list)  # seconds late, one per group wake-up
    skipped: int = 0  # sends not made: a whole period late (clients x periods)
    scheduled: int = 0  # sends due in the window (clients x periods)


async def _send_group(
    job: WorkerJob, conns: list[Conn], table, phase: float, t0, window, probe: _SendProbe
) -> None:
    """Every client of one phase group sends its position once per period, without awaiting
    each send (one timer per group, not per client). A wake-up a whole period (or more)
    late skips the missed sends (counted in `probe`) rather than bunching them."""
    import msgpack

    from server.core import protocol as P

    binary = job.pos_encoding == "binary"
    pack_binary = P.POS_BINARY.pack
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
            if binary:
                frame = pack_binary(P.POS_BINARY_TAG, k, now, x + c.dx, y + c.dy, z)
            else:
                frame = msgpack.packb(
                    {"type": "pos", "seq": k, "t": now, "p": [x + c.dx, y + c.dy, z]}
                )
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
    job: WorkerJob, conns: list[Conn], probe: _SendProbe, cpu: tuple[float, float], window
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
        Conn(job.first + i, i % table.shape[0], *shift[i], (job.first + i) % job.sample_every == 0)
        for i in range(job.count)
    ]
    connect = connect_picows if job.client == "picows" else connect_websockets
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
    await close_all(conns, job.client)
    _, late = await asyncio.wait(readers, timeout=1.0)
    for task in late:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await reporting


def worker_main(job: WorkerJob, link, start) -> None:
    """A worker process: ("ready", None) once its motion is made, then ("result", figures)
    after the window, or ("fatal", why) on any failure; never hangs its parent."""
    from server.serve import runner

    try:
        table, shift = tracks(job)  # the slow part of starting, before the common start
        link.send(("ready", None))
        job.t_connect = start.recv()
        runner.run(_run_worker(job, table, shift, link, start))
    except BaseException as e:  # report, never hang the parent
        with contextlib.suppress(Exception):
            link.send(("fatal", f"{type(e).__name__}: {e}"))
