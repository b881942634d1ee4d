"""The live demo: simulated avatars as real WebSocket clients, render error measured live.

    python -m client_demo [--url ws://HOST:PORT/] [--bots 16] [--duration 20] [--send-rate 10]
                          [--latency 0.1] [--send-policy fixed|threshold] [--json OUT]

With no --url it starts an embedded server (the shipped model) on --port and prints the
browser viewer's URL. Each bot follows the training simulator's motion (sampled at 60 Hz
locally), sends positions by its send policy through an emulated one-way --latency (both
directions: a loopback proxy delays every byte, `client_demo.netem`), and, as an observer, draws every other bot by four methods at once: hold,
snapshot interpolation (100 ms behind), constant-velocity dead reckoning from the received
samples, and the GRU's predicted paths (with --protocol 2, the default, the server sends
an avatar's path only when it changed, so only "gru" is scored: the other methods need
every sample; --protocol 1 scores all four). The bots know each other's true positions, so the
render error of each method is measured live (30 Hz per observer, horizontal distance)
and printed once a second. The second after a teleport (a true jump faster than 20 m/s,
which no method can foresee) is left out of `render_error` for every method alike, as
in the offline evaluation; `render_error_all` keeps it. --duration 0 runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from client_demo.client import AvatarClient, Refused
from client_demo.netem import LatencyProxy
from client_demo.reckoning import DeadReckoner, FixedRate, SendPolicy, ThresholdPolicy
from server import cli, runner
from server import protocol as P
from training.simulate import SimConfig, simulate

METHODS = ("gru", "cv", "hold", "interp")
SEGMENT = 120.0  # seconds of simulated motion per batch; the next one is made in a thread
TELEPORT_SPEED = 20.0  # m/s: a faster true jump is a teleport (the server's reset rule)
SETTLE = 1.0  # seconds after a teleport left out of render_error (kept in render_error_all)


class Motion:
    """True positions of every bot at any local time, simulated in segments as time goes on.

    A segment boundary is a teleport for each bot (a jump the reckoners must handle anyway).
    """

    def __init__(
        self, n: int, seed: int, world: float, t0: float, segment: float = SEGMENT
    ) -> None:
        self.n, self.seed, self.world, self.t0, self.segment = n, seed, world, t0, segment
        self.segments: dict[int, list] = {0: self._make(0)}
        self._next: asyncio.Task | None = None

    def _make(self, k: int) -> list:
        cfg = SimConfig(world_size=self.world, teleport_per_min=0.2)
        return simulate(self.n, self.segment + 1.0, seed=self.seed + 7919 * k, config=cfg)

    def prefetch(self, now: float) -> None:
        """Start making the next segment in a thread once the current one is half used."""
        k = int((now - self.t0) // self.segment)
        half_used = (now - self.t0) % self.segment > self.segment / 2
        idle = self._next is None or self._next.done()
        if half_used and k + 1 not in self.segments and idle:
            self._next = asyncio.ensure_future(self._fill(k + 1))
        for old in [j for j in self.segments if j < k]:
            del self.segments[old]

    async def _fill(self, k: int) -> None:
        self.segments[k] = await asyncio.to_thread(self._make, k)

    def at(self, i: int, now: float) -> np.ndarray:
        k, tau = divmod(max(0.0, now - self.t0), self.segment)
        seg = self.segments.get(int(k)) or self.segments[max(self.segments)]  # late prefetch: stay
        p = seg[i].truth_at(np.array([tau]))[0]
        return np.nan_to_num(p)

    def all_at(self, now: float) -> np.ndarray:
        return np.stack([self.at(i, now) for i in range(self.n)])


@dataclass
class Bot:
    index: int
    name: str
    client: AvatarClient
    policy: SendPolicy
    reckoners: dict[str, DeadReckoner] = field(default_factory=dict)
    seq: int = 0
    sent: int = 0


class ErrorStats:
    """Count, mean and quantiles of render errors in bounded memory (1 mm bins up to 20 m)."""

    BIN = 0.001
    BINS = 20_000

    def __init__(self) -> None:
        self.hist = np.zeros(self.BINS + 1, dtype=np.int64)  # the last bin: 20 m and beyond
        self.total = 0.0

    def add(self, err: np.ndarray) -> None:
        idx = np.minimum((err / self.BIN).astype(np.int64), self.BINS)
        self.hist += np.bincount(idx, minlength=self.BINS + 1)
        self.total += float(err.sum())

    @property
    def n(self) -> int:
        return int(self.hist.sum())

    def summary(self) -> dict[str, float | int | None]:
        n = self.n
        if not n:
            return {"mean": None, "p95": None, "n": 0}
        k = int(np.searchsorted(np.cumsum(self.hist), 0.95 * n))
        return {"mean": self.total / n, "p95": (k + 0.5) * self.BIN, "n": n}


class Meter:
    """Render errors per method: all scored ones, the last second's, and with teleports."""

    def __init__(self) -> None:
        self.errors = {m: ErrorStats() for m in METHODS}
        self.recent = {m: ErrorStats() for m in METHODS}
        self.everything = {m: ErrorStats() for m in METHODS}  # teleport windows included

    def add(self, method: str, err: np.ndarray, counted: np.ndarray) -> None:
        self.everything[method].add(err)
        self.errors[method].add(err[counted])
        self.recent[method].add(err[counted])

    def take_recent(self, method: str) -> dict:
        out = self.recent[method].summary()
        self.recent[method] = ErrorStats()
        return out


