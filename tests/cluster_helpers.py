"""Shared helpers of the cluster tests (tests/test_member.py, tests/test_supervisor.py):
in-process workers sharing a real redis-server (the `redis_url` fixture), `python -m server`
worker subprocesses, and bounded waits on frames and heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request

from client_demo.client import AvatarClient
from server.core import protocol as P
from tests.servers import running

TTL = 0.8  # directory_ttl for these tests: a dead worker's rooms free within it


def cluster(redis_url: str, **kw):
    return running(redis=redis_url, directory_ttl=TTL, predictor="cv", **kw)


async def get(srv, path: str) -> bytes:
    """GET a path of an in-process server (in a thread: its loop must keep running)."""

    def fetch() -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=5) as r:
            return r.read()

    return await asyncio.to_thread(fetch)


async def route(srv, room: str) -> str | None:
    return json.loads(await get(srv, f"/route?room={room}"))["url"]


async def states(c: AvatarClient, n: int, budget: int = 600) -> int:
    """Read until `n` state frames arrived (bounded); returns how many messages it took."""
    got = 0
    for k in range(budget):
        msg = await c.recv()
        got += isinstance(msg, P.State)
        if got >= n:
            return k + 1
    raise AssertionError(f"{got} of {n} state frames within {budget} messages")


async def stream(c: AvatarClient, stop: asyncio.Event, x: float = 0.0) -> None:
    seq = 0
    while not stop.is_set():
        seq += 1
        c.send_pos(seq, time.monotonic(), (x + 0.05 * seq, 0.0, 0.0))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def hold(stack: contextlib.AsyncExitStack, w, rooms: list[str]) -> None:
    """One client in each of `rooms`, connected straight to worker `w` (which places them)."""
    for i, room in enumerate(rooms):
        c = AvatarClient(w.url, room, f"p{i}", version=1)
        c._route = lambda: asyncio.sleep(0, w.url)
        await stack.enter_async_context(c)
        assert c.served_by == w.url


async def beats(*workers, n: int = 2) -> None:
    """`n` heartbeat rounds of each worker; with n=2 one whole round began after now (the
    round in flight may have read the directory before)."""
    for w in workers:
        for _ in range(n):
            await w.cluster.next_beat()


def metric(text: bytes, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", text.decode(), re.M)
    return float(m.group(1)) if m else None


def spawn_worker(redis_url: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "server", "--redis", redis_url, "--port", "0",
           "--predictor", "cv", "--directory-ttl", str(TTL), "--tick-hz", "50"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        m = re.search(r"serving (ws://\S+)", line)
        if m:
            import threading

            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, m.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError("worker did not start")
