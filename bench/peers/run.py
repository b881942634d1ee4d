"""Peer benchmark: the largest number of clients Colyseus 0.18 and our server each hold
on the same workload, and their ratio (ours / Colyseus).

    python bench/peers/run.py [--clients 100,150,200,250,300,400,500,700,1000,1400,2000]
                              [--duration 10] [--tries 2] [--only colyseus|ours]
                              [--bot-procs auto] [--server-args ARGS] [--json OUT]

Workload, the same for both: N clients in one room, each sending its position at 20 Hz,
the server pushing state to every client at 20 Hz; 1 client in 25 decodes what it gets
(to measure latency), the others only count messages; the load generator runs on the
same machine as the server, over loopback.

- Colyseus: bench/peers/colyseus/server.js (@colyseus/core with @colyseus/ws-transport, a
  room whose state is a MapSchema of players with x, y and the seq of the newest
  position, patchRate 50 ms) driven by bench/peers/colyseus/bots.js (@colyseus/sdk
  clients, spread over `--bot-procs` Node processes). On the first run the bench
  installs the pinned versions itself (`npm ci` into bench/peers/colyseus/node_modules).
- Ours: `python -m server --port 0 --log-level info` (plus `--server-args`) driven by
  `python -m client_demo.loadtest --rooms 1 --sample-every 25` through its CLI and JSON.

A step holds at the service level when there is no client error, e2e p99 <= 100 ms and
>= 95 % of the expected updates arrive (20 per client per second of the measured window).
e2e is a decoding client's time from sending its position with seq k to the first update
that carries it: for Colyseus the first patch in which its own player's seq >= k (the
exact-seq variant is in the JSON too), for ours the load tool's figure (the first state
carrying a prediction made from seq k). Each server climbs the --clients ladder until a
step breaks in each of --tries runs (other programs' load on a shared machine can break a
step, never make one hold); the two ladders are interleaved (Colyseus at N, ours at N,
then the next N) so that such load falls on both alike. Everything is bounded: each step
has a deadline, the processes are the bench's own and are stopped by PID. It prints one
line per step, then the largest N that held for each and the ratio; --json writes every
figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.capacity import start_server  # noqa: E402
from client_demo import proctree  # noqa: E402
from server import cli  # noqa: E402

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "colyseus"
PACKAGES = ("@colyseus/core", "@colyseus/ws-transport", "@colyseus/schema", "@colyseus/sdk")
E2E_P99_MS = 100.0
UPDATES_FRACTION = 0.95
SERVERS = ("colyseus", "ours")


# -- the service level and the ladder (pure: tests/test_peers.py) ------------------------------


def updates_fraction(r: dict) -> float | None:
    """The share of expected updates that arrived: "updates_fraction" where the report has
    it (with downlink dead reckoning a client may rightly get no frame on a tick), else
    "frames_fraction"."""
    v = r.get("updates_fraction")
    return r.get("frames_fraction") if v is None else v


def held(r: dict) -> bool:
    """The service level: no client error, e2e p99 <= 100 ms, >= 95 % of expected updates
    (and every client accounted for: a load worker that never reported breaks it)."""
    p99 = (r.get("e2e_ms") or {}).get("p99")
    frac = updates_fraction(r)
    return (
        r.get("errors") == 0
        and not r.get("clients_unreported")
        and p99 is not None
        and p99 <= E2E_P99_MS
        and frac is not None
        and frac >= UPDATES_FRACTION
    )


def largest_held(steps: list[dict]) -> int:
    """The largest N of a ladder's steps (in climbing order, tries of one N together) before
    the first N at which no try held."""
    best = 0
    for n in dict.fromkeys(s["clients"] for s in steps):
        if not any(s["held"] for s in steps if s["clients"] == n):
            break
        best = n
    return best


def ramp_s(n: int) -> float:
    """Seconds to connect n clients (both servers get the same)."""
    return max(2.0, n / 250)


def bot_procs(spec: str, n: int, cpus: int) -> int:
    """Node processes for n Colyseus bots: a number, or "auto" (one per 200 bots, at most
    one per CPU)."""
    if spec == "auto":
        return max(1, min(cpus, math.ceil(n / 200)))
    return max(1, min(int(spec), n))


def ratio(largest: dict) -> float | None:
    if largest.get("colyseus") and "ours" in largest:
        return largest["ours"] / largest["colyseus"]
    return None


# -- processes --------------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a server: its whole process tree (ours:
    with its step worker), Linux /proc; NaN if it cannot be read."""
    try:
        return proctree.tree_cpu_s([pid])
    except (OSError, IndexError, ValueError):
        return float("nan")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all CPUs so far, from /proc/stat."""
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)
    except (OSError, ValueError, IndexError):
        return float("nan"), float("nan")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def drain(stream, keep: deque) -> None:
    """Keep reading a child's pipe (a full pipe would stall it); the last lines in `keep`."""
    threading.Thread(target=lambda: keep.extend(stream), daemon=True).start()