async def run_bot(bot: Bot, motion: Motion, t_end: float, stop: asyncio.Event) -> None:
    period = 1 / 60  # local sampling of the true motion; the policy decides what is sent
    loop = asyncio.get_running_loop()
    start, k = loop.time(), 0
    while not stop.is_set() and (t_end <= 0 or loop.time() < t_end):
        k += 1
        await asyncio.sleep(max(0.0, start + k * period - loop.time()))
        now = time.monotonic()
        p = motion.at(bot.index, now)
        if bot.policy.should_send(now, p):
            bot.seq += 1
            bot.client.send_pos(bot.seq, now, p)
            bot.policy.sent(now, p, bot.seq)
            bot.sent += 1


async def observe(bot: Bot, horizons: np.ndarray) -> None:
    """Feed every received prediction to the bot's four reckoners (and its own to its policy)."""
    c = bot.client
    async for msg in c:
        if isinstance(msg, P.Welcome):  # a reconnect: views start afresh
            for r in bot.reckoners.values():
                for key in list(r.keys()):
                    r.remove(key)
            continue
        if isinstance(msg, P.Leave):
            for a in msg.avatars:
                for r in bot.reckoners.values():
                    r.remove(a)
            continue
        if not isinstance(msg, P.State):
            continue
        now_server = c.clock.to_server(time.monotonic())
        anchors = msg.server_time - msg.age
        for j, h in enumerate(msg.handle.tolist()):
            name = c.names.get(h)
            if name is None:
                continue
            pos, off = msg.pos[j].astype(np.float64), msg.offsets[j].astype(np.float64)
            if name == bot.name:
                if isinstance(bot.policy, ThresholdPolicy):
                    bot.policy.on_own_path(c.clock.to_local(anchors[j]), pos, off, int(msg.seq[j]))
                continue
            for r in bot.reckoners.values():
                r.update(name, float(anchors[j]), pos, off, now_server)


