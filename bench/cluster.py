"""Cluster benchmark: workers with a Redis directory under load, and their failures.

    python bench/cluster.py [--clients 200] [--rooms 8] [--rate 10] [--json runs/cluster.json]
                            [--phases cpu,kill,roll,redis] [--cpu-clients 200] [--cpu-duration 15]

Everything runs on this machine, on loopback: a real `redis-server` (started on a free port,
stopped by PID), `python -m server --workers 2 --redis URL` (the supervisor and its two
workers, the shipped model) and the clients. The four targets of docs/scaling.md §0:

- **cpu**: server CPU per client-second of `--workers 2 --redis` (the supervisor and both
  workers) against one plain process, and against two plain processes with the rooms
  split by hand (no Redis: what the process split itself costs), at the same load from
  the load tool (`client_demo.loadtest --route` for the cluster). Alternated (plain, two
  plain, cluster, ...) over `--cpu-rounds`, compared as ratios of the medians: these cores
  are shared and noisy.
- **kill**: `--clients` clients over `--rooms` rooms stream to `--workers 2`; the worker
  with more clients is killed with SIGKILL (the supervisor evicts it and starts a
  successor). For each of its clients: the time from the kill to its next state frame;
  for the other worker's clients: state frames in the 5 s after the kill against the 5 s
  before. **killttl**: the same with two workers started apart, no supervisor (as on two
  hosts): the dead worker's entries expire after the TTL.
- **roll**: SIGUSR2 to the supervisor (a rolling restart: each worker drained, restarted,
  waited for); every drop's time from the close to the client's next state frame, the
  close codes, the error messages clients got in a session ("error_messages", the target
  is none) and the replies to a reconnect's hello that were `moved` ("hello_replies":
  a redirect `AvatarClient` follows inside `connect()`, never shown to the app).
- **redis**: the redis-server stopped (SIGTERM) for 3 s and started again, empty, on the
  same port; clients disconnected meanwhile (the target is none), the longest gap between
  a client's frames, and the time until the directory holds every room again.

Each of kill, killttl, roll and redis runs on a fresh cluster.
The clients of kill/roll/redis are this script's own (bench/cluster_swarm.py: one asyncio
loop, websockets, protocol v1 so that every tick brings a frame and a gap is a gap, on the
shared client core `client_demo.wsclient`): each looks its room up (GET /route in a
thread, as `AvatarClient` does, on the first of the workers' URLs it was given, the next
one when that fails), connects, follows `moved` at once, and after a drop tries again
after 0.1 s, doubling to at most 1 s (with jitter), as a game client with a list of entry
points would. The processes (redis-server aside) are bench/cluster_procs.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, run as a script
if str(Path(__file__).resolve().parent) not in sys.path:  # loaded by path: its parts
    sys.path.append(str(Path(__file__).resolve().parent))

from cluster_procs import (
    PREFIX,
    Servers,
    free_port_pair,
    healthy,
    serving,
    start_cluster,
    wait_until,
    worker_pid,
    workers_seen,
)
from cluster_swarm import (
    Swarm,
    close_codes_between,
    errors_between,
    frames_between,
    longest_gap,
    next_frame_after,
    quantiles,
)

from client_demo import loadtest
from server import cli

CHURN = ("kill", "killttl", "roll", "redis")


# -- the phases -----------------------------------------------------------------------------


async def phase_kill(swarm: Swarm, sup: subprocess.Popen | None, seeds: list[str]) -> dict:
    """SIGKILL the worker with the most clients; see the module docstring. With `sup` its
    supervisor evicts it and starts a successor; without, its directory entries expire."""
    await asyncio.sleep(5.0)
    victim = max(seeds, key=lambda u: len(swarm.on(u)))
    pid = worker_pid(victim)
    if pid is None or (sup is not None and pid == sup.pid):
        raise RuntimeError(f"no worker process found on {victim}")
    hit = swarm.on(victim)
    others = [c for c in swarm.clients if c.url and c.url != victim]
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    await asyncio.sleep(8.0)
    gaps = [next_frame_after(c, t_kill) for c in hit]
    back = [g for g in gaps if g is not None]
    before = sum(frames_between(c, t_kill - 5, t_kill) for c in others)
    after = sum(frames_between(c, t_kill, t_kill + 5) for c in others)
    out = {
        "supervised": sup is not None,
        "victim": victim,
        "victim_clients": len(hit),
        "other_clients": len(others),
        "back_s": quantiles(back),
        "not_back_within_8s": len(gaps) - len(back),
        "other_frames_before_5s": before,
        "other_frames_after_5s": after,
        "other_frames_ratio": round(after / before, 4) if before else None,
        "errors": errors_between(swarm.clients, t_kill, t_kill + 8),
        "hello_replies": errors_between(swarm.clients, t_kill, t_kill + 8, "hello_error"),
    }
    if sup is not None:  # the supervisor starts a successor on the same port
        port = urlsplit(victim).port
        restart_s = await asyncio.to_thread(
            wait_until, lambda: healthy(port) and worker_pid(victim) not in (None, pid), 120,
            "the killed worker's successor",
        )  # fmt: skip
        out["successor_ready_s"] = round(8.0 + restart_s, 1)
    return out


async def phase_roll(swarm: Swarm, sup: subprocess.Popen, seeds: list[str]) -> dict:
    """SIGUSR2 to the supervisor; wait until both workers are new and every client streams."""
    await swarm.settled(30.0)
    await asyncio.sleep(3.0)
    old = {u: worker_pid(u) for u in seeds}
    t0 = time.monotonic()
    sup.send_signal(signal.SIGUSR2)

    def renewed() -> bool:
        return all(healthy(urlsplit(u).port) and worker_pid(u) not in (None, old[u]) for u in seeds)

    took = await asyncio.to_thread(wait_until, renewed, 240, "the rolling restart", 0.2)
    await swarm.settled(30.0)
    t1 = time.monotonic()
    gaps = []
    for c in swarm.clients:  # each drop in the window: from the close to the next frame
        for t, kind, _ in c.events:
            if t0 <= t <= t1 and kind == "closed":
                g = next_frame_after(c, t)
                gaps.append(g if g is not None else math.inf)
    return {
        "roll_s": round(took, 1),
        "drops": len(gaps),
        "back_s": quantiles([g for g in gaps if math.isfinite(g)]),
        "never_back": sum(not math.isfinite(g) for g in gaps),
        "error_messages": errors_between(swarm.clients, t0, t1),
        "hello_replies": errors_between(swarm.clients, t0, t1, "hello_error"),
        "close_codes": close_codes_between(swarm.clients, t0, t1),
        "clients_that_dropped": sum(
            any(t0 <= t <= t1 and k == "closed" for t, k, _ in c.events) for c in swarm.clients
        ),
    }


async def phase_redis(swarm: Swarm, redis, rooms: int) -> dict:
    """Stop redis-server, start it again (empty) on the same port; count client drops."""
    import redis.asyncio as aioredis

    await swarm.settled(30.0)
    await asyncio.sleep(2.0)
    t0 = time.monotonic()
    await asyncio.to_thread(redis.stop)
    down_s = 3.0  # longer than the directory's TTL (2 s): every key would have expired
    await asyncio.sleep(down_s)
    await asyncio.to_thread(redis.start)
    t_up = time.monotonic()
    r = aioredis.from_url(redis.url)
    whole = None
    try:
        while time.monotonic() - t_up < 30:
            n = len([k async for k in r.scan_iter(f"{PREFIX}:room:*")])
            if n >= rooms:
                whole = time.monotonic() - t_up
                break
            await asyncio.sleep(0.05)
    finally:
        await r.aclose()
    await asyncio.sleep(3.0)
    t1 = time.monotonic()
    stalls = [longest_gap(c, t0, t1) for c in swarm.clients]
    return {
        "redis_down_s": down_s,
        "clients_disconnected": sum(
            any(t0 <= t <= t1 and k == "closed" for t, k, _ in c.events) for c in swarm.clients
        ),
        "error_messages": errors_between(swarm.clients, t0, t1),
        "hello_replies": errors_between(swarm.clients, t0, t1, "hello_error"),
        "directory_whole_after_s": None if whole is None else round(whole, 2),
        "longest_frame_gap_s": quantiles(stalls),
    }


async def churn_phase(name: str, args, redis, log_dir: Path) -> dict:
    """One of kill, killttl, roll, redis on a cluster of its own (balanced, fresh)."""
    servers = Servers(log_dir)
    try:
        port = free_port_pair()
        if name == "killttl":  # two workers without a supervisor: no eviction, the TTL decides
            sup = None
            seeds = [f"ws://127.0.0.1:{port + k}/" for k in range(2)]
            for k in range(2):
                servers.start(["--redis", redis.url, "--port", str(port + k), "--host",
                               "127.0.0.1", "--cluster-prefix", PREFIX, *args.server_args],
                              f"worker{k}")  # fmt: skip
            await asyncio.to_thread(
                wait_until, lambda: all(workers_seen(u) == 2 for u in seeds), 180, "two workers"
            )
        else:
            sup, seeds = await asyncio.to_thread(
                start_cluster, servers, redis.url, port, args.server_args
            )
        swarm = Swarm(seeds, args.clients, args.rooms, args.rate)
        await swarm.start()
        placement = {u: len(swarm.on(u)) for u in seeds}
        try:
            if name in ("kill", "killttl"):
                out = await phase_kill(swarm, sup, seeds)
            elif name == "roll":
                out = await phase_roll(swarm, sup, seeds)
            else:
                out = await phase_redis(swarm, redis, args.rooms)
        finally:
            await swarm.close()
    finally:
        await asyncio.to_thread(servers.stop)
    return {"placement": placement, **out}


def pin(cpus: set[int] | None):
    """An on_start for the load tool: its processes on `cpus` (None: left alone)."""
    if not cpus:
        return None

    def go(pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, cpus)

    return go


def cpu_set(text: str) -> set[int] | None:
    """--server-cpus / --generator-cpus: "0" or "0,1" (empty: not pinned)."""
    return {int(x) for x in text.split(",") if x.strip()} or None


def cpu_phase(args, redis, log_dir: Path) -> dict:
    """Plain process vs --workers 2 --redis under the same load tool run, alternated."""
    runs: dict[str, list[float]] = {"plain": [], "plain2": [], "cluster": []}
    detail: list[dict] = []
    for k in range(args.cpu_rounds):
        for kind in runs:
            servers = Servers(log_dir, args.server_cpus)
            try:
                port = free_port_pair()
                room_urls = None
                if kind in ("plain", "plain2"):  # plain2: two plain servers, rooms split by hand
                    ports = [port] if kind == "plain" else [port, port + 1]
                    procs = [
                        servers.start(
                            ["--port", str(p), "--host", "127.0.0.1", *args.server_args], kind
                        )
                        for p in ports
                    ]
                    wait_until(partial(serving, ports, procs), 180, "the servers")
                    urls = [f"ws://127.0.0.1:{p}/" for p in ports]
                    url, pids, route = urls[0], [x.pid for x in procs], False
                    if kind == "plain2":
                        room_urls = {
                            loadtest.room_name(r, args.rooms): urls[r % 2]
                            for r in range(args.rooms)
                        }
                else:
                    sup, seeds = start_cluster(servers, redis.url, port, args.server_args)
                    url, route = seeds[0], True
                    pids = [sup.pid, *(worker_pid(u) for u in seeds)]
                rep = loadtest.run(
                    url, args.cpu_clients, rate=20.0, duration=args.cpu_duration, ramp=3.0,
                    rooms=args.rooms, route=route, server_pids=pids, room_urls=room_urls,
                    on_start=pin(args.generator_cpus),
                )  # fmt: skip
            finally:
                servers.stop()
            cps = rep.get("server_cpu_s_per_s")
            connected = rep.get("connected") or 0
            per = cps / connected if cps is not None and connected else None
            if per is not None:
                runs[kind].append(per)
            row = {
                "round": k,
                "kind": kind,
                "connected": connected,
                "server_cpu_s_per_s": cps,
                "cpu_per_client_s": per,
                "frames_fraction": rep.get("frames_fraction"),
                "tick_ms": rep.get("tick_ms"),
                "workers": rep.get("workers"),
                "errors": rep.get("errors"),
            }
            detail.append(row)
            print("cpu:", json.dumps(row), flush=True)
    med = {k: statistics.median(v) if v else None for k, v in runs.items()}

    def ratio(a: str, b: str) -> float | None:
        return round(med[a] / med[b], 3) if med[a] and med[b] else None

    return {
        "runs": detail,
        "median_cpu_per_client_s": med,
        "ratio_cluster_to_plain": ratio("cluster", "plain"),
        "ratio_plain2_to_plain": ratio("plain2", "plain"),
        "ratio_cluster_to_plain2": ratio("cluster", "plain2"),
    }


@cli.command("bench/cluster.py")
def main(argv: list[str] | None = None) -> int:
    """Run the phases (see ``--help``); writes --json after each phase."""
    ap = argparse.ArgumentParser(prog="bench/cluster.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--phases", default="cpu,kill,killttl,roll,redis")
    ap.add_argument("--clients", type=int, default=200, help="bench clients (kill, roll, redis)")
    ap.add_argument("--rooms", type=int, default=8)
    ap.add_argument("--rate", type=float, default=10.0, help="positions per client per second")
    ap.add_argument("--cpu-clients", type=int, default=200)
    ap.add_argument("--cpu-duration", type=float, default=15.0)
    ap.add_argument("--cpu-rounds", type=int, default=2)
    ap.add_argument("--server-args", default="", help="extra flags for every server, quoted")
    ap.add_argument(
        "--server-cpus",
        type=cpu_set,
        default=None,
        help="cpu phase: pin the server processes to these CPUs, e.g. 0",
    )
    ap.add_argument(
        "--generator-cpus",
        type=cpu_set,
        default=None,
        help="cpu phase: pin the load tool's processes to these CPUs, e.g. 1",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    args.phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    unknown = args.phases - {"cpu", *CHURN}
    if unknown:
        ap.error(f"unknown phases: {sorted(unknown)}")
    if args.clients < 2 or args.rooms < 2 or args.rate <= 0:
        ap.error("need --clients >= 2, --rooms >= 2, --rate > 0")
    args.server_args = args.server_args.split()
    from tests.redis_server import RedisServer, redis_server_path

    if redis_server_path() is None:
        raise cli.UserError("redis-server not found (Debian: apt-get install -y redis-server)")
    log_dir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    print(f"server logs in {log_dir}", flush=True)
    report: dict = {"setup": {k: (sorted(v) if isinstance(v, set) else v)
                              for k, v in vars(args).items() if k != "json"}}  # fmt: skip
    report["setup"]["json"] = str(args.json) if args.json else None

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2, default=str))

    with RedisServer() as redis:
        try:
            if "cpu" in args.phases:
                report["cpu"] = cpu_phase(args, redis, log_dir)
                save()
            from server.serve import runner

            for name in CHURN:
                if name in args.phases:
                    report[name] = runner.run(churn_phase(name, args, redis, log_dir))
                    print(f"{name}:", json.dumps(report[name]), flush=True)
                    save()
        finally:
            save()
    print(json.dumps({k: v for k, v in report.items() if k != "setup"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
