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

This module is the command line and the run; the parts are `client_demo.players` (the
bots and their motion), `client_demo.feeds` (what each bot receives), `client_demo.scoring`
(render errors on the same draws), `client_demo.compare` (the Kalman tuning, the table)
and `client_demo.routes` (the viewer's /demo routes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from typing import NoReturn
from urllib.parse import urlsplit

import numpy as np
from rich.console import Console
from rich.live import Live

from client_demo.client import AvatarClient, Refused
from client_demo.compare import scoreboard, table, tune_kalman
from client_demo.feeds import observe_gru, observe_relay
from client_demo.kalman_paths import KalmanPaths
from client_demo.netem import LatencyProxy
from client_demo.players import SEGMENT, Bot, Motion, make_policy, run_bot
from client_demo.reckoning import DeadReckoner
from client_demo.routes import compare_route, truth_route
from client_demo.scoring import METHODS, Meter, measure
from server import cli
from server.core import model_cli
from server.core import protocol as P
from server.serve import runner
from training.baselines import KalmanCV


def raise_join_error(url: str, e: BaseException) -> NoReturn:
    """Re-raise a failed join: a refusal as it is, anything else as a user's error."""
    if isinstance(e, Refused) or cli.describe(e) is None:
        raise e
    raise cli.UserError(
        f"cannot join {url}: {cli.first_line(e)}", "is it an avatar-stream server? check --url"
    ) from e


async def demo(args: argparse.Namespace) -> dict:
    """The demo run (`main`'s figures): the embedded server or --url, the latency proxy,
    the bots and their feeds, scoring and the table until --duration or a signal.

    Raises `Refused` when the server refuses a bot, `cli.UserError` when it cannot be
    joined at all.
    """
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
        tasks += [asyncio.create_task(observe_gru(b)) for b in bots]
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
        model_cli.check_device(args.device)
        if args.predictor == "gru":
            model_cli.load_model(args.model, "cpu")
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
