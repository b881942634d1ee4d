"""`--workers N`: N cluster workers on one machine, kept running (docs/scaling.md).

    python -m server --workers 4 --redis redis://127.0.0.1:6379/0 --port 8700 # 8700..8703

`Supervisor` runs the workers (worker k on `--port` + k; each one a `python -m server`
with a `server.cluster.member.ClusterMember`), restarts one that exits, evicts a dead one
from the directory at once (its rooms are placed anew at the next claim instead of after
the TTL), forwards SIGHUP (model reload), restarts them one after another on SIGUSR2 (a
rolling restart) and drains them all on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING

from server.cluster.directory import RoomDirectory
from server.cluster.member import process_id

if TYPE_CHECKING:
    from server.serve.config import Config

log = logging.getLogger("avatar_stream.cluster")


def _worker_argv(argv: list[str], port: int, nonce: str) -> list[str]:
    """`argv` (the supervisor's flags) for one worker: --workers 1, its port and nonce."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--workers", "--port", "--cluster-nonce"):
            skip = True
            continue
        if a.startswith(("--workers=", "--port=", "--cluster-nonce=")):
            continue
        out.append(a)
    return [*out, "--workers", "1", "--port", str(port), "--cluster-nonce", nonce]


class Supervisor:
    """`--workers N`: N workers on one machine, kept running; see the module docstring."""

    def __init__(self, config: Config, argv: list[str]) -> None:
        self.config = config
        self.argv = argv
        self.ports = [config.port + k for k in range(config.workers)]
        self.procs: dict[int, subprocess.Popen] = {}  # port -> worker
        self.nonces: dict[int, str] = {}
        self.started_at: dict[int, float] = {}
        self._stop = False
        self._roll = False

    def spawn(self, port: int) -> None:
        nonce = secrets.token_hex(6)
        cmd = [sys.executable, "-m", "server", *_worker_argv(self.argv, port, nonce)]
        self.procs[port] = subprocess.Popen(cmd)
        self.nonces[port] = nonce
        self.started_at[port] = time.monotonic()
        log.info("supervisor: worker on port %d started (pid %d)", port, self.procs[port].pid)

    def evict(self, port: int) -> None:
        """Remove a dead worker from the directory now (best effort)."""
        pid = process_id(self.config, port, self.nonces[port])

        async def go() -> None:
            d = RoomDirectory(self.config.redis, prefix=self.config.cluster_prefix)
            try:
                await d.evict(pid)
            finally:
                await d.stop()

        try:
            asyncio.run(go())
        except Exception as e:  # Redis down: its keys expire by themselves
            log.warning("supervisor: could not evict %s from the directory: %s", pid, e)

    def healthy(self, port: int, deadline: float) -> bool:
        """Wait (bounded) until the worker on `port` answers /healthz."""
        host = self.config.host if self.config.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        while time.monotonic() < deadline and not self._stop:
            if self.procs[port].poll() is not None:
                return False
            url = f"http://{host}:{port}/healthz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return True
            time.sleep(0.1)
        return False

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit status (0 after a clean drain)."""

        def stop(signum, frame) -> None:
            self._stop = True

        def roll(signum, frame) -> None:
            self._roll = True

        def hup(signum, frame) -> None:
            for p in self.procs.values():
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGHUP)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGUSR2, roll)
        signal.signal(signal.SIGHUP, hup)
        for port in self.ports:
            self.spawn(port)
        log.info(
            "supervisor %d: %d workers on ports %d-%d, directory %s",
            os.getpid(), len(self.ports), self.ports[0], self.ports[-1], self.config.redis,
        )  # fmt: skip
        while not self._stop:
            time.sleep(0.1)
            for port, p in list(self.procs.items()):
                if self._stop or p.poll() is None:
                    continue
                log.warning("supervisor: worker on port %d exited (%s)", port, p.returncode)
                self.evict(port)
                if time.monotonic() - self.started_at[port] < 2.0:
                    time.sleep(1.0)  # a crash at start: do not spin
                self.spawn(port)
            if self._roll:
                self._roll = False
                self.rolling_restart()
        return self.shutdown()

    def rolling_restart(self) -> None:
        """Restart the workers one after another: drain one, start its successor, wait
        until it answers, then the next."""
        log.info("supervisor: rolling restart of %d workers", len(self.procs))
        grace = self.config.shutdown_timeout + 5.0
        for port in list(self.procs):
            if self._stop:
                return
            p = self.procs[port]
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.spawn(port)
            if not self.healthy(port, time.monotonic() + 120.0):
                log.error("supervisor: worker on port %d did not come back", port)

    def shutdown(self) -> int:
        """Drain every worker (SIGTERM), kill those still there after the grace period."""
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_timeout + 10.0
        status = 0
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                status = 1
        log.info("supervisor: stopped")
        return status
