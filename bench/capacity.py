"""Capacity benchmark: the largest number of clients one server process holds, GRU vs CV.

    python bench/capacity.py [--clients 250,500,750,1000,1250,1500,2000] [--duration 15]
                             [--predictors gru,cv] [--transport websockets|picows]
                             [--client picows|websockets] [--processes 1] [--json OUT]

For each predictor it starts `python -m server --predictor P` on a free loopback port,
then runs the load tool (`client_demo.loadtest`) at each N in increasing order until the
service level breaks (any client error, e2e p99 > 100 ms, tick p99 > 25 ms, or < 95 % of
state frames) and reports the largest N that held for each, and their ratio (GRU / CV).
The load generator runs on the same machine (its CPU is reported beside the server's).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client_demo.loadtest import meets_service_level, print_summary, run
from server import cli


def start_server(predictor: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "server", "--port", "0", "--predictor", predictor]
    cmd += ["--log-level", "info", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    last = ""
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        last = line.strip() or last
        m = re.search(r"serving (ws://\S+)", line)
        if m:  # keep reading its log, or a full pipe would stall the server
            threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    proc.wait()
    why = last.split("cannot start: ", 1)[-1] if last else "no output"
    raise cli.UserError(f"the server ({' '.join(cmd[1:])}) did not start: {why}")


@cli.command("bench/capacity.py")
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (see ``--help``); a Ctrl-C keeps the runs so far in --json."""
    ap = argparse.ArgumentParser(prog="bench/capacity.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default="250,500,750,1000,1250,1500,2000")
    ap.add_argument("--predictors", default="gru,cv")
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--processes", type=int, default=1, help="load generator processes")
    ap.add_argument("--transport", default="picows", help="the server's --transport")
    ap.add_argument("--client", default="picows", help="the load generator's WebSocket library")
    ap.add_argument("--server-args", default="", help="extra flags for python -m server")
    ap.add_argument("--json", help="write every run's figures here")
    args = ap.parse_args(argv)
    try:
        ns = [int(x) for x in args.clients.split(",")]
    except ValueError:
        ap.error(f"--clients {args.clients!r}: expected comma-separated numbers")
    predictors = args.predictors.split(",")
    if not set(predictors) <= {"gru", "cv"}:
        ap.error(f"--predictors {args.predictors!r}: expected gru and/or cv")
    if min(ns) < 1 or args.duration <= 0 or args.rate <= 0 or args.processes < 1:
        ap.error("need --clients >= 1 each, --duration > 0, --rate > 0, --processes >= 1")
    out: dict = {"runs": {}, "largest": {}, "transport": args.transport, "client": args.client}
    try:
        measure(args, ns, predictors, out)
    except KeyboardInterrupt:
        if not args.json:
            raise
        Path(args.json).write_text(json.dumps({**out, "interrupted": True}, indent=2))
        raise cli.Interrupted(f"the runs so far are in {args.json}") from None
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def measure(args, ns: list[int], predictors: list[str], out: dict) -> None:
    """Every predictor at increasing N until the service level breaks, into `out` as it
    goes ("runs", "largest", "ratio_gru_over_cv")."""
    for predictor in predictors:
        proc, url = start_server(
            predictor, ["--transport", args.transport, *args.server_args.split()]
        )
        out["runs"][predictor] = []
        largest = 0
        try:
            for n in ns:
                ramp = max(2.0, n / 250)
                print(f"--- {predictor}: {n} clients", flush=True)
                r = run(url, n, args.rate, args.duration, ramp, args.processes,
                        server_pid=proc.pid, client=args.client)  # fmt: skip
                print_summary(r)
                held = meets_service_level(r)
                out["runs"][predictor].append({**r, "held": held})
                if not held:
                    break
                largest = n
                time.sleep(2.0)  # let the previous clients' connections close
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out["largest"][predictor] = largest
    if "gru" in out["largest"] and out["largest"].get("cv"):
        out["ratio_gru_over_cv"] = out["largest"]["gru"] / out["largest"]["cv"]


if __name__ == "__main__":
    sys.exit(main())
