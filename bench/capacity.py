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


def start_server(predictor: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "server", "--port", "0", "--predictor", predictor]
    cmd += ["--log-level", "info", *extra]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        m = re.search(r"serving (ws://\S+)", line)
        if m:  # keep reading its log, or a full pipe would stall the server
            threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError(f"server ({predictor}) did not start")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    ns = [int(x) for x in args.clients.split(",")]
    out: dict = {"runs": {}, "largest": {}, "transport": args.transport, "client": args.client}
    for predictor in args.predictors.split(","):
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
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