def git_state() -> str | None:
    """The commit of the tree measured, "+dirty" when it has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, timeout=30,
                              capture_output=True, text=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, timeout=30, capture_output=True, text=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty.strip() else "")) or None


def node_version() -> str:
    if not shutil.which("node") or not shutil.which("npm"):
        raise cli.UserError(
            "node and npm are needed for the Colyseus side and are not on PATH",
            "install Node.js 20 or newer, or pass --only ours",
        )
    out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
    m = re.match(r"v(\d+)", out.stdout.strip())
    if not m or int(m.group(1)) < 20:
        raise cli.UserError(
            f"Node.js {out.stdout.strip() or '?'} is too old for Colyseus 0.18",
            "install Node.js 20 or newer, or pass --only ours",
        )
    return out.stdout.strip()


def installed_versions() -> dict[str, str | None]:
    got = {}
    for name in PACKAGES:
        try:
            got[name] = json.loads((NODE_DIR / "node_modules" / name / "package.json").read_text())[
                "version"
            ]
        except (OSError, ValueError, KeyError):
            got[name] = None
    return got


def ensure_colyseus() -> dict[str, str]:
    """Install the pinned Colyseus packages (package-lock.json) unless they are there."""
    pins = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    if installed_versions() != {k: pins[k] for k in PACKAGES}:
        print(f"installing Colyseus into {NODE_DIR.relative_to(ROOT)}/node_modules (npm ci)")
        cmd = ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            out = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            raise cli.UserError("npm ci took over 10 minutes", "check the npm registry") from None
        if out.returncode != 0:
            why = cli.first_line(out.stderr or out.stdout or f"exit status {out.returncode}")
            raise cli.UserError(f"npm ci in {NODE_DIR} failed: {why}", "check the npm registry")
        if installed_versions() != {k: pins[k] for k in PACKAGES}:
            raise cli.UserError(f"npm ci did not install {pins}", f"remove {NODE_DIR}/node_modules")
    return installed_versions()


def start_colyseus() -> tuple[subprocess.Popen, str, str, deque]:
    """`node server.js` on a free loopback port: (process, ws URL, room id, its last lines)."""
    proc = subprocess.Popen(["node", "server.js", "--port", "0"], cwd=NODE_DIR, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    log: deque = deque(maxlen=20)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        log.append(line)
        m = re.search(r"serving (ws://\S+) room (\S+)", line)
        if m:
            drain(proc.stdout, log)
            return proc, m.group(1), m.group(2), log
    stop(proc)
    why = cli.first_line("".join(log)) if "".join(log).strip() else "no output"
    raise cli.UserError(f"the Colyseus server (node server.js) did not start: {why}")


# -- one step ---------------------------------------------------------------------------------


def step_colyseus(url: str, room: str, n: int, server_pid: int, args) -> dict:
    procs = bot_procs(args.bot_procs, n, os.cpu_count() or 1)
    cmd = ["node", "bots.js", "--url", url, "--room", room, "--clients", str(n),
           "--rate", "20", "--ramp", str(ramp_s(n)), "--duration", str(args.duration),
           "--sample-every", "25", "--procs", str(procs), "--server-pid", str(server_pid)]  # fmt: skip
    limit = ramp_s(n) + args.duration + 120
    try:
        out = subprocess.run(cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"clients": n, "failed": f"bots.js ran past {limit:.0f} s"}
    lines = out.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        why = cli.first_line(out.stderr or out.stdout or "no output")
        return {"clients": n, "failed": f"bots.js exit status {out.returncode}: {why}"}


def step_ours(url: str, n: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "load.json"
        cmd = [sys.executable, "-m", "client_demo.loadtest", "--url", url, "--clients", str(n),
               "--rate", "20", "--rooms", "1", "--sample-every", "25", "--duration",
               str(args.duration), "--ramp", str(ramp_s(n)), "--json", str(report),
               "--pos-encoding", args.pos_encoding]  # fmt: skip
        limit = ramp_s(n) + args.duration + 300  # its workers build their motion first
        try:
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            out = None
        try:
            return json.loads(report.read_text())
        except (OSError, ValueError):
            if out is None:
                return {"clients": n, "failed": f"the load tool ran past {limit:.0f} s"}
            tail = (out.stderr or out.stdout or "no output").strip().splitlines()
            why = tail[-1] if tail else "no output"
            return {"clients": n, "failed": f"the load tool's exit status {out.returncode}: {why}"}


def own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have ended (the generators)."""
    return sum(
        r.ru_utime + r.ru_stime
        for r in (resource.getrusage(resource.RUSAGE_SELF),
                  resource.getrusage(resource.RUSAGE_CHILDREN))
    )  # fmt: skip


