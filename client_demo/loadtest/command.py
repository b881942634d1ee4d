"""Load test: many simulated WebSocket clients against a running avatar-stream server.

The command line of the load tool: `python -m client_demo.loadtest` and the console script
`avatar-loadtest` (see ``--help``; the package's docstring says what it measures). The
first paragraph here is the help's description."""

from __future__ import annotations

import argparse
import json
import os

from client_demo.loadtest.clients import CLIENTS
from client_demo.loadtest.orchestrate import (
    CLIENTS_PER_PROCESS,
    PROTOCOLS,
    check_args,
    parse_processes,
    run,
)
from client_demo.loadtest.report import print_summary
from client_demo.loadtest.scrape import fetch_metrics, metrics_url, pid_list
from server import cli


def _processes_arg(value: str) -> str | int:
    try:
        n = parse_processes(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a number >= 1, not {value!r}") from None
    return "auto" if n is None else n


def _pids_arg(value: str) -> list[int]:
    try:
        pids = [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        pids = []
    if not pids or min(pids) < 1:
        raise argparse.ArgumentTypeError(f"expected a PID or PID,PID,..., not {value!r}")
    return pids


@cli.command("python -m client_demo.loadtest")
def main(argv: list[str] | None = None) -> int:
    """Run one load test (see ``--help``), print its summary (and write --json); returns 0.

    A server that is not there (or has no /metrics) exits with one line naming the URL.
    Once it runs, the report is always printed, whatever overload it met.
    """
    ap = argparse.ArgumentParser(
        prog="python -m client_demo.loadtest",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--url", type=cli.ws_url, default="ws://127.0.0.1:8765/")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--rate", type=float, default=20.0, help="pos per client per second")
    ap.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    ap.add_argument("--ramp", type=float, default=2.0, help="seconds to connect everybody")
    ap.add_argument(
        "--processes",
        type=_processes_arg,
        default="auto",
        help=f"worker processes; auto: ceil(clients / {CLIENTS_PER_PROCESS}), at least 1, "
        "at most the CPUs this process may use",
    )
    ap.add_argument(
        "--protocol",
        type=int,
        choices=PROTOCOLS,
        default=2,
        help="the clients' protocol version (2: downlink dead reckoning, a tick may bring "
        "no state frame by design)",
    )
    ap.add_argument(
        "--pos-encoding",
        choices=["msgpack", "binary"],
        default="msgpack",
        help="how the clients send pos: msgpack maps, or the 37-byte binary frame their "
        "hello asks for (docs/protocol.md)",
    )
    ap.add_argument("--rooms", type=int, default=1)
    ap.add_argument("--density", type=float, default=30.0, help="neighbours within 30 m")
    ap.add_argument("--sample-every", type=int, default=20, help="decode every k-th client")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--client",
        choices=CLIENTS,
        default="picows",
        help="the generator's WebSocket library (picows costs the generator less CPU per frame)",
    )
    ap.add_argument(
        "--server-pid",
        type=_pids_arg,
        action="append",
        help="the server's PID for its CPU; several (repeated or a comma list) are summed "
        "(a cluster's workers, and its supervisor if wanted) (default: the process listening "
        "on each server's port on this machine)",
    )
    ap.add_argument(
        "--route",
        action="store_true",
        help="a cluster: look each room up (GET /route on --url), connect its clients to its "
        "worker, follow `moved` (at most 4 hops); /metrics and CPU summed over the workers",
    )
    ap.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="seconds for the workers to start; a later one is terminated and counted missing",
    )
    ap.add_argument(
        "--report-timeout",
        type=float,
        default=30.0,
        help="seconds after the window for the workers' figures; a later one is terminated "
        "and counted missing",
    )
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    try:
        check_args(args.clients, args.rate, args.duration, args.ramp, args.processes,
                   args.rooms, args.sample_every, args.client, args.protocol)  # fmt: skip
    except ValueError as e:
        ap.error(str(e))
    if args.ready_timeout <= 0 or args.report_timeout < 0:
        ap.error("need --ready-timeout > 0 and --report-timeout >= 0")
    pids = pid_list([p for group in args.server_pid or [] for p in group])
    for pid in pids:
        if os.path.isdir("/proc") and not os.path.isdir(f"/proc/{pid}"):
            ap.error(f"--server-pid {pid}: no such process")
    try:
        fetch_metrics(args.url)
    except OSError as e:
        raise cli.UserError(
            f"cannot read {metrics_url(args.url)} (the server of --url {args.url}): "
            f"{cli.explain(e)[0]}",
            "is an avatar-stream server running there? start one with avatar-server",
        ) from None
    try:
        r = run(
            args.url, args.clients, args.rate, args.duration, args.ramp, args.processes,
            args.rooms, args.density, args.sample_every, args.seed, None, args.client,
            protocol=args.protocol, pos_encoding=args.pos_encoding,
            ready_timeout=args.ready_timeout,
            report_timeout=args.report_timeout, route=args.route, server_pids=pids or None,
        )  # fmt: skip
    except OSError as e:  # only before anything started: /metrics or (--route) /route
        raise cli.UserError(
            f"cannot start on --url {args.url}: {cli.first_line(e)}",
            "is an avatar-stream server (of this version, for --route) running there?",
        ) from None
    print_summary(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0
