"""Test helper: a real, throw-away redis-server on a free loopback port.

``RedisServer`` runs ``redis-server --port P --bind 127.0.0.1 --save '' --appendonly no``
as a child process (its own temporary --dir and log), waits until it answers PING (polled,
bounded deadline), and stops it by PID (SIGTERM, then SIGKILL after a timeout).
``stop()`` then ``start()`` restarts it empty on the same port, as after a Redis crash.
Nothing runs as a system service. tests/conftest.py wraps it as the ``redis_server`` and
``redis_url`` fixtures; ``need_redis_server()`` skips (or fails under CI) without it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REDIS_SERVER = Path("/usr/bin/redis-server")


def redis_server_path() -> Path | None:
    """The redis-server executable: on PATH, else /usr/bin/redis-server, else None."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    return REDIS_SERVER if REDIS_SERVER.exists() else None


def need_redis_server() -> Path:
    """Return redis-server's path; skip the test without it, or fail it when CI is set."""
    path = redis_server_path()
    if path is not None:
        return path
    reason = (
        "redis-server not found (Debian: apt-get install -y redis-server; "
        "scripts/test.sh does it as root)"
    )
    import pytest  # here: bench/cluster.py uses RedisServer without pytest

    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so the Redis tests must run")
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers_ping(port: int, timeout: float = 0.5) -> bool:
    """True if a Redis on 127.0.0.1:port answers PING with +PONG right now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server child process on 127.0.0.1; restartable on the same port.

    ``RedisServer()`` picks a free port; ``start()`` returns once it answers PING;
    ``stop()`` ends it by PID; ``close()`` stops it and removes its directory. Use it as
    a context manager (started on entry, closed on exit).
    """

    def __init__(self, port: int | None = None, executable: Path | None = None) -> None:
        self.executable = executable or redis_server_path() or REDIS_SERVER
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _log_tail(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _spawn(self) -> subprocess.Popen[bytes]:
        args = [
            str(self.executable),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start redis-server (on the same port as before, if it ran before) and wait
        until it answers PING, at most ``timeout`` s. A first start on a picked port
        that turns out to be taken retries on another free port."""
        if self.running:
            raise RuntimeError(f"redis-server already running on port {self.port}")
        for attempt in range(3):
            self.proc = self._spawn()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break  # exited: port taken, bad option...
                if answers_ping(self.port):
                    self.starts += 1
                    return
                time.sleep(0.01)  # poll interval
            else:
                self.stop()
                raise RuntimeError(
                    f"redis-server on port {self.port} did not answer PING within "
                    f"{timeout} s; log:\n{self._log_tail()}"
                )
            rc = self.proc.returncode
            self.proc = None
            if self._fixed_port or self.starts or attempt == 2:
                raise RuntimeError(
                    f"redis-server on port {self.port} exited with {rc}; log:\n{self._log_tail()}"
                )
            self.port = free_port()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop it by PID: SIGTERM, then SIGKILL if it is still there after ``timeout`` s.
        Its data is gone (no persistence); ``start()`` brings up an empty one."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def close(self) -> None:
        """Stop it and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