async def measure(bots: list[Bot], motion: Motion, meter: Meter, t_from: float, stop) -> None:
    """30 times a second: every observer draws every other bot by each method; score vs truth."""
    index = {b.name: b.index for b in bots}
    loop = asyncio.get_running_loop()
    start, k = loop.time(), 0
    prev, prev_t = None, 0.0
    settle_until = np.zeros(len(bots))  # after a teleport, nobody can know where it went
    while not stop.is_set():
        k += 1
        await asyncio.sleep(max(0.0, start + k / 30 - loop.time()))
        now = time.monotonic()
        motion.prefetch(now)
        truth = motion.all_at(now)
        if prev is not None:
            speed = np.linalg.norm(truth - prev, axis=1) / max(now - prev_t, 1e-6)
            settle_until[speed > TELEPORT_SPEED] = now + SETTLE
        prev, prev_t = truth, now
        if now < t_from:
            continue
        for b in bots:
            if not b.client.clock.ready:
                continue
            t_server = b.client.clock.to_server(now)
            for m, r in b.reckoners.items():
                keys = list(r.keys())
                if not keys:
                    continue
                drawn = r.positions_at(keys, t_server)
                rows = [index[key] for key in keys]
                err = np.linalg.norm((drawn - truth[rows])[:, :2], axis=1)
                meter.add(m, err, settle_until[rows] <= now)


def make_policy(args, horizons) -> SendPolicy:
    if args.send_policy == "fixed":
        return FixedRate(args.send_rate)
    return ThresholdPolicy(
        threshold=args.threshold,
        heartbeat=args.heartbeat,
        min_interval=1.0 / args.max_rate,
        horizons=horizons,
    )