def snapshot(server_pid: int) -> tuple:
    return time.time(), cpu_s(server_pid), own_cpu_s(), machine_busy()


def measure(r: dict, server_pid: int, before: tuple) -> dict:
    """The step's figures for the report: its own plus, over the whole step, the server's
    CPU, the machine's busy CPUs and the share of those that were neither the server nor
    the bench and its generators ("other_cpus": other programs on a shared machine). The
    reports' own "server_cpu_s_per_s" covers the measured window."""
    t, server0, own0, busy0 = before
    t1, server1, own1, busy1 = snapshot(server_pid)
    dt, ncpu = t1 - t, os.cpu_count() or 1
    busy = ncpu * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1)
    return {
        "server_cpu_s_per_s": None,
        **r,
        "held": "failed" not in r and held(r),
        "step_s": round(dt, 1),
        "server_cpu_step_s_per_s": round((server1 - server0) / dt, 3),
        "machine_busy_cpus": round(busy, 2),
        "other_cpus": round(max(0.0, busy - (server1 - server0 + own1 - own0) / dt), 2),
    }


def line(name: str, s: dict) -> str:
    if "failed" in s:
        return f"{name:9s} N={s['clients']:5d}  BROKEN  {s['failed']}"
    p99, frac = (s.get("e2e_ms") or {}).get("p99"), updates_fraction(s)
    p99s = "-" if p99 is None else f"{p99:6.1f}"
    return (
        f"{name:9s} N={s['clients']:5d}  {'held  ' if s['held'] else 'BROKEN'}  "
        f"e2e p99 {p99s} ms  updates {100 * (frac or 0):5.1f} %  errors {s.get('errors')}  "
        f"down {downlink_kb_s(s):.0f} kB/s/client  "
        f"CPU: server {server_cpu(s):.2f}, generator {generator_cpu(s):.2f}"
        f"{' (saturated)' if (s.get('generator') or {}).get('saturated') else ''}, "
        f"others {s['other_cpus']:.2f} of {os.cpu_count()}"
    )


def downlink_kb_s(r: dict) -> float:
    """What one client received per second in the window, kB (the load tool's
    "downlink_per_client" where it has one)."""
    v = (r.get("downlink_per_client") or {}).get("bytes_per_s")
    if v is None:
        v = r.get("bytes_in_per_s", float("nan")) / max(r.get("clients", 1), 1)
    return v / 1e3


def server_cpu(r: dict) -> float:
    v = r.get("server_cpu_s_per_s")
    return r["server_cpu_step_s_per_s"] if v is None else v


def generator_cpu(r: dict) -> float:
    v = r.get("generator_cpu_s_per_s")  # all its processes together
    return float("nan") if v is None else v


# -- the bench --------------------------------------------------------------------------------


