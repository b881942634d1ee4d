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
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, run as a script
if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path (tests): its parts
    sys.path.append(str(Path(__file__).resolve().parent))

from hostile_churn import churn
from hostile_fuzz import fuzz
from hostile_good import Good, Window
from hostile_metrics import gauges, measure, metrics, sample_peaks, settle
from hostile_server import SERVER_FLAGS, Server
from hostile_slow import slow_reader
from hostile_traffic import hostile_window

from server import cli
from server.serve.config import Config


async def run(args: argparse.Namespace, limits: Config) -> dict:
    """Phases (i) to (iv) against a fresh server (see the module's docstring), with the
    server's `limits`; every figure, printed as it comes. Raises `cli.UserError` when the
    server does not start."""
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

        work = hostile_window(srv.url, args.hostile_seconds, args.hostile_rate, limits)
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
    """Counts as ``key=value`` words."""
    return " ".join(f"{k}={v:g}" for k, v in g.items())


def report(title: str, r: dict) -> None:
    """Print one measured window's line."""
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
    limits = Config.from_args([*SERVER_FLAGS, *args.server_args.split()])  # as the server's
    from server.serve.runner import run as run_loop

    out = run_loop(run(args, limits))
    if args.fuzz > 0:
        out["fuzz"] = f = fuzz(args.fuzz, args.seed, limits.max_frame)
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