def table(meter: Meter, bots: list[Bot], elapsed: float) -> Table:
    """The live table: traffic per bot and render error per method."""
    up = sum(b.sent for b in bots) / max(elapsed, 1e-9) / len(bots)
    down = sum(b.client.bytes_in for b in bots) / max(elapsed, 1e-9) / len(bots)
    frames = sum(b.client.frames_in for b in bots) / max(elapsed, 1e-9) / len(bots)
    recs = sum(b.client.records_in for b in bots) / max(elapsed, 1e-9) / len(bots)
    t = Table(
        title=f"t = {elapsed:.0f} s · per bot: uplink {up:.1f} msg/s · "
        f"downlink {down / 1000:.1f} kB/s · {frames:.1f} frames/s · {recs:.0f} records/s",
        title_justify="left",
    )
    for col in ("method", "mean (m)", "p95 (m)", "last second mean (m)"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for m in METHODS:
        if m not in bots[0].reckoners:
            continue
        s, r = meter.errors[m].summary(), meter.take_recent(m)
        if s["n"]:
            last = f"{r['mean']:.3f}" if r["n"] else "-"
            t.add_row(m, f"{s['mean']:.3f}", f"{s['p95']:.3f}", last)
    return t


async def demo(args) -> dict:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    server = server_task = None
    if args.url is not None:
        await cli.probe(args.url)  # fail fast, naming the URL (not after the retries)
    t0 = time.monotonic()
    short = 0 < args.duration + args.warmup < SEGMENT - 10  # a short run needs one short segment
    segment = args.duration + args.warmup + 10 if short else SEGMENT
    motion = Motion(args.bots, args.seed, args.world, t0, segment)
    url = args.url
    if url is None:
        from server.app import AvatarServer
        from server.config import Config

        cfg = Config(
            host=args.host, port=args.port, tick_hz=args.tick_hz, model=args.model,
            predictor=args.predictor, device=args.device, log_level="warning",
            dr_threshold=args.dr_threshold, dr_heartbeat=args.dr_heartbeat,
        )  # fmt: skip
        server = AvatarServer(cfg)
        server_task = asyncio.create_task(server.serve())
        started = asyncio.create_task(server.started.wait())
        await asyncio.wait([server_task, started], return_when=asyncio.FIRST_COMPLETED)
        if server_task.done():
            server_task.result()
        url = server.url
        server.add_route(
            "/demo/truth", lambda path: truth_route(server, motion, bots, path, args.room)
        )
        print(f"viewer: http://{url.split('//')[1].rstrip('/')}/?room={args.room}", flush=True)
    bots: list[Bot] = []
    proxy = None
    try:
        bot_url = url
        if args.latency > 0:  # every byte both ways, WebSocket pings included
            parsed = urlsplit(url)
            proxy = LatencyProxy(parsed.hostname, parsed.port or 80, args.latency)
            await proxy.start()
            bot_url = f"ws://127.0.0.1:{proxy.port}{parsed.path or '/'}"
        clients = [
            AvatarClient(bot_url, args.room, f"bot{i:02d}", max_attempts=5, version=args.protocol)
            for i in range(args.bots)
        ]
        results = await asyncio.gather(*(c.connect() for c in clients), return_exceptions=True)
        for i, (client, welcome) in enumerate(zip(clients, results, strict=True)):
            if isinstance(welcome, BaseException):
                await asyncio.gather(*(c.close() for c in clients))
                if isinstance(welcome, Refused) or cli.describe(welcome) is None:
                    raise welcome
                raise cli.UserError(
                    f"cannot join {url}: {cli.first_line(welcome)}",
                    "is it an avatar-stream server? check --url",
                ) from welcome
            horizons = np.asarray(welcome.horizons)
            bot = Bot(i, client.avatar, client, make_policy(args, horizons))
            methods = METHODS if welcome.v == 1 else ("gru",)  # v2: only paths, not samples
            bot.reckoners = {
                m: DeadReckoner(horizons, m, convergence=args.convergence) for m in methods
            }
            bots.append(bot)
        model = bots[0].client.welcome.model if bots else "?"
        print(f"{len(bots)} bots in room {args.room!r} at {url} (model {model}); "
              f"latency {args.latency * 1000:.0f} ms, policy {args.send_policy}", flush=True)  # fmt: skip
        t_start = time.monotonic()
        t_end = loop.time() + args.duration if args.duration > 0 else 0.0
        tasks = [asyncio.create_task(run_bot(b, motion, t_end, stop)) for b in bots]
        tasks += [asyncio.create_task(observe(b, horizons)) for b in bots]
        meter = Meter()
        meter_task = asyncio.create_task(measure(bots, motion, meter, t_start + args.warmup, stop))
        console = Console()
        live = Live(console=console, auto_refresh=False) if console.is_terminal else None
        n = 0
        with live or contextlib.nullcontext():
            while not stop.is_set() and (args.duration <= 0 or n < args.duration):
                n += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, t_start + n - time.monotonic()))
                if args.quiet:
                    continue
                tab = table(meter, bots, time.monotonic() - t_start)
                if live is not None:
                    live.update(tab, refresh=True)  # redrawn in place once a second
                elif n % 5 == 0 or n == args.duration:
                    console.print(tab)  # not a terminal: every 5 s
        elapsed = time.monotonic() - t_start
        stop.set()
        meter_task.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(meter_task, *tasks, return_exceptions=True)
    finally:
        await asyncio.gather(*(b.client.close() for b in bots), return_exceptions=True)
        if proxy is not None:
            await proxy.close()
        if server is not None:
            server.request_shutdown()
            await server_task
    counted = max(elapsed - args.warmup, 0.0)
    scored = [m for m in METHODS if not bots or m in bots[0].reckoners]
    return {
        "render_error": {m: meter.errors[m].summary() for m in scored},
        "render_error_all": {m: meter.everything[m].summary() for m in scored},
        "uplink_msgs_per_s": sum(b.sent for b in bots) / elapsed / len(bots),
        "downlink_bytes_per_s": sum(b.client.bytes_in for b in bots) / elapsed / len(bots),
        "downlink_frames_per_s": sum(b.client.frames_in for b in bots) / elapsed / len(bots),
        "downlink_records_per_s": sum(b.client.records_in for b in bots) / elapsed / len(bots),
        "protocol": bots[0].client.welcome.v if bots else args.protocol,
        "bots": len(bots),
        "duration_s": elapsed,
        "scored_s": counted,
        "latency_s": args.latency,
        "send_policy": args.send_policy,
        "send_rate": args.send_rate if args.send_policy == "fixed" else None,
        "threshold_m": args.threshold if args.send_policy == "threshold" else None,
        "model": model,
        "reconnects": sum(b.client.connects - 1 for b in bots),
    }