@cli.command("bench/peers/run.py")
def main(argv: list[str] | None = None) -> int:
    """Run the peer benchmark (see ``--help``); a Ctrl-C keeps the steps so far in --json."""
    ap = argparse.ArgumentParser(
        prog="bench/peers/run.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--clients", default="100,150,200,250,300,400,500,700,1000,1400,2000",
                    help="the ladder of N, climbed until a step breaks")  # fmt: skip
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds per step")
    ap.add_argument("--only", choices=SERVERS, help="run one server's ladder only")
    ap.add_argument("--tries", type=int, default=2,
                    help="runs of a step that breaks before the ladder stops (other load on "
                         "the machine can only break a step, never make one hold)")  # fmt: skip
    ap.add_argument("--bot-procs", default="auto",
                    help="Node processes for the Colyseus bots: a number or auto")  # fmt: skip
    ap.add_argument("--server-args", default="",
                    help="extra flags for python -m server, e.g. '--transport picows'")  # fmt: skip
    ap.add_argument("--pos-encoding", choices=["msgpack", "binary"], default="msgpack",
                    help="how our load clients send pos (docs/protocol.md)")  # fmt: skip
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args(argv)
    try:
        ns = [int(x) for x in args.clients.split(",")]
    except ValueError:
        ap.error(f"--clients {args.clients!r}: expected comma-separated numbers")
    if min(ns) < 1 or ns != sorted(set(ns)) or args.duration <= 0 or args.tries < 1:
        ap.error("need --clients increasing and >= 1, --duration > 0, --tries >= 1")
    if args.bot_procs != "auto" and not (args.bot_procs.isdigit() and int(args.bot_procs) >= 1):
        ap.error(f"--bot-procs {args.bot_procs!r}: expected a number >= 1 or auto")
    names = [args.only] if args.only else list(SERVERS)
    out: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "git": git_state(),
        "service_level": {
            "e2e_p99_ms": E2E_P99_MS,
            "updates_fraction": UPDATES_FRACTION,
            "errors": 0,
        },
        "duration_s": args.duration,
        "tries": args.tries,
        "steps": {name: [] for name in names},
        "largest": {},
    }
    if "colyseus" in names:
        out["machine"]["node"] = node_version()
        out["colyseus"] = ensure_colyseus()
    if "ours" in names:
        out["ours"] = {"command": "python -m server --port 0 --log-level info " + args.server_args}
    try:
        ladders(args, ns, names, out)
    except KeyboardInterrupt:
        if not args.json:
            raise
        Path(args.json).write_text(json.dumps({**out, "interrupted": True}, indent=2))
        raise cli.Interrupted(f"the steps so far are in {args.json}") from None
    c = out.get("colyseus", {})
    print(f"\nlargest N that held (e2e p99 <= {E2E_P99_MS:g} ms, >= "
          f"{100 * UPDATES_FRACTION:g} % of updates, no client error):")  # fmt: skip
    for name in names:
        label = (
            f"Colyseus {c.get('@colyseus/core')} (schema {c.get('@colyseus/schema')}, ws)"
            if name == "colyseus"
            else f"ours ({out['ours']['command'].strip()})"
        )
        top = "  (held at the top of --clients)" if out["largest"][name] == ns[-1] else ""
        print(f"  {label}: {out['largest'][name]}{top}")
    if out.get("ratio_ours_over_colyseus") is not None:
        print(f"  ratio ours / Colyseus: {out['ratio_ours_over_colyseus']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def ladders(args, ns: list[int], names: list[str], out: dict) -> None:
    """Both ladders, interleaved by N, into `out` as they go."""
    servers: dict = {}
    try:
        for name in names:
            if name == "colyseus":
                proc, url, room, _ = start_colyseus()
                servers[name] = (
                    proc,
                    lambda n, url=url, room=room, pid=proc.pid: step_colyseus(
                        url, room, n, pid, args
                    ),
                )
            else:
                proc, url = start_server("gru", shlex.split(args.server_args))
                servers[name] = (proc, lambda n, url=url: step_ours(url, n, args))
            print(f"{name}: {url} (pid {proc.pid})", flush=True)
        climbing = list(names)
        for n in ns:
            for name in list(climbing):
                proc, run_step = servers[name]
                for k in range(args.tries):
                    if proc.poll() is not None:
                        s = {"clients": n, "failed": f"the server exited ({proc.returncode})"}
                        s = {**s, "held": False}
                    else:
                        before = snapshot(proc.pid)
                        s = measure(run_step(n), proc.pid, before)
                    out["steps"][name].append({**s, "try": k + 1})
                    print(line(name, s) + (f"  [try {k + 1}]" if k else ""), flush=True)
                    time.sleep(2.0)  # let the step's connections close
                    if s["held"] or proc.poll() is not None:
                        break
                if not s["held"]:
                    climbing.remove(name)
            if not climbing:
                break
    finally:
        for proc, _ in servers.values():
            stop(proc)
        for name in names:
            out["largest"][name] = largest_held(out["steps"][name])
        out["ratio_ours_over_colyseus"] = ratio(out["largest"])


if __name__ == "__main__":
    sys.exit(main())
