"""bench/cluster.py's own clients and what is read from them. Each streams at a rate over
protocol v1 (every tick brings a frame, so a gap is a gap), logging its events (connected,
closed and its code, errors, the replies to its hellos), through the shared client core
(`client_demo.wsclient`): it looks its room up (GET /route, in a thread, as `AvatarClient`
does) on the first of the workers' URLs it was given, the next one when that fails;
connects, saying hello at the worker that answered when the one it was sent to cannot be
reached; follows `moved` at once; and after a drop tries again after 0.1 s, doubling to at
most 1 s (with jitter), as a game client with a list of entry points would."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from websockets.exceptions import ConnectionClosed

from client_demo import wsclient
from client_demo.wsclient import STATE_PREFIX
from server.core import protocol as P


@dataclass
class Client:
    i: int
    room: str
    seeds: list[str]
    frames: array = field(default_factory=lambda: array("d"))  # state frame arrival times
    events: list = field(default_factory=list)  # (time, kind, detail)
    url: str | None = None  # the worker serving it now (None while not connected)

    def log(self, kind: str, detail=None) -> None:
        self.events.append((time.monotonic(), kind, detail))


async def route(c: Client, k: int) -> tuple[str, str]:
    """(where to connect, the seed that said so), trying the seeds from the k-th on."""
    n = len(c.seeds)
    return await wsclient.route([c.seeds[(k + j) % n] for j in range(n)], c.room, 2.0)


async def run_client(c: Client, stop: asyncio.Event, rate: float) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(c.i)
    delay, k, moved_to = 0.1, 0, None  # seeds[0] first, like a client with one entry URL
    cx, cy = rng.uniform(0, 40), rng.uniform(0, 40)
    seq = 0
    hello = wsclient.hello_frame(c.room, f"b{c.i:04d}", v=1)

    async def backoff() -> None:
        nonlocal delay, k
        k += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay * rng.uniform(0.5, 1.0))
        delay = min(delay * 2, 1.0)

    async def lookup() -> tuple[str, str]:
        try:
            return await route(c, k)  # a target that cannot be reached: the seed decides
        except OSError as e:
            c.log("route_failed", str(e))
            raise

    async def open_hello(url: str):
        try:
            return await wsclient.open_hello(url, hello, open_timeout=5)
        except wsclient.UNREACHABLE as e:
            c.log("connect_failed", f"{url}: {type(e).__name__}")
            raise

    def hello_error(reply: P.Error) -> None:  # the replies to hello: AvatarClient follows a
        c.log("hello_error", reply.code)  # `moved` inside connect(), unseen by the app

    async def send(ws) -> None:
        nonlocal seq
        phase = rng.uniform(0, 1 / rate)
        t0 = loop.time() + phase
        n = 0
        while True:
            n += 1
            await asyncio.sleep(max(0.0, t0 + n / rate - loop.time()))
            seq += 1
            a = 0.3 * (loop.time() + c.i)
            p = (cx + 5 * math.cos(a), cy + 5 * math.sin(a), 0.0)
            await ws.send(P.encode_client(P.Pos(seq=seq, t=time.monotonic(), p=p)))

    while not stop.is_set():
        target, moved_to = moved_to, None
        try:
            got = await wsclient.dial(open_hello, target, lookup, on_move=hello_error)
        except wsclient.UNREACHABLE:  # logged: route_failed, connect_failed
            await backoff()
            continue
        except ConnectionClosed as e:  # the hello could not be sent
            c.log("closed", wsclient.close_code(e))
            await backoff()
            continue
        reply = got.reply
        if got.welcome is None:
            if isinstance(reply, P.Error) and reply.code == wsclient.CLOSED:
                c.log("closed", got.close_code)  # closed during the hello
            elif isinstance(reply, P.Error):
                hello_error(reply)
                if wsclient.is_moved(reply):  # not followed by dial (its hop limit, or to a
                    moved_to = reply.url  # worker that is down): at once all the same
                    continue
            else:
                c.log("error", "no_welcome")
            await backoff()
            continue
        ws = got.conn
        c.url, delay = got.url, 0.1
        c.log("connected", got.url)
        sender = asyncio.create_task(send(ws))
        try:
            async for data in ws:
                if data[1:12] == STATE_PREFIX:
                    c.frames.append(time.monotonic())
                    continue
                msg = P.decode_server(data)
                if isinstance(msg, P.Error):
                    c.log("error", msg.code)
                    if wsclient.is_moved(msg):
                        moved_to = msg.url
            c.log("closed", ws.close_code)
        except ConnectionClosed as e:
            c.log("closed", wsclient.close_code(e))
        except OSError as e:
            c.log("closed", type(e).__name__)
        finally:
            c.url = None
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            if stop.is_set():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2)
        if moved_to is None and not stop.is_set():
            await backoff()


class Swarm:
    """`n` bench clients over `rooms` rooms, in this process's loop."""

    def __init__(self, seeds: list[str], n: int, rooms: int, rate: float) -> None:
        self.clients = [Client(i, f"r{i % rooms}", seeds) for i in range(n)]
        self.rate = rate
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []

    async def start(self, ramp: float = 2.0) -> None:
        for c in self.clients:
            self.tasks.append(asyncio.create_task(run_client(c, self.stop, self.rate)))
            await asyncio.sleep(ramp / len(self.clients))
        await self.settled(60.0)

    async def settled(self, timeout: float) -> float:
        """Wait until every client got a state frame in the last 0.5 s; returns the wait."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            now = time.monotonic()
            if all(c.url and c.frames and now - c.frames[-1] < 0.5 for c in self.clients):
                return now - t0
            await asyncio.sleep(0.1)
        late = sum(not (c.frames and time.monotonic() - c.frames[-1] < 0.5) for c in self.clients)
        raise TimeoutError(
            f"{late} of {len(self.clients)} clients without frames after {timeout} s"
        )

    async def close(self) -> None:
        self.stop.set()
        _, late = await asyncio.wait(self.tasks, timeout=10)
        for t in late:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def on(self, url: str) -> list[Client]:
        return [c for c in self.clients if c.url == url]


def next_frame_after(c: Client, t: float) -> float | None:
    """Seconds from t to this client's first state frame after it (None: none came)."""
    j = bisect_right(c.frames, t)
    return c.frames[j] - t if j < len(c.frames) else None


