"""A load run from the parent process: the worker processes (spawned, clients spread evenly
over them, started together once all are ready, terminated by their PID when they fail to
report by a deadline), the /metrics reads around the measured window (`scrape`), the rooms
looked up with --route (`route_rooms`), and the report (`build_report`): `run`."""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait as wait_any

import numpy as np

from client_demo.loadtest.clients import CLIENTS, CLOSE_TIMEOUT
from client_demo.loadtest.job import WorkerJob, room_name
from client_demo.loadtest.report import build_report
from client_demo.loadtest.scrape import (
    Scrape,
    fetch_metrics,
    find_server_pid,
    listen_overflows,
    pid_list,
    scrape,
)
from client_demo.loadtest.worker import worker_main
from client_demo.wsclient import ROUTE_TIMEOUT, route_url

PROTOCOLS = (1, 2)
CLIENTS_PER_PROCESS = 350  # --processes auto: one worker per this many clients


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


def route_rooms(url: str, rooms: int, timeout: float = ROUTE_TIMEOUT) -> dict[str, str]:
    """{room: worker URL} for the rooms load0 .. load{rooms-1}, asked of `url`'s worker one
    after another (a worker spreads consecutive new rooms over the cluster). OSError as
    `route_url`."""
    names = [room_name(k, rooms) for k in range(rooms)]
    return {room: route_url(url, room, timeout) for room in names}


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
    pos_encoding: str = "msgpack",
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
    if pos_encoding not in ("msgpack", "binary"):
        raise ValueError("pos_encoding must be msgpack or binary")
    requested = parse_processes(processes)
    n_proc = auto_processes(clients) if requested is None else min(requested, clients)
    fetch_metrics(url)  # fail fast when the server is not there
    room_urls = route_rooms(url, rooms) if route else (dict(room_urls) if room_urls else None)
    workers = list(dict.fromkeys(room_urls.values())) if room_urls else [url]
    metrics_from = list(dict.fromkeys([url, *workers]))
    pids, pids_why = pid_list([*(server_pids or []), *pid_list(server_pid)]), None
    if not pids:
        found = {u: find_server_pid(u) for u in metrics_from}
        lost = [u for u, p in found.items() if p is None]
        if lost:
            pids_why = (
                "no --server-pid, and no process on this machine listens on the port of "
                + ", ".join(lost)
            )
        else:
            pids = pid_list(list(found.values()))
    settle = settle_time(ramp)
    share = [clients // n_proc + (k < clients % n_proc) for k in range(n_proc)]
    firsts = np.concatenate([[0], np.cumsum(share)[:-1]]).astype(int)
    jobs = [
        WorkerJob(url, int(f), n, clients, rate, duration, ramp, rooms, density, sample_every,
                  seed, client, protocol=protocol, settle=settle, room_urls=room_urls,
                  pos_encoding=pos_encoding)
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
        "pos_encoding": pos_encoding,
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
                p = ctx.Process(target=worker_main, args=(j, link_w, start_r), daemon=True)
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