def truth_route(
    server, motion: Motion, bots: list[Bot], path: str, room: str
) -> tuple[int, str, bytes]:
    """GET /demo/truth?room=R: every bot's true position now (for the viewer); 404 elsewhere."""
    if parse_qs(urlsplit(path).query).get("room", [room])[0] != room:
        return 404, "text/plain; charset=utf-8", b"no demo bots in that room\n"
    now = time.monotonic()
    body = {
        "server_time": server.clock(),
        "avatars": {b.name: [round(float(v), 4) for v in motion.at(b.index, now)] for b in bots},
    }
    return 200, "application/json", json.dumps(body).encode()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m client_demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--url", type=cli.ws_url, help="server to use (default: start an embedded one)")
    ap.add_argument("--host", default="127.0.0.1", help="embedded server: interface")
    ap.add_argument("--port", type=int, default=8765, help="embedded server: port (0: any free)")
    ap.add_argument("--tick-hz", type=float, default=20.0, help="embedded server: tick rate")
    ap.add_argument("--model", help="embedded server: checkpoint (default: the shipped one)")
    ap.add_argument("--predictor", choices=("gru", "cv"), default="gru", help="embedded server")
    ap.add_argument("--device", default="auto", help="embedded server: auto, cpu, cuda")
    ap.add_argument("--room", default="demo")
    ap.add_argument(
        "--protocol",
        type=int,
        choices=P.VERSIONS,
        default=P.VERSION,
        help="2: the server sends a path only when it changed (downlink dead reckoning); "
        "1: every avatar every tick",
    )
    ap.add_argument(
        "--dr-threshold", type=float, default=0.02, help="embedded server: resend threshold, m"
    )
    ap.add_argument(
        "--dr-heartbeat", type=float, default=1.0, help="embedded server: resend heartbeat, s"
    )
    ap.add_argument("--bots", type=int, default=16, help="simulated avatars, one client each")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds; 0 = until Ctrl-C")
    ap.add_argument("--send-rate", type=float, default=10.0, help="fixed policy: pos per second")
    ap.add_argument(
        "--latency", type=float, default=0.1, help="added one-way latency each way, seconds"
    )
    ap.add_argument("--send-policy", choices=("fixed", "threshold"), default="fixed")
    ap.add_argument("--threshold", type=float, default=0.1, help="threshold policy: metres")
    ap.add_argument("--heartbeat", type=float, default=1.0, help="threshold policy: seconds")
    ap.add_argument("--max-rate", type=float, default=30.0, help="threshold policy: most pos/s")
    ap.add_argument(
        "--convergence", type=float, default=0.1, help="seconds to blend to a new path (gru, cv)"
    )
    ap.add_argument("--world", type=float, default=40.0, help="side of the simulated world, m")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds before render errors count")
    ap.add_argument("--json", help="write the final figures here")
    ap.add_argument("--quiet", action="store_true", help="no per-second table")
    return ap


@cli.command("python -m client_demo")
def main(argv: list[str] | None = None) -> dict:
    """Run the demo (see ``--help``); returns the figures it printed / wrote.

    A user's mistake (a server that is not there or refuses, a bad checkpoint or device for
    the embedded one) exits with one line on stderr (`server.cli`).
    """
    ap = build_parser()
    args = ap.parse_args(argv)
    positive = ("bots", "send_rate", "threshold", "heartbeat", "max_rate", "tick_hz", "world")
    for name in positive:
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be > 0")
    for name in ("duration", "latency", "convergence", "warmup"):
        if not getattr(args, name) >= 0:
            ap.error(f"--{name} must be >= 0")
    if not 0 <= args.port <= 65535:
        ap.error("--port must be 0..65535")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.url is None:  # the embedded server: its device and checkpoint, checked first
        cli.check_device(args.device)
        if args.predictor == "gru":
            cli.load_model(args.model, "cpu")
    try:
        out = runner.run(demo(args))
    except Refused as e:
        raise cli.UserError(
            f"refused by the server at {args.url or 'the embedded server'}: {e}",
            "check --room and the server's settings",
        ) from None
    print(json.dumps(out["render_error"], indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