def frames_between(c: Client, t0: float, t1: float) -> int:
    return bisect_left(c.frames, t1) - bisect_left(c.frames, t0)


def quantiles(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    s = sorted(xs)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, math.ceil(p * len(s)) - 1)], 3)

    return {"n": len(s), "p50": q(0.5), "p99": q(0.99), "max": round(s[-1], 3)}


def errors_between(
    clients: list[Client], t0: float, t1: float, kind_: str = "error"
) -> dict[str, int]:
    """Error messages by code in [t0, t1]: "error" those of a session (after its welcome),
    "hello_error" the replies to a hello."""
    out: dict[str, int] = {}
    for c in clients:
        for t, kind, detail in c.events:
            if t0 <= t <= t1 and kind == kind_:
                out[str(detail)] = out.get(str(detail), 0) + 1
    return out


def close_codes_between(clients: list[Client], t0: float, t1: float) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in clients:
        for t, kind, detail in c.events:
            if t0 <= t <= t1 and kind == "closed":
                out[str(detail)] = out.get(str(detail), 0) + 1
    return out


async def sleep_till(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


def longest_gap(c: Client, t0: float, t1: float) -> float:
    """The longest time between two state frames of `c` (or a window edge) in [t0, t1]."""
    ts = [t0, *c.frames[bisect_left(c.frames, t0) : bisect_left(c.frames, t1)], t1]
    return max(b - a for a, b in itertools.pairwise(ts))
