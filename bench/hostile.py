"""Hostile-traffic benchmark: what bad clients cost the good ones, and what they leave behind.

    python bench/hostile.py [--transport websockets|picows] [--good 50] [--rate 20]
                            [--hostile-seconds 20] [--hostile-rate 20] [--churn 2000]
                            [--churn-concurrency 50] [--churn-rounds 2] [--slow-seconds 10]
                            [--fuzz 200000] [--seed 1] [--predictor gru]
                            [--server-args "..."] [--json OUT]

The server is a real ``python -m server`` subprocess on a free loopback port (its own
process and GIL, as in production); this process runs every client on one asyncio loop
(uvloop when installed). Server figures come from its /metrics (tick-duration histogram,
counters, gauges) and /proc/PID/status (VmRSS, VmHWM); client figures are counted here.
The server runs with ``--hello-timeout 2 --resume-grace 1`` (so silent connections and
detached avatars go within the run) plus --server-args; its other limits are the defaults.

Phases, in order, all with --good players streaming `pos` at --rate Hz in room "lobby"
(each sees every other: frames of ~60 bytes a player):

  (i)   baseline: --hostile-seconds of good traffic only -> tick p50/p99 (server histogram),
        overruns, and the good clients' frame fraction (states received / ticks spanned);
  (ii)  hostile: the same window while --hostile-rate connections a second each do one bad
        thing (garbage, text, not a map, unknown type, pos before hello, NaN/inf/1e300,
        frames over --max-frame / --max-hello-frame / --max-frame-hard, a pos flood over
        --max-msg-rate, silence, aborts after hello and mid-stream, pipelined hello+close,
        ...) -> the same figures, plus the hostile connections by (error, close code) and
        every one that did not get its documented answer;
  (iii) churn: --churn players connect, hello, send a pos and go (a third aborted without
        a close frame, a third closing, a third saying bye), --churn-concurrency at a
        time, in rooms of their own -> connects/s, peak and after counts, server RSS;
        --churn-rounds times (RSS that grows in the first round only is a high-water
        mark, e.g. the engine's slot arrays; growth in every round would be a leak);
  (iv)  a never-reading player (tiny receive window, reading paused) in the lobby for
        --slow-seconds -> whether and when it was refused (too_slow, or idle_timeout as it
        answers no ping) and disconnected, the kernel's send queue for it (/proc/net/tcp),
        server RSS before/after, tick p99 and good frame fraction with it. With the
        default --send-buffer the kernel absorbs a slow reader's frames for tens of
        seconds first (see the printed queue), so 10 s may end with it still served;
  then the good clients leave and everything must go back to zero (connections, avatars =
  engine slots in use, rooms, detached), and the server is stopped with SIGINT; its log is
  scanned for tracebacks and ERROR lines. Last, --fuzz frames (random, mutated valid
  frames, random msgpack structures, text; seeded) go through
  `server.core.protocol.decode_client` in this process: anything but ProtocolError is a bug.

Exit status 1 when anything broke a documented promise (an `error`/close other than the
documented one, server-side error counts other than the connections', internal_error,
tick errors, a good client under 95 % of its frames, counts not back to where they were,
tracebacks in the server log, a decode exception other than ProtocolError), each printed
as a PROBLEM line; 0 otherwise. Everything is bounded in count and time and stops by
itself (the server is told to die with this process); loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from client_demo.loadtest import bucket_quantiles
from server import cli
from server.core import protocol as P
from server.serve.config import Config

OP_TIMEOUT = 10.0  # seconds: any one connect / read / close in this benchmark
SERVER_FLAGS = ["--hello-timeout", "2", "--resume-grace", "1"]
LIMITS = Config.from_args(SERVER_FLAGS, environ={})  # the server's; main() reads --server-args

# -- the server subprocess -------------------------------------------------------------------


class Server:
    """`python -m server` on a free loopback port; its stderr drained and scanned."""

    def __init__(self, transport: str, predictor: str, extra: list[str]) -> None:
        cmd = [sys.executable, "-m", "server", "--port", "0", "--transport", transport,
               "--predictor", predictor, *SERVER_FLAGS, "--log-level", "info", *extra]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            preexec_fn=_die_with_parent,
        )
        self.levels: Counter = Counter()
        self.tracebacks = 0
        self.errors: Counter = Counter()  # ERROR lines, digits and peers blanked
        self.url: str | None = None
        self.last_line = ""  # the log's last line (why it did not start, if it did not)
        self._serving = threading.Event()
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()  # reads the log to the end: a full pipe would stall the server
        if not self._serving.wait(120) or self.url is None:
            self.proc.kill()
            self.proc.wait()
            why = self.last_line.split("cannot start: ", 1)[-1] or "no output"
            raise cli.UserError(f"the server ({' '.join(cmd[1:])}) did not start: {why}")
        self.http = self.url.replace("ws://", "http://").rstrip("/")

    def _scan(self, line: str) -> None:
        m = re.match(r"\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line)
        if m:
            self.levels[m.group(1)] += 1
            if m.group(1) in ("ERROR", "CRITICAL"):
                msg = line.split(" ", 3)[3].strip()
                self.errors[re.sub(r"\d+", "N", msg)[:140]] += 1
        if line.startswith("Traceback"):
            self.tracebacks += 1

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self._scan(line)
            self.last_line = line.strip() or self.last_line
            if self.url is None:
                m = re.search(r"serving (ws://\S+)", line)
                if m:
                    self.url = m.group(1)
                    self._serving.set()
        self._serving.set()  # it exited (before serving, if url is None)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.http + "/metrics", timeout=OP_TIMEOUT) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out

    def rss_mb(self) -> dict[str, float]:
        return proc_memory(self.proc.pid)

    def stop(self) -> int | None:
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        self._drain.join(timeout=5)
        return code


def _die_with_parent() -> None:
    """In the child: SIGTERM when this benchmark dies, however it dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def proc_memory(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, MiB (Linux /proc)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


async def metrics(srv: Server) -> dict[str, float]:
    return await asyncio.to_thread(srv.metrics)


def quantiles(m0: dict, m1: dict, name: str, qs=(0.5, 0.99)) -> dict:
    """Quantiles (ms) of a histogram over the window between two scrapes (interpolated
    within buckets, as Prometheus' histogram_quantile)."""
    pat = re.compile(rf'^{name}_bucket{{le="([^"]+)"}}$')
    rows = sorted(
        (math.inf if pat.match(k).group(1) == "+Inf" else float(pat.match(k).group(1)),
         v - m0.get(k, 0.0))
        for k, v in m1.items() if pat.match(k)
    )  # fmt: skip
    out = {"n": int(rows[-1][1]) if rows else 0}
    for k, v in bucket_quantiles(rows, qs).items():
        out[k] = None if v is None else round(v, 3)
    return out


def delta(m0: dict, m1: dict, key: str) -> float:
    return m1.get(key, 0.0) - m0.get(key, 0.0)


def errors_by_code(m0: dict, m1: dict) -> dict[str, int]:
    out = {}
    for k, v in m1.items():
        m = re.match(r'^avatar_protocol_errors_total{code="([^"]+)"}$', k)
        if m and v - m0.get(k, 0.0):
            out[m.group(1)] = int(v - m0.get(k, 0.0))
    return out


def gauges(m: dict) -> dict[str, float]:
    return {
        "players": m.get('avatar_connections{kind="player"}', 0.0),
        "spectators": m.get('avatar_connections{kind="spectator"}', 0.0),
        "pending": m.get('avatar_connections{kind="pending"}', 0.0),
        "detached": m.get("avatar_detached", 0.0),
        "avatars": m.get("avatar_avatars", 0.0),
        "rooms": m.get("avatar_rooms", 0.0),
    }


# -- frames -------------------------------------------------------------------------------------


def hello(avatar: str | None, room: str = "lobby") -> bytes:
    return P.encode_client(P.Hello(room=room, avatar=avatar, v=1))  # a state every tick


def pos(seq: int, p, t: float) -> bytes:
    return P.encode_client(P.Pos(seq=seq, t=t, p=tuple(map(float, p))))


def raw_pos(**fields) -> bytes:
    return msgpack.packb({"type": "pos", "seq": 1, "t": 1.0, "p": [0.0, 0.0], **fields})


def padded(size: int) -> bytes:
    """A well-formed pos of exactly `size` bytes (an ignored key carries the padding)."""
    pad = size - len(raw_pos(pad=b""))
    frame = raw_pos(pad=b"x" * pad)
    if len(frame) > size:
        frame = raw_pos(pad=b"x" * (pad - (len(frame) - size)))
    return frame


async def open_ws(url: str, sock=None):
    return await asyncio.wait_for(
        connect(url, max_size=2**22, sock=sock, ping_interval=None, close_timeout=2.0),
        OP_TIMEOUT,
    )


async def recv(ws):
    return await asyncio.wait_for(ws.recv(), OP_TIMEOUT)


async def refusal(ws, seconds: float = OP_TIMEOUT) -> tuple[str | None, int | None]:
    """Read until the server closes (at most `seconds`, then abort): (its error code or
    None, the close code; None if it did not close)."""
    err = None
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        async with asyncio.timeout(seconds):
            for _ in range(100_000):
                frame = await ws.recv()
                if isinstance(frame, bytes) and b"error" in frame[:16]:
                    with contextlib.suppress(P.ProtocolError):
                        msg = P.decode_server(frame)
                        if isinstance(msg, P.Error):
                            err = msg.code
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(ws.wait_closed(), 1.0)
    if ws.close_code is None:
        ws.transport.abort()
        return err, None
    return err, int(ws.close_code)


# -- good clients ---------------------------------------------------------------------------------


class Window:
    """Which measurement window is open; good clients file their state ticks under it."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.ticks: dict[str, dict[int, list[int]]] = {}

    def open(self, name: str) -> None:
        self.ticks[name] = {}
        self.name = name

    def close(self) -> None:
        self.name = None

    def fraction(self, name: str) -> dict:
        per = []
        got = span = 0
        for ticks in self.ticks.get(name, {}).values():
            if len(ticks) >= 2:
                s = max(ticks) - min(ticks) + 1
                per.append(len(set(ticks)) / s)
                got += len(set(ticks))
                span += s
        return {
            "clients": len(per),
            "fraction": round(got / span, 4) if span else None,
            "min_fraction": round(min(per), 4) if per else None,
        }


class Good:
    """A player streaming a slow circle at `rate` Hz; counts its state ticks per window."""

    def __init__(self, i: int, rng: random.Random, window: Window) -> None:
        self.i = i
        self.cx, self.cy = rng.uniform(-15, 15), rng.uniform(-15, 15)
        self.phase = rng.uniform(0, 2 * math.pi)
        self.window = window
        self.ws = None
        self.close_code: int | None = None
        self.error: str | None = None
        self.closed_early = False

    async def start(self, url: str, rate: float, stop: asyncio.Event) -> None:
        self.stop = stop
        self.ws = await open_ws(url)
        await self.ws.send(hello(f"good{self.i}"))
        welcome = P.decode_server(await recv(self.ws))
        assert isinstance(welcome, P.Welcome), welcome
        self.tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._send(rate, stop)),
        ]

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                if frame[1:12] == b"\xa4type\xa5state":
                    name = self.window.name
                    if name is not None:
                        tick = msgpack.unpackb(frame)["tick"]
                        self.window.ticks[name].setdefault(self.i, []).append(tick)
                elif b"error" in frame[:16]:
                    self.error = P.decode_server(frame).code
        except ConnectionClosed:
            pass
        self.close_code = self.ws.close_code
        self.closed_early = not self.stop.is_set()

    async def _send(self, rate: float, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        t0, k = loop.time(), 0
        with contextlib.suppress(ConnectionClosed):
            while not stop.is_set():
                k += 1
                a = self.phase + 0.2 * k / rate  # 0.2 rad/s on a 3 m circle
                p = (self.cx + 3 * math.cos(a), self.cy + 3 * math.sin(a), 0.0)
                await self.ws.send(pos(k, p, k / rate))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, t0 + k / rate - loop.time()))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), OP_TIMEOUT)
        await asyncio.gather(*self.tasks, return_exceptions=True)


# -- hostile connections ---------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


def hostile_kinds(cfg: Config) -> dict[str, tuple[bool, object, tuple]]:
    """kind -> (after hello?, frame, documented (error code, close code)) for the server's
    limits; a None frame: done by `hostile` itself."""
    max_frame, max_hello, max_hard = cfg.max_frame, cfg.max_hello_frame, cfg.max_frame_hard
    return {
        "garbage": (False, b"\xc1\xff\x00garbage", ("bad_msgpack", 1003)),
        "trailing_bytes": (True, pos(1, (0, 0, 0), 1.0) + b"\x00", ("bad_msgpack", 1003)),
        "deep_nesting": (False, b"\x91" * 2000 + b"\xc0", ("bad_msgpack", 1003)),
        "text_frame": (False, "hello", ("text_frame", 1003)),
        "not_a_map": (False, msgpack.packb([1, 2, 3]), ("bad_message", 1008)),
        "no_type": (True, msgpack.packb({"seq": 1}), ("bad_message", 1008)),
        "unknown_type": (True, msgpack.packb({"type": "teleport"}), ("unknown_type", 1008)),
        "pos_before_hello": (False, pos(1, (0, 0, 0), 1.0), ("expected_hello", 1008)),
        "second_hello": (True, hello("x"), ("expected_hello", 1008)),
        "nan": (True, raw_pos(p=[NAN, 0.0, 0.0]), ("non_finite", 1008)),
        "inf": (True, raw_pos(p=[0.0, -INF]), ("non_finite", 1008)),
        "huge": (True, raw_pos(p=[1e300, 0.0]), ("out_of_range", 1008)),
        "bad_seq": (True, raw_pos(seq=-1), ("out_of_range", 1008)),
        "over_max_frame": (True, padded(max_frame + 1), ("too_large", 1009)),
        "over_hello_frame": (False, padded(max_hello + 1), ("too_large", 1009)),
        "over_hard_limit": (False, padded(max_hard + 1), (None, 1009)),
        "pipelined_close": (True, None, (None, 1000)),  # hello + close frame in one write
        "pipelined_oversize": (True, None, (None, 1009)),  # hello + a frame over the hard limit
        "flood": (True, None, ("rate_limited", 1008)),
        "teleporter": (True, None, (None, 1000)),  # valid, extreme samples, then bye
        "silent": (False, None, ("hello_timeout", 1008)),
        "abort_after_hello": (True, None, ("aborted", None)),
        "abort_mid_stream": (True, None, ("aborted", None)),
    }


HOSTILE = hostile_kinds(LIMITS)


async def hostile(url: str, kind: str, i: int) -> tuple:
    """One hostile connection doing `kind`; what it got back."""
    after_hello, frame, _ = HOSTILE[kind]
    ws = await open_ws(url)
    name = f"h-{kind}-{i}"
    if kind in ("pipelined_close", "pipelined_oversize"):
        ws.protocol.send_binary(hello(name))
        if kind == "pipelined_close":
            ws.protocol.send_close(1000, "done")
        else:
            ws.protocol.send_binary(padded(LIMITS.max_frame_hard + 1))
        ws.transport.writelines(ws.protocol.data_to_send())
        return await refusal(ws)
    if after_hello:
        await ws.send(hello(name))
    if kind.startswith("abort"):
        assert isinstance(P.decode_server(await recv(ws)), P.Welcome)
        if kind == "abort_mid_stream":
            for k in range(5):
                await ws.send(pos(k + 1, (random.uniform(-15, 15), 0.0, 0.0), 1.0 + 0.05 * k))
                await recv(ws)
        ws.transport.abort()
        return ("aborted", None)
    if kind == "flood":
        with contextlib.suppress(ConnectionClosed):
            for k in range(int(8 * LIMITS.max_msg_rate)):
                await ws.send(pos(k + 1, (0.1 * k, 0.0, 0.0), 1.0 + 0.001 * k))
    elif kind == "teleporter":
        for k in range(20):
            x = (1e6, -1e6, 0.0, 999_999.5)[k % 4]
            await ws.send(pos(k + 1, (x, -x, x), 1.0 + k * (1e-9, 5.0)[k % 2]))
        await ws.send(P.encode_client(P.Bye()))
    elif frame is not None:
        await ws.send(frame)
    return await refusal(ws)


async def hostile_window(url: str, seconds: float, per_second: float) -> dict:
    """Start `per_second` hostile connections a second (kinds in turn) for `seconds`."""
    kinds = list(HOSTILE)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks: list[tuple[str, asyncio.Task]] = []
    k = 0
    while loop.time() - t0 < seconds:
        kind = kinds[k % len(kinds)]
        tasks.append((kind, asyncio.create_task(hostile(url, kind, k))))
        k += 1
        await asyncio.sleep(max(0.0, t0 + k / per_second - loop.time()))
    results = await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
    by_code: Counter = Counter()
    wrong: Counter = Counter()
    failed: Counter = Counter()
    for (kind, _), r in zip(tasks, results, strict=True):
        if isinstance(r, BaseException):
            failed[f"{kind}: {type(r).__name__}"] += 1
            continue
        by_code[str(r[1])] += 1
        if tuple(r) != HOSTILE[kind][2]:
            wrong[f"{kind}: got {tuple(r)}, documented {HOSTILE[kind][2]}"] += 1
    documented = Counter(HOSTILE[kind][2][0] for kind, _ in tasks)
    for code in (None, "aborted"):
        documented.pop(code, None)
    return {
        "connections": len(tasks),
        "kinds": dict(Counter(kind for kind, _ in tasks)),
        "documented_errors": dict(documented),
        "by_close_code": dict(sorted(by_code.items())),
        "not_as_documented": dict(wrong),
        "client_failures": dict(failed),
    }


# -- churn -------------------------------------------------------------------------------------


async def churn(url: str, n: int, concurrency: int) -> dict:
    todo = list(range(n))
    codes: Counter = Counter()
    failures: Counter = Counter()

    async def one(i: int) -> None:
        ws = await open_ws(url)
        await ws.send(hello(f"c{i}", room=f"churn{i % 10}"))
        assert isinstance(P.decode_server(await recv(ws)), P.Welcome)
        await ws.send(pos(1, (float(i % 40), 0.0, 0.0), 1.0))
        mode = i % 3
        if mode == 0:
            ws.transport.abort()
            codes["aborted"] += 1
        elif mode == 1:
            await asyncio.wait_for(ws.close(), OP_TIMEOUT)
            codes[f"closed {ws.close_code}"] += 1
        else:
            await ws.send(P.encode_client(P.Bye()))
            err, code = await refusal(ws)
            codes[f"bye -> {err} {code}"] += 1

    async def worker() -> None:
        while todo:
            i = todo.pop()
            try:
                await one(i)
            except Exception as e:
                failures[type(e).__name__] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "connections": n,
        "wall_s": round(wall, 2),
        "per_s": round(n / wall, 1),
        "outcomes": dict(codes),
        "failures": dict(failures),
    }


async def sample_peaks(srv: Server, stop: asyncio.Event, every: float = 0.2) -> dict:
    peak: Counter = Counter()
    while not stop.is_set():
        g = gauges(await metrics(srv))
        g["connections"] = g["players"] + g["spectators"] + g["pending"]
        for k, v in g.items():
            peak[k] = max(peak[k], v)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    return dict(peak)


async def settle(srv: Server, want: dict, seconds: float) -> tuple[dict, float]:
    """Poll /metrics until every gauge in `want` has its value, for at most `seconds`."""
    t0 = time.perf_counter()
    while True:
        g = gauges(await metrics(srv))
        if all(g[k] == v for k, v in want.items()) or time.perf_counter() - t0 > seconds:
            return g, round(time.perf_counter() - t0, 2)
        await asyncio.sleep(0.1)


# -- fuzzing decode_client -----------------------------------------------------------------------


def _corpus() -> list[bytes]:
    msgs = [
        P.Hello(room="lobby", avatar="alice"),
        P.Hello(room="r", avatar=None, region=(0.0, 0.0, 10.0, 10.0)),
        P.Hello(room="r", avatar="b", token="t" * 40, resume="x" * 22),
        P.Pos(seq=17, t=12.345, p=(3.5, -1.25, 0.0)),
        P.Pos(seq=2**32 - 1, t=1e9, p=(1e6, -1e6, 0.5), yaw=3.0),
        P.Bye(),
        P.View(region=(-5.0, -5.0, 5.0, 5.0)),
        P.View(region=None),
        P.Ping(t=123.0),
    ]
    frames = [P.encode_client(m) for m in msgs]
    frames.append(msgpack.packb({"type": "pos", "seq": 1, "t": 1, "p": [1, 2]}))
    frames.append(msgpack.packb({"type": "pos", "seq": 1, "t": 1.5, "p": [1.0, 2.0], "x": {}}))
    return frames


_TYPES = ["hello", "pos", "bye", "view", "ping", "state", "", "HELLO", "pos\x00", "welcome"]
_KEYS = ["type", "v", "room", "avatar", "token", "resume", "region", "seq", "t", "p", "yaw"]


def _value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if r < 0.15:
        return rng.choice(
            [0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**53, 2**53 + 1, -(2**63), 2**64 - 1]
        )
    if r < 0.35:
        return rng.choice([0.0, -0.0, 1.5, 1e6, 1e6 + 1, -1e7, 1e12, 1e300, NAN, INF, -INF, 5e-324])
    if r < 0.45:
        return rng.choice([True, False, None])
    if r < 0.6:
        n = rng.choice([0, 1, 5, 64, 65, 300, 5000])
        return "".join(rng.choices("ab \x00\x1f\x7f\u00a0\u2028é😀", k=n))
    if r < 0.68:
        return rng.randbytes(rng.choice([0, 3, 100, 5000]))
    if r < 0.72:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.choice([0, 4, 8, 12])))
    if r < 0.74:
        return msgpack.Timestamp(rng.randrange(0, 2**34), rng.randrange(0, 10**9))
    if depth < 3 and r < 0.9:
        n = rng.choice([0, 1, 2, 3, 4, 65])
        if n > 4:  # over msgpack's array limit: plain numbers, or this is all we do
            return [rng.random() for _ in range(n)]
        return [_value(rng, depth + 1) for _ in range(n)]
    if depth < 3:
        return {rng.choice(_KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}
    return rng.random()


_TEMPLATES = [
    {"type": "hello", "v": 1, "room": "lobby", "avatar": "a"},
    {"type": "hello", "v": 1, "room": "lobby", "region": [0, 0, 1, 1]},
    {"type": "pos", "seq": 1, "t": 1.0, "p": [0.0, 0.0, 0.0], "yaw": 0.5},
    {"type": "view", "region": [0.0, 0.0, 5.0, 5.0]},
    {"type": "ping", "t": 1.0},
    {"type": "bye"},
]


def _structured(rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # a valid message with one or two fields changed or dropped
        d = dict(rng.choice(_TEMPLATES))
        for _ in range(rng.randint(1, 2)):
            key = rng.choice(_KEYS)
            if rng.random() < 0.2:
                d.pop(key, None)
            elif key in ("p", "region") and rng.random() < 0.6:
                d[key] = [rng.choice([0.0, 1e6, -1e6 - 1, 2**53 + 1, NAN, True, "1", None])
                          for _ in range(rng.choice([0, 2, 3, 4, 5]))]  # fmt: skip
            else:
                d[key] = _value(rng)
        return msgpack.packb(d, use_bin_type=True)
    d = {}
    if rng.random() < 0.9:
        d["type"] = rng.choice(_TYPES) if rng.random() < 0.9 else _value(rng)
    for key in rng.sample(_KEYS[1:], rng.randrange(0, len(_KEYS))):
        if rng.random() < 0.5 and key in ("p", "region"):
            d[key] = [_value(rng) if rng.random() < 0.3 else rng.uniform(-2e6, 2e6)
                      for _ in range(rng.choice([2, 3, 4, 5]))]  # fmt: skip
        elif key in ("room", "avatar") and rng.random() < 0.5:
            d[key] = "x" * rng.choice([1, 64, 65])
        else:
            d[key] = _value(rng)
    if rng.random() < 0.05:  # keys that msgpack's strict_map_key refuses
        d = {**d, rng.choice([1, b"type", 2.5]): 1}
    try:
        return msgpack.packb(d, use_bin_type=rng.random() < 0.9)
    except (TypeError, ValueError, OverflowError):
        return b"\x80"


def _mutate(rng: random.Random, frame: bytes, corpus: list[bytes]) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and b:  # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # an interesting byte
            b[rng.randrange(len(b))] = rng.choice(
                [0x00, 0x7F, 0x80, 0x90, 0xA0, 0xC0, 0xC1, 0xC4, 0xCA, 0xCB, 0xCF, 0xD3, 0xDC,
                 0xDD, 0xDE, 0xDF, 0xFF, rng.randrange(256)]
            )  # fmt: skip
        elif op == 2:  # insert random bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and b:  # delete a range
            i = rng.randrange(len(b))
            del b[i : i + rng.randint(1, 8)]
        elif op == 4 and b:  # truncate
            del b[rng.randrange(len(b)) :]
        elif op == 5 and b:  # duplicate a chunk
            i = rng.randrange(len(b))
            b[i:i] = b[i : i + rng.randint(1, 16)]
        else:  # splice with another frame
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            b = b[: rng.randrange(len(b) + 1)] + other[cut:]
    return bytes(b)


def fuzz(n: int, seed: int, max_size: int | None = None) -> dict:
    """Feed `n` seeded random frames to decode_client; count outcomes. Valid results must
    survive an encode/decode round trip unchanged."""
    max_size = LIMITS.max_frame if max_size is None else max_size
    rng = random.Random(seed)
    corpus = _corpus()
    codes: Counter = Counter()
    accepted: Counter = Counter()
    others: Counter = Counter()
    examples: dict[str, str] = {}
    roundtrip_bad = 0
    mem0 = proc_memory()
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    for _ in range(n):
        r = rng.random()
        if r < 0.2:
            frame = rng.randbytes(rng.choice([0, 1, 2, 5, 20, 100, 300]))
        elif r < 0.6:
            frame = _mutate(rng, rng.choice(corpus), corpus)
        elif r < 0.93:
            frame = _structured(rng)
        elif r < 0.98:
            frame = "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(40)))
        else:
            frame = rng.choice(corpus) + rng.randbytes(rng.choice([max_size, 10]))
        try:
            msg = P.decode_client(frame, max_size=max_size)
        except P.ProtocolError as e:
            codes[e.code] += 1
            continue
        except Exception as e:  # a bug: decode must raise nothing but ProtocolError
            others[type(e).__name__] += 1
            examples.setdefault(type(e).__name__, repr(frame[:200]))
            continue
        accepted[type(msg).__name__] += 1
        if P.decode_client(P.encode_client(msg)) != msg:
            roundtrip_bad += 1
            examples.setdefault("roundtrip", repr(frame[:200]))
    wall = time.perf_counter() - t0
    mem1 = proc_memory()
    return {
        "frames": n,
        "seed": seed,
        "wall_s": round(wall, 2),
        "accepted": dict(accepted),
        "protocol_errors": dict(codes.most_common()),
        "other_exceptions": dict(others),
        "examples": examples,
        "roundtrip_mismatches": roundtrip_bad,
        "rss_mb_before": round(mem0["VmRSS"], 1),
        "rss_mb_after": round(mem1["VmRSS"], 1),
        "peak_rss_growth_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - maxrss0, 1
        ),
    }


# -- the run -------------------------------------------------------------------------------------


async def measure(srv: Server, window: Window, name: str, seconds: float, work=None) -> dict:
    """One window: /metrics before and after `seconds` (while `work` runs, if any)."""
    m0 = await metrics(srv)
    window.open(name)
    t0 = time.perf_counter()
    extra = await work if work is not None else None
    await asyncio.sleep(max(0.0, seconds - (time.perf_counter() - t0)))
    window.close()
    m1 = await metrics(srv)
    out = {
        "seconds": round(time.perf_counter() - t0, 2),
        "tick_ms": quantiles(m0, m1, "avatar_tick_seconds"),
        "model_step_ms": quantiles(m0, m1, "avatar_model_step_seconds"),
        "overruns": int(delta(m0, m1, "avatar_tick_overruns_total")),
        "dropped_frames": int(delta(m0, m1, "avatar_frames_dropped_total")),
        "rate_dropped": int(delta(m0, m1, "avatar_messages_rate_dropped_total")),
        "tick_errors": int(delta(m0, m1, "avatar_tick_errors_total")),
        "protocol_errors": errors_by_code(m0, m1),
        "good": window.fraction(name),
        "server_mem_mb": srv.rss_mb(),
    }
    if extra is not None:
        out["hostile"] = extra
    return out


def tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """Kernel (send, receive) queue bytes of the loopback TCP socket local_port ->
    remote_port, from /proc/net/tcp (None when there is no such socket)."""
    want = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if (cols[1], cols[2]) == want:
                tx, rx = cols[4].split(":")
                return int(tx, 16), int(rx, 16)
    return None


async def slow_reader(srv: Server, window: Window, seconds: float) -> dict:
    """A player with a tiny receive window that never reads, for `seconds`."""
    mem0 = srv.rss_mb()
    m0 = await metrics(srv)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = srv.url.split("//")[1].rstrip("/").split(":")
    sock.connect((host, int(port)))
    sock.setblocking(False)
    ws = await open_ws(srv.url, sock=sock)
    await ws.send(hello("slow"))
    assert isinstance(P.decode_server(await recv(ws)), P.Welcome)
    await ws.send(pos(1, (0.0, 0.0, 0.0), 1.0))
    ws.transport.pause_reading()
    t0 = time.perf_counter()
    refused_at = gone_at = refused_with = None
    me = sock.getsockname()[1]
    queues = {"server_send_queue_max": 0, "client_receive_queue_max": 0}

    async def watch() -> None:
        nonlocal refused_at, gone_at, refused_with
        while time.perf_counter() - t0 < seconds:
            m = await metrics(srv)
            codes = errors_by_code(m0, m)
            if refused_at is None and codes:  # too_slow, or idle_timeout: it answers no ping
                refused_at, refused_with = time.perf_counter() - t0, ",".join(codes)
            if refused_at is not None and gone_at is None and not gauges(m)["pending"]:
                gone_at = time.perf_counter() - t0
            for key, q in (("server_send_queue_max", tcp_queues(int(port), me)),
                           ("client_receive_queue_max", tcp_queues(me, int(port)))):  # fmt: skip
                if q is not None:
                    queues[key] = max(queues[key], q[0] if key.startswith("server") else q[1])
            await asyncio.sleep(0.25)

    out = await measure(srv, window, "slow", seconds, watch())
    ws.transport.resume_reading()
    if refused_at is None:  # still served: it would read on as a normal client now
        ws.transport.abort()
        err, code = "not refused in the window", None
    else:
        err, code = await refusal(ws, 5.0)
    out.update(
        refused_with=refused_with,
        kernel_queues_bytes=queues,
        refused_after_s=None if refused_at is None else round(refused_at, 2),
        disconnected_after_s=None if gone_at is None else round(gone_at, 2),
        client_got=(err, code),
        server_mem_mb_before=mem0,
    )
    return out


async def run(args) -> dict:
    srv = Server(args.transport, args.predictor, args.server_args.split())
    out: dict = {"transport": args.transport, "predictor": args.predictor, "good": args.good,
                 "rate_hz": args.rate, "server_pid": srv.proc.pid, "url": srv.url}  # fmt: skip
    rng = random.Random(args.seed)
    window = Window()
    stop = asyncio.Event()
    goods = [Good(i, rng, window) for i in range(args.good)]
    try:
        out["server_mem_mb_start"] = srv.rss_mb()
        for g in goods:
            await g.start(srv.url, args.rate, stop)
        await asyncio.sleep(1.0)  # every view filled, the first joins sent
        print(f"--- {args.transport}: {args.good} good players at {args.rate:g} Hz", flush=True)

        out["baseline"] = r = await measure(srv, window, "baseline", args.hostile_seconds)
        report("(i) baseline", r)

        work = hostile_window(srv.url, args.hostile_seconds, args.hostile_rate)
        out["hostile"] = r = await measure(srv, window, "hostile", args.hostile_seconds, work)
        report("(ii) hostile", r)
        h = r["hostile"]
        print(f"    hostile connections {h['connections']} by close code {h['by_close_code']}")
        for code in sorted(set(h["documented_errors"]) | set(r["protocol_errors"])):
            n, want = r["protocol_errors"].get(code, 0), h["documented_errors"].get(code, 0)
            if n != want:
                print(f"    SERVER COUNTED {n} {code}, the connections documented {want}")
        for what, n in h["not_as_documented"].items():
            print(f"    NOT AS DOCUMENTED x{n}: {what}")
        for what, n in h["client_failures"].items():
            print(f"    client failure x{n}: {what}")

        # the hostile window's detached avatars and closing connections go first
        await settle(srv, {"detached": 0, "pending": 0}, seconds=10.0)
        out["churn"] = []
        for k in range(args.churn_rounds):  # a second round tells high-water from a leak
            mem0 = srv.rss_mb()
            want = gauges(await metrics(srv))
            peaks_stop = asyncio.Event()
            peaks = asyncio.create_task(sample_peaks(srv, peaks_stop))
            work = churn(srv.url, args.churn, args.churn_concurrency)
            r = await measure(srv, window, f"churn{k}", 0.0, work)
            peaks_stop.set()
            r["peak"] = await peaks
            keys = ("players", "pending", "avatars", "rooms", "detached")
            after, waited = await settle(srv, {k: want[k] for k in keys}, seconds=10.0)
            r.update(before=want, after=after, settle_s=waited, server_mem_mb_before=mem0,
                     server_mem_mb_after=srv.rss_mb())  # fmt: skip
            out["churn"].append(r)
            c = r["hostile"]
            print(
                f"(iii) churn round {k + 1}: {c['connections']} in {c['wall_s']} s "
                f"({c['per_s']}/s) {c['outcomes']} failures {c['failures']}\n"
                f"    peak {fmt_counts(r['peak'])}\n    before {fmt_counts(want)}\n"
                f"    after  {fmt_counts(after)} (settled in {waited} s)\n"
                f"    server RSS {mem0['VmRSS']:.0f} -> "
                f"{r['server_mem_mb_after']['VmRSS']:.0f} MiB (peak "
                f"{r['server_mem_mb_after']['VmHWM']:.0f}); tick p50/p99 "
                f"{r['tick_ms']['p50']}/{r['tick_ms']['p99']} ms; errors {r['protocol_errors']}",
                flush=True,
            )

        out["slow"] = r = await slow_reader(srv, window, args.slow_seconds)
        report("(iv) never-reading client", r)
        print(
            f"    refused ({r['refused_with']}) after {r['refused_after_s']} s, disconnected "
            f"after {r['disconnected_after_s']} s; it got {r['client_got']}; kernel queues "
            f"(max bytes) {r['kernel_queues_bytes']}; server RSS "
            f"{r['server_mem_mb_before']['VmRSS']:.0f} -> {r['server_mem_mb']['VmRSS']:.0f} MiB; "
            f"tick p99 {r['tick_ms']['p99']} ms with it, {out['baseline']['tick_ms']['p99']} "
            "ms without"
        )
    finally:
        stop.set()
        await asyncio.gather(*(g.close() for g in goods if g.ws is not None))
        zero = {"players": 0, "pending": 0, "avatars": 0, "rooms": 0, "detached": 0}
        with contextlib.suppress(Exception):
            final, waited = await settle(srv, zero, seconds=10.0)
            out["final"] = {"gauges": final, "settle_s": waited, "server_mem_mb": srv.rss_mb()}
            print(f"final: {fmt_counts(final)} (settled in {waited} s)")
        out["good_clients_closed_early"] = {
            f"good{g.i}": (g.error, g.close_code) for g in goods if g.error or g.closed_early
        }
        out["server_exit"] = srv.stop()
        out["server_log"] = {
            "levels": dict(srv.levels),
            "tracebacks": srv.tracebacks,
            "error_lines": dict(srv.errors.most_common(10)),
        }
        print(f"server exit {out['server_exit']}; log lines {dict(srv.levels)}; "
              f"tracebacks {srv.tracebacks}")  # fmt: skip
        for line, n in srv.errors.most_common(10):
            print(f"    ERROR x{n}: {line}")
    return out


def fmt_counts(g: dict) -> str:
    return " ".join(f"{k}={v:g}" for k, v in g.items())


def report(title: str, r: dict) -> None:
    g = r["good"]
    print(
        f"{title}: {r['seconds']} s; tick p50/p99 {r['tick_ms']['p50']}/{r['tick_ms']['p99']} ms "
        f"({r['tick_ms']['n']} ticks), overruns {r['overruns']}; good frames "
        f"{g['fraction']} (min {g['min_fraction']}, {g['clients']} clients); dropped "
        f"{r['dropped_frames']}; server RSS {r['server_mem_mb']['VmRSS']:.0f} MiB; "
        f"protocol errors {r['protocol_errors']}",
        flush=True,
    )


@cli.command("bench/hostile.py")
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see ``--help``); 1 if it found a problem (printed), else 0."""
    ap = argparse.ArgumentParser(prog="bench/hostile.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--transport", default="websockets", choices=("websockets", "picows"))
    ap.add_argument("--predictor", default="gru", choices=("gru", "cv"))
    ap.add_argument("--good", type=int, default=50, help="well-behaved players")
    ap.add_argument("--rate", type=float, default=20.0, help="their pos rate, Hz")
    ap.add_argument("--hostile-seconds", type=float, default=20.0)
    ap.add_argument("--hostile-rate", type=float, default=20.0, help="connections a second")
    ap.add_argument("--churn", type=int, default=2000)
    ap.add_argument("--churn-concurrency", type=int, default=50)
    ap.add_argument("--churn-rounds", type=int, default=2, help="rounds of --churn each")
    ap.add_argument("--slow-seconds", type=float, default=10.0)
    ap.add_argument("--fuzz", type=int, default=200_000, help="frames for decode_client")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--server-args", default="", help="extra flags for python -m server")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args(argv)
    if args.good < 1 or args.rate <= 0 or args.hostile_seconds <= 0 or args.hostile_rate <= 0:
        ap.error("need --good >= 1 and positive --rate, --hostile-seconds, --hostile-rate")
    global LIMITS, HOSTILE
    LIMITS = Config.from_args([*SERVER_FLAGS, *args.server_args.split()])  # as the server's
    HOSTILE = hostile_kinds(LIMITS)
    from server.serve.runner import run as run_loop

    out = run_loop(run(args))
    if args.fuzz > 0:
        out["fuzz"] = f = fuzz(args.fuzz, args.seed)
        print(
            f"fuzz: {f['frames']} frames in {f['wall_s']} s (seed {f['seed']}); accepted "
            f"{f['accepted']}; protocol errors {f['protocol_errors']}; other exceptions "
            f"{f['other_exceptions'] or 'none'}; round-trip mismatches "
            f"{f['roundtrip_mismatches']}; RSS {f['rss_mb_before']} -> {f['rss_mb_after']} MiB "
            f"(peak growth {f['peak_rss_growth_mb']} MiB)"
        )
    out["problems"] = problems(out)
    for p in out["problems"]:
        print(f"PROBLEM: {p}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    return 1 if out["problems"] else 0


def problems(out: dict) -> list[str]:
    """What broke a documented promise or looks like a server bug (exit status 1 if any)."""
    found = []
    windows = [("baseline", out.get("baseline")), ("hostile", out.get("hostile")),
               ("slow", out.get("slow"))]  # fmt: skip
    windows += [(f"churn{k}", r) for k, r in enumerate(out.get("churn", []))]
    for name, r in windows:
        if r is None:
            continue
        if r["tick_errors"]:
            found.append(f"{name}: {r['tick_errors']} tick errors")
        if r["protocol_errors"].get("internal_error"):
            found.append(f"{name}: {r['protocol_errors']['internal_error']} internal_error")
        frac = r["good"]["min_fraction"]
        if frac is not None and frac < 0.95:
            found.append(f"{name}: a good client got {frac:.1%} of its frames")
    h = (out.get("hostile") or {}).get("hostile", {})
    if h and h["documented_errors"] != out["hostile"]["protocol_errors"]:
        found.append(
            f"hostile: the server counted {out['hostile']['protocol_errors']}, the "
            f"connections' documented errors are {h['documented_errors']}"
        )
    for what, n in {**h.get("not_as_documented", {}), **h.get("client_failures", {})}.items():
        found.append(f"hostile x{n}: {what}")
    for k, r in enumerate(out.get("churn", [])):
        if r["hostile"]["failures"]:
            found.append(f"churn round {k + 1}: client failures {r['hostile']['failures']}")
        if r["after"] != r["before"]:
            found.append(f"churn round {k + 1}: {r['after']} after, {r['before']} before")
    final = out.get("final", {}).get("gauges")
    if final is None or any(final.values()):
        found.append(f"final: not back to zero: {final}")
    if out.get("good_clients_closed_early"):
        found.append(f"good clients closed: {out['good_clients_closed_early']}")
    log = out.get("server_log", {})
    if log.get("tracebacks"):
        found.append(f"server log: {log['tracebacks']} tracebacks")
    if out.get("server_exit") != 0:
        found.append(f"server exit status {out.get('server_exit')}")
    f = out.get("fuzz")
    if f and (f["other_exceptions"] or f["roundtrip_mismatches"]):
        found.append(f"fuzz: {f['other_exceptions']}, {f['roundtrip_mismatches']} round trips")
    return found


if __name__ == "__main__":
    sys.exit(main())
