"""The live demo: simulated avatars as real WebSocket clients, render error measured live.

    python -m client_demo [--url ws://HOST:PORT/] [--bots 16] [--duration 20] [--send-rate 10]
                          [--latency 0.1] [--send-policy fixed|threshold] [--json OUT]

With no --url it starts an embedded server (the shipped model) on --port and prints the
browser viewer's URL. Each bot follows the training simulator's motion (sampled at 60 Hz
locally) and sends positions by its send policy through an emulated one-way --latency
(both directions: a loopback proxy delays every byte, `client_demo.netem`). As an
observer it draws every other bot five ways at once, from two feeds:

- gru: the server's predicted paths as served to the bot's own connection (--protocol 2,
  the default: an avatar's path only when it changed; 1: every avatar every tick);
- kalman, cv, interp, hold: what a client of a plain relay gets, every position of every
  avatar in view at the tick rate. Each bot has a second connection for it, a protocol 1
  spectator (same latency) whose samples are used and whose GRU offsets are ignored:
  a Kalman filter per remote avatar (`training.baselines.KalmanCV`, tuned on held-out
  users of the same simulator as `training.evaluate` tunes it, or --kalman-q/--kalman-r),
  constant velocity from the last two samples, snapshot interpolation 100 ms behind,
  and the newest sample.

Every method is scored at the same draw instants on the same (observer, avatar) pairs
(30 Hz per observer, horizontal distance to the true position, which the bots know); a
pair counts only while every method can draw it, so every method has the same n. The
second after a teleport (a true jump faster than 20 m/s, which no method can foresee) is
left out of `render_error` for every method alike, as in the offline evaluation;
`render_error_all` keeps it. `downlink` is what each method costs per receiver: the gru
feed as received, and for the classical methods the frames a plain relay would send the
bot (its view, at the tick rate, a record without offsets: 20 bytes). The table is
printed once a second and served at /demo/compare (the viewer shows it). --duration 0
runs until Ctrl-C.
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
from client_demo.kalman_paths import KalmanPaths
from client_demo.netem import LatencyProxy
from client_demo.reckoning import DeadReckoner
from client_demo.send_policy import FixedRate, SendPolicy, ThresholdPolicy
from server import cli
from server.core import protocol as P
from server.serve import runner
from training.baselines import KalmanCV
from training.realmotion import Scene, thin_to_ticks
from training.simulate import SimConfig, simulate

METHODS = ("gru", "kalman", "cv", "interp", "hold")
CLASSICAL = METHODS[1:]  # drawn from the relay feed (every sample)
RELAY_RECORD = 20  # bytes: handle, age, seq, pos: a state record without the GRU's offsets
TUNE_USERS, TUNE_SECONDS, TUNE_SEED = 16, 30.0, 104_729  # held-out users for the Kalman tuning
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
    client: AvatarClient  # the bot's own connection: its avatar, and the gru feed
    policy: SendPolicy
    relay: AvatarClient | None = None  # a protocol 1 spectator: the relay feed
    reckoners: dict[str, DeadReckoner] = field(default_factory=dict)  # one per METHODS
    kalman: KalmanPaths | None = None  # the Kalman filters behind reckoners["kalman"]
    seq: int = 0
    sent: int = 0
    relay_bytes: int = 0  # the state frames a plain relay would send this bot (its view)
    relay_records: int = 0
    view_bytes: int = 0  # the join/leave frames of its view (a relay sends them too)


class ErrorStats:
    """Count, mean and quantiles of render errors in bounded memory (1 mm bins up to 20 m)."""

    BIN = 0.001
    BINS = 20_000

    def __init__(self) -> None:
        self.hist = np.zeros(self.BINS + 1, dtype=np.int64)  # the last bin: 20 m and beyond
        self.total = 0.0

    def add(self, err: np.ndarray) -> None:
        idx = np.minimum((err / self.BIN).astype(np.int64), self.BINS)
        if len(idx) > 1000:
            self.hist += np.bincount(idx, minlength=self.BINS + 1)
        else:  # a tick's draws: no pass over every bin
            np.add.at(self.hist, idx, 1)
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


async def observe(bot: Bot) -> None:
    """The gru feed: every received path to the gru reckoner (and the bot's own to its policy)."""
    c, gru = bot.client, bot.reckoners["gru"]
    async for msg in c:
        if isinstance(msg, P.Welcome):  # a reconnect: views start afresh
            for key in list(gru.keys()):
                gru.remove(key)
            continue
        if isinstance(msg, P.Join | P.Leave):
            encode = P.encode_join if isinstance(msg, P.Join) else P.encode_leave
            bot.view_bytes += len(encode(msg.avatars, msg.handles))
            if isinstance(msg, P.Leave):
                for a in msg.avatars:
                    gru.remove(a)
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
            gru.update(name, float(anchors[j]), pos, off, now_server)


def relay_frame_bytes(tick: int, server_time: float, n: int) -> int:
    """Size of a plain relay's `state` frame with `n` records: the v1 frame without offsets."""
    return len(P.StateFramer(tick, server_time, 0, 2).frame(n, bytes(RELAY_RECORD * n)))


async def observe_relay(bot: Bot) -> None:
    """The relay feed: every new sample to the classical reckoners (offsets ignored).

    The spectator sees the whole room; it stands for a plain relay that sends the bot its
    own view (the avatars of its gru connection's view, itself included as v1 does) every
    tick: only those are drawn (an avatar starts afresh when it enters the view again)
    and counted in the relay's records and bytes.
    """
    c, kf = bot.relay, bot.kalman
    assert c is not None and kf is not None
    plain = [bot.reckoners[m] for m in CLASSICAL if m != "kalman"]
    kalman = bot.reckoners["kalman"]
    classical = [*plain, kalman]
    last_seq: dict[str, int] = {}
    async for msg in c:
        if isinstance(msg, P.Welcome):  # a reconnect: start afresh
            for r in classical:
                for key in list(r.keys()):
                    r.remove(key)
            kf.clear()
            last_seq.clear()
            continue
        if isinstance(msg, P.Leave):
            for a in msg.avatars:
                for r in classical:
                    r.remove(a)
                kf.remove(a)
                last_seq.pop(a, None)
            continue
        if not isinstance(msg, P.State):
            continue
        now_server = bot.client.clock.to_server(time.monotonic())  # the one clock of the bot
        view = set(bot.client.names.values())
        for key in [k for k in kalman.keys() if k not in view]:  # noqa: SIM118 (not a dict)
            for r in classical:  # it left the view: a relay would have sent its leave
                r.remove(key)
            kf.remove(key)
            last_seq.pop(key, None)
        keys, rows, shown = [], [], 0
        for j, h in enumerate(msg.handle.tolist()):
            name = c.names.get(h)
            if name is None or name not in view:
                continue
            shown += 1
            seq = int(msg.seq[j])
            if name != bot.name and last_seq.get(name) != seq:  # a repeat changes nothing
                last_seq[name] = seq
                keys.append(name)
                rows.append(j)
        bot.relay_records += shown
        bot.relay_bytes += relay_frame_bytes(msg.tick, msg.server_time, shown)
        if not keys:
            continue
        anchors = (msg.server_time - msg.age)[rows]
        pos = msg.pos[rows].astype(np.float64)
        for i, key in enumerate(keys):
            for r in plain:
                r.update(key, float(anchors[i]), pos[i], None, now_server)
        new, offsets = kf.update(keys, anchors, pos)
        for i, off in zip(new, offsets, strict=True):
            kalman.update(keys[i], float(anchors[i]), pos[i], off, now_server)


def score_draw(
    bots: list[Bot], index: dict[str, int], truth: np.ndarray, counted: np.ndarray, now: float,
    meter: Meter,
) -> int:  # fmt: skip
    """One draw: every observer draws every other bot by each method at the same instant
    (its clock's server time for `now`, local); each error is against `truth` (rows by
    `index`), counted in render_error where `counted` (teleport settle) is true. Only the
    pairs every method can draw are scored: one row of errors per pair, with every method.
    Returns the number of pairs scored."""
    errs: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    masks = []
    for b in bots:
        if not b.client.clock.ready:
            continue
        gru, others = b.reckoners["gru"], [b.reckoners[m] for m in CLASSICAL]
        keys = [
            key
            for key in gru.keys()  # noqa: SIM118 (not a dict)
            if key in index and all(key in r for r in others)
        ]
        if not keys:
            continue
        t_server = b.client.clock.to_server(now)  # one draw instant for every method
        rows = [index[key] for key in keys]
        masks.append(counted[rows])
        for m in METHODS:
            drawn = b.reckoners[m].positions_at(keys, t_server)
            errs[m].append(np.linalg.norm((drawn - truth[rows])[:, :2], axis=1))
    if not masks:
        return 0
    mask = np.concatenate(masks)
    for m in METHODS:
        meter.add(m, np.concatenate(errs[m]), mask)
    return len(mask)


async def measure(bots: list[Bot], motion: Motion, meter: Meter, t_from: float, stop) -> None:
    """30 times a second: `score_draw` against the true positions now."""
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
        if now >= t_from:
            score_draw(bots, index, truth, settle_until <= now, now, meter)


def make_policy(args, horizons) -> SendPolicy:
    if args.send_policy == "fixed":
        return FixedRate(args.send_rate)
    return ThresholdPolicy(
        threshold=args.threshold,
        heartbeat=args.heartbeat,
        min_interval=1.0 / args.max_rate,
        horizons=horizons,
    )


def tune_kalman(args, horizons: np.ndarray, tick_hz: float) -> KalmanCV:
    """The Kalman filter tuned as `training.evaluate` tunes its baseline (`KalmanCV.tune`:
    the (q, r) grid, mean error over every sample and horizon) on what the relay would
    deliver from held-out users of the demo's simulator: their motion sampled at 60 Hz,
    sent by the demo's send policy, thinned to the newest sample per server tick."""
    cfg = SimConfig(world_size=args.world, teleport_per_min=0.2)
    tracks = simulate(TUNE_USERS, TUNE_SECONDS, seed=args.seed + TUNE_SEED, config=cfg)
    seen = []
    for tr in tracks:
        t = np.arange(tr.start, tr.end, 1 / 60)
        p = tr.truth_at(t)
        policy, keep = make_policy(args, horizons), []
        for k in range(len(t)):
            if np.isfinite(p[k]).all() and policy.should_send(t[k], p[k]):
                policy.sent(t[k], p[k], k)
                keep.append(k)
        seen.append(tr.observed(t[keep], p[keep]))
    return KalmanCV.tune(thin_to_ticks(Scene("tune", seen), 1.0 / tick_hz).tracks, horizons)


def scoreboard(meter: Meter, bots: list[Bot], elapsed: float) -> list[dict]:
    """One row per method: its feed, render error (mean, p95, n) and downlink per receiver
    (kB/s, records/s; None before any time has passed)."""
    per = len(bots) * elapsed
    gru_v = bots[0].client.welcome.v if bots and bots[0].client.welcome else None

    def rate(total: float, scale: float = 1.0) -> float | None:
        return total / per / scale if per > 0 else None

    gru_bytes = sum(b.client.bytes_in for b in bots)
    relay_bytes = sum(b.relay_bytes + b.view_bytes for b in bots)
    rows = []
    for m in METHODS:
        s = meter.errors[m].summary()
        gru = m == "gru"
        rows.append(
            {
                "method": m,
                "feed": f"v{gru_v}" if gru else "relay",
                **s,
                "kB_per_s": rate(gru_bytes if gru else relay_bytes, 1000.0),
                "records_per_s": rate(
                    sum(b.client.records_in if gru else b.relay_records for b in bots)
                ),
            }
        )
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(meter: Meter, bots: list[Bot], elapsed: float, kalman: KalmanCV | None) -> Table:
    """The live table: one row per method, render error and downlink per receiver."""
    up = sum(b.sent for b in bots) / max(elapsed, 1e-9) / len(bots)
    rows = scoreboard(meter, bots, elapsed)
    n = rows[0]["n"]
    kf = f" · kalman q {kalman.q:.3g} r {kalman.r:.3g}" if kalman is not None else ""
    t = Table(
        title=f"t = {elapsed:.0f} s · {len(bots)} bots · {n:,} draws each · uplink {up:.1f} msg/s",
        title_justify="left",
        caption=f"render error in m vs truth, the same draws for every method;\n"
        f"downlink per receiver{kf}",
        caption_justify="left",
    )
    cols = ("method", "feed", "mean", "p95", "last 1 s", "x gru", "kB/s", "rec/s")
    for col in cols:
        t.add_column(col, justify="left" if col in ("method", "feed") else "right")
    g = rows[0]["mean"]
    for r in rows:
        last = meter.take_recent(r["method"])
        ratio = r["mean"] / g if r["mean"] is not None and g else None
        t.add_row(
            r["method"],
            r["feed"],
            _fmt(r["mean"], ".3f"),
            _fmt(r["p95"], ".3f"),
            _fmt(last["mean"], ".3f"),
            _fmt(ratio, ".2f"),
            _fmt(r["kB_per_s"], ".1f"),
            _fmt(r["records_per_s"], ".0f"),
        )
    return t


def raise_join_error(url: str, e: BaseException):
    """Re-raise a failed join: a refusal as it is, anything else as a user's error."""
    if isinstance(e, Refused) or cli.describe(e) is None:
        raise e
    raise cli.UserError(
        f"cannot join {url}: {cli.first_line(e)}", "is it an avatar-stream server? check --url"
    ) from e


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
    bots: list[Bot] = []
    meter = Meter()
    started_at: list[float] = []  # when scoring started (for the /demo/compare route)
    url = args.url
    if url is None:
        from server.serve.app import AvatarServer
        from server.serve.config import Config

        cfg = Config(
            host=args.host, port=args.port, tick_hz=args.tick_hz, model=args.model,
            predictor=args.predictor, device=args.device, log_level="warning",
            dr_threshold=args.dr_threshold, dr_heartbeat=args.dr_heartbeat,
            dr_lookahead=args.dr_lookahead,
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
        server.add_route(
            "/demo/compare",
            lambda path: compare_route(meter, bots, started_at, path, args.room),
        )
        print(f"viewer: http://{url.split('//')[1].rstrip('/')}/?room={args.room}", flush=True)
    proxy = None
    kalman = None
    try:
        bot_url = url
        if args.latency > 0:  # every byte both ways, WebSocket pings included
            parsed = urlsplit(url)
            proxy = LatencyProxy(parsed.hostname, parsed.port or 80, args.latency)
            await proxy.start()
            bot_url = f"ws://127.0.0.1:{proxy.port}{parsed.path or '/'}"
        if args.kalman_q > 0 and args.kalman_r > 0:
            kalman = KalmanCV(q=args.kalman_q, r=args.kalman_r)
        else:  # tuned before the bots connect, so that no frame waits for it
            probe = AvatarClient(bot_url, args.room, None, max_attempts=5, version=1)
            try:
                seen = await probe.connect()
            except Exception as e:
                raise_join_error(url, e)
            finally:
                await probe.close()
            horizons = np.asarray(seen.horizons)
            kalman = await asyncio.to_thread(tune_kalman, args, horizons, seen.tick_hz)
        clients = [
            AvatarClient(bot_url, args.room, f"bot{i:02d}", max_attempts=5, version=args.protocol)
            for i in range(args.bots)
        ]
        relays = [  # the relay feed: a v1 spectator per bot, behind the same latency
            AvatarClient(bot_url, args.room, None, max_attempts=5, version=1)
            for _ in range(args.bots)
        ]
        everyone = [*clients, *relays]
        results = await asyncio.gather(*(c.connect() for c in everyone), return_exceptions=True)
        for welcome in results:
            if isinstance(welcome, BaseException):
                await asyncio.gather(*(c.close() for c in everyone))
                raise_join_error(url, welcome)
        first = results[0]
        horizons = np.asarray(first.horizons)
        for i, (client, relay) in enumerate(zip(clients, relays, strict=True)):
            bot = Bot(i, client.avatar, client, make_policy(args, horizons), relay=relay)
            bot.reckoners = {
                m: DeadReckoner(
                    horizons, "gru" if m == "kalman" else m, convergence=args.convergence
                )
                for m in METHODS
            }
            bot.kalman = KalmanPaths(
                horizons, kalman.q, kalman.r, init_vel_std=kalman.init_vel_std,
                max_gap=kalman.max_gap, max_speed=kalman.max_speed,
            )  # fmt: skip
            bots.append(bot)
        model = first.model
        print(f"{len(bots)} bots in room {args.room!r} at {url} (model {model}, protocol "
              f"{first.v}); latency {args.latency * 1000:.0f} ms, policy {args.send_policy}; "
              f"kalman q {kalman.q:.3g} r {kalman.r:.3g}", flush=True)  # fmt: skip
        t_start = time.monotonic()
        started_at.append(t_start)
        t_end = loop.time() + args.duration if args.duration > 0 else 0.0
        tasks = [asyncio.create_task(run_bot(b, motion, t_end, stop)) for b in bots]
        tasks += [asyncio.create_task(observe(b)) for b in bots]
        tasks += [asyncio.create_task(observe_relay(b)) for b in bots]
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
                tab = table(meter, bots, time.monotonic() - t_start, kalman)
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
        closing = [c for b in bots for c in (b.client, b.relay) if c is not None]
        await asyncio.gather(*(c.close() for c in closing), return_exceptions=True)
        if proxy is not None:
            await proxy.close()
        if server is not None:
            server.request_shutdown()
            await server_task
    counted = max(elapsed - args.warmup, 0.0)
    board = scoreboard(meter, bots, elapsed)
    return {
        "render_error": {m: meter.errors[m].summary() for m in METHODS},
        "render_error_all": {m: meter.everything[m].summary() for m in METHODS},
        "downlink": {
            r["method"]: {k: r[k] for k in ("feed", "kB_per_s", "records_per_s")} for r in board
        },
        "kalman": {
            "q": kalman.q,
            "r": kalman.r,
            "tuned": not (args.kalman_q > 0 and args.kalman_r > 0),
        },
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
        "reconnects": sum(b.client.connects - 1 + b.relay.connects - 1 for b in bots),
    }


def _other_room(path: str, room: str) -> bool:
    return parse_qs(urlsplit(path).query).get("room", [room])[0] != room


def truth_route(
    server, motion: Motion, bots: list[Bot], path: str, room: str
) -> tuple[int, str, bytes]:
    """GET /demo/truth?room=R: every bot's true position now (for the viewer); 404 elsewhere."""
    if _other_room(path, room):
        return 404, "text/plain; charset=utf-8", b"no demo bots in that room\n"
    now = time.monotonic()
    body = {
        "server_time": server.clock(),
        "avatars": {b.name: [round(float(v), 4) for v in motion.at(b.index, now)] for b in bots},
    }
    return 200, "application/json", json.dumps(body).encode()


def compare_route(
    meter: Meter, bots: list[Bot], started_at: list[float], path: str, room: str
) -> tuple[int, str, bytes]:
    """GET /demo/compare?room=R: the demo's table so far (`scoreboard`, for the viewer):
    {"elapsed_s", "bots", "methods": [{method, feed, mean, p95, n, kB_per_s,
    records_per_s}, ...]}; 404 for another room."""
    if _other_room(path, room):
        return 404, "text/plain; charset=utf-8", b"no demo bots in that room\n"
    elapsed = time.monotonic() - started_at[0] if started_at else 0.0
    body = {"elapsed_s": elapsed, "bots": len(bots), "methods": scoreboard(meter, bots, elapsed)}
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
    ap.add_argument(
        "--dr-lookahead", type=float, default=0.3,
        help="embedded server: resend when the new path is off up to this far ahead, s",
    )  # fmt: skip
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
    ap.add_argument(
        "--kalman-q", type=float, default=0.0, help="Kalman q, m^2/s^3 (0: tune, with --kalman-r)"
    )
    ap.add_argument("--kalman-r", type=float, default=0.0, help="Kalman r, m (0: tune)")
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
    for name in ("duration", "latency", "convergence", "warmup", "kalman_q", "kalman_r"):
        if not getattr(args, name) >= 0:
            ap.error(f"--{name.replace('_', '-')} must be >= 0")
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
    print(json.dumps({k: out[k] for k in ("render_error", "downlink")}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
