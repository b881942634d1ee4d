"""`--workers N` (server.cluster.supervisor): the workers' command lines, evicting a dead
worker from the directory (a real redis-server, tests/redis_server.py), and a clear start
failure without Redis (`python -m server` subprocesses)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

import pytest

from server.cluster.directory import RoomDirectory
from server.cluster.member import advertised_url, process_id
from server.cluster.supervisor import Supervisor, _worker_argv
from server.serve.config import Config
from tests.redis_server import free_port


def test_worker_argv():
    argv = ["--workers", "3", "--redis", "redis://h/0", "--port=8700", "--tick-hz", "30"]
    assert _worker_argv(argv, 8702, "n1") == [
        "--redis", "redis://h/0", "--tick-hz", "30", "--workers", "1", "--port", "8702",
        "--cluster-nonce", "n1",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="needs --redis"):
        Config(workers=2)
    with pytest.raises(ValueError, match="fixed --port"):
        Config(workers=2, redis="redis://h/0", port=0)


async def test_redis_down_at_start_is_one_clear_line_and_exit_1(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    for workers in ("1", "2"):
        r = subprocess.run(
            [sys.executable, "-m", "server", "--redis", url, "--port", "0" if workers == "1"
             else str(free_port()), "--workers", workers, "--predictor", "cv"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 1, (workers, r.stderr[-2000:])
        lines = [ln for ln in r.stderr.splitlines() if "127.0.0.1" in ln and "redis" in ln]
        assert lines and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_worker_argv_drops_the_equals_forms_too():
    argv = ["--workers=4", "--cluster-nonce=old", "--redis=redis://h/0", "--port", "9000"]
    assert _worker_argv(argv, 9001, "n2") == [
        "--redis=redis://h/0", "--workers", "1", "--port", "9001", "--cluster-nonce", "n2",
    ]  # fmt: skip
    sup = Supervisor(Config(workers=3, redis="redis://h/0", port=9000), argv)
    assert sup.ports == [9000, 9001, 9002] and sup.procs == {}


def test_evict_removes_a_dead_worker_and_its_rooms_from_the_directory_now(redis_url):
    config = Config(workers=2, redis=redis_url, port=free_port(), host="127.0.0.1")
    sup = Supervisor(config, [])
    port = sup.ports[1]

    async def register_and_die() -> str:
        d = RoomDirectory(redis_url, ttl=60.0)  # its keys would outlive the test
        await d.start(advertised_url(config, port), 700)
        await d.claim("hall")
        await d._redis.aclose()  # dies: nothing unregistered
        return d.nonce

    async def view() -> tuple[list[str], object]:
        d = RoomDirectory(redis_url)
        try:
            return [pid for pid, _, _ in await d.processes()], await d.lookup("hall")
        finally:
            await d.stop()

    sup.nonces[port] = asyncio.run(register_and_die())
    pid = process_id(config, port, sup.nonces[port])
    pids, owner = asyncio.run(view())
    assert pid in pids and owner is not None
    sup.evict(port)
    pids, owner = asyncio.run(view())
    assert pid not in pids and owner is None


def test_evict_without_redis_logs_and_does_not_raise(caplog):
    config = Config(workers=2, redis=f"redis://127.0.0.1:{free_port()}/0", port=free_port())
    sup = Supervisor(config, [])
    sup.nonces[sup.ports[0]] = "n1"
    with caplog.at_level(logging.WARNING, logger="avatar_stream.cluster"):
        sup.evict(sup.ports[0])  # nothing listens there: its keys expire by themselves
    assert any("could not evict" in r.getMessage() for r in caplog.records)
