"""bench/cluster.py's processes: free ports, the servers it starts (and stops by PID), a
`--workers 2 --redis` cluster waited for until both workers answer and see each other."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from client_demo.loadtest.scrape import fetch_metrics, find_server_pid, series
from server import cli

PREFIX = "bench"  # --cluster-prefix of the bench's cluster


def free_port_pair() -> int:
    """A port P on 127.0.0.1 with P and P + 1 free a moment ago."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise OSError("no two free consecutive ports on 127.0.0.1")


def healthy(port: int) -> bool:
    import urllib.request

    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r,
    ):
        return r.status == 200
    return False


def wait_until(cond, timeout: float, what: str, step: float = 0.05) -> float:
    """Poll `cond()` until true (bounded); returns the seconds it took. Raises TimeoutError."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(step)
    raise TimeoutError(f"{what}: not within {timeout:g} s")


class Servers:
    """The server processes of one phase: started here, stopped by PID on exit."""

    def __init__(self, log_dir: Path, cpus: set[int] | None = None) -> None:
        self.log_dir = log_dir
        self.cpus = cpus  # pin every server process (and the workers it starts) to these
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it
        cmd = [sys.executable, "-m", "server", "--log-level", "info", *args]
        cpus = self.cpus
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )  # fmt: skip
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self, grace: float = 20.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


def start_cluster(servers: Servers, redis_url: str, port: int, extra: list[str]) -> tuple:
    """`--workers 2` on port, port + 1; returns (supervisor, [url0, url1]) once both answer."""
    sup = servers.start(
        ["--workers", "2", "--redis", redis_url, "--port", str(port), "--host", "127.0.0.1",
         "--cluster-prefix", PREFIX, *extra],
        "cluster",
    )  # fmt: skip
    wait_until(lambda: sup.poll() is not None or (healthy(port) and healthy(port + 1)), 180,
               "the cluster's two workers")  # fmt: skip
    if sup.poll() is not None:
        raise cli.UserError(f"the cluster exited ({sup.returncode}); see {servers.log_dir}")
    seeds = [f"ws://127.0.0.1:{port}/", f"ws://127.0.0.1:{port + 1}/"]
    wait_until(lambda: all(workers_seen(u) == 2 for u in seeds), 30, "the workers to see both")
    return sup, seeds


def workers_seen(url: str) -> float | None:
    """avatar_cluster_workers of the worker at `url` (None: no answer)."""
    try:
        text = fetch_metrics(url, timeout=2)
    except OSError:
        return None
    return series(text, "avatar_cluster_workers")


def serving(ports: list[int], procs: list[subprocess.Popen]) -> bool:
    """All answer /healthz (or one exited: stop waiting)."""
    return all(healthy(p) for p in ports) or any(x.poll() is not None for x in procs)


def worker_pid(url: str) -> int | None:
    return find_server_pid(url)
