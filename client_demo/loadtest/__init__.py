"""Load test: many simulated WebSocket clients against a running avatar-stream server.

    python -m client_demo.loadtest --url ws://127.0.0.1:8765/ --clients 1000 --rate 20 \\
        --duration 30 --ramp 5 [--processes auto] [--protocol 2] --rooms 1 --json load.json
    python -m client_demo.loadtest --url ws://127.0.0.1:8700/ --route --rooms 8 ...  # a cluster

Clients connect over --ramp seconds, spread evenly over the worker processes (one asyncio
loop each, uvloop when installed), then each streams the training simulator's motion at
--rate Hz (random phase within the period); the measured window of --duration seconds
starts up to 1 s after the ramp (`settle_time`), and then everything stops: bounded in
count and time. Rooms are filled round-robin; in each room the avatars are
spread over a square sized for about --density neighbours within 30 m, so views are
realistic rather than all-see-all.

Processes: --processes auto (the default) starts ceil(clients / 350) workers, at least 1
and at most the CPUs this process may run on (os.sched_getaffinity, else os.cpu_count());
one worker drives about 350 clients before its own CPU limits the measurement. The
number used is in the report ("processes"; "processes_requested" says what was asked).

The generator shares the machine with the server, so its own cost per frame is kept
small: every frame is counted and sized; only every --sample-every-th client decodes its
`state` frames, to measure end-to-end latency (a `pos` sent -> the first `state` that
carries a prediction made from that seq) and the records per client. The server's tick
duration and overruns come from its /metrics, read before and after the measured window;
its CPU from /proc when --server-pid is given (or it runs on this machine and the PID is
found from the port).

Protocol (--protocol, default 2): a v2 client gets an avatar's record only when its path
changed, on a heartbeat or when it enters the view, so a tick may bring it no `state` at
all by design. "frames_fraction" is state frames received / ticks the connected clients
were in the window (frames expected); "updates_fraction" takes out of the expected frames
the ones the server skipped by design (the delta of avatar_state_frames_skipped_total over
the window, scaled to the window and to this run's share of the server's players), and the
service level uses it when there is one.

Cluster (--route): a cluster's workers (`python -m server --workers N --redis URL`, see
docs/scaling.md) each serve some rooms. With --route the tool asks --url's worker
`GET /route?room=load{k}` for every room the run uses, one after another (so the worker
spreads the new rooms), before its processes start; a null url (one server) or an HTTP
404 (an older server) means --url itself, and any other failure stops the run at the
start as an unreachable /metrics does. Each client connects to its room's worker and
follows an `error` `moved` (close 4001: the room lives elsewhere, or that worker drains) to
the URL it names, or looks the room up again on --url when it names none, at most 4 hops
(then "moved" is its error; "moves" counts the hops). The report names the servers
("workers": the distinct URLs the rooms went to, the cluster's workers, not this tool's
processes; "room_urls": {room: URL}). The server-side figures are then
the cluster's: /metrics is read from every worker the rooms went to and from --url (all
must answer, the slowest read is the one that counts) and summed sample by sample
(`merge_metrics`: tick histograms, counters and the connections gauge add up), and the
server CPU is the sum over the server PIDs' process trees (--server-pid, several allowed;
else the one listening on each worker's port on this machine; each with every process it
started, its step worker included: `client_demo.proctree`). With --workers N give the
supervisor's PID with --server-pid: its tree is the whole cluster. Without
--route every client connects to --url and a `moved` is an error, as before.

It never crashes on overload. A worker that does not report (it died, failed, or was not
ready / did not report by its deadline) is terminated by its PID and counted
("workers_missing", "workers_missing_why", "clients_unreported": those clients are in no
figure, "e2e_clients_lost": their decoding clients' latency samples are lost); a figure
that cannot be computed is null and "unmeasured" says why. Sends run on a schedule: their
lateness is measured ("generator": {"send_lag_ms"}), a send a whole period late is skipped
(counted, never bunched), and the generator is marked saturated ("generator": {"saturated",
"saturated_why"}) when a worker used >= 0.9 CPU s/s in the window, sends ran >= 20 ms late
at p99, or >= 1 % of them were skipped: then the latencies say as much about the
generator (or a machine too busy to run it on time) as about the server.

JSON (`--json`): {"clients", "connected", "connected_late", "errors", "error_kinds",
"close_codes", "protocol", "pos_encoding", "processes", "frames_expected", "frames_received",
"frames_fraction", "updates_expected", "updates_fraction", "server_frames_skipped",
"e2e_ms": {"p50","p95","p99","max"}, "e2e_samples", "e2e_clients", "tick_ms":
{"p50","p99"}, "model_step_ms": {"p50","p99"}, "overruns", "msgs_sent",
"bytes_out_per_s", "bytes_in_per_s", "server_bytes_out_per_s", "downlink_per_client":
{"bytes_per_s", "frames_per_s", "state_frames_per_s", "records_per_s", "records_from",
"server_records_per_s"}, "generator": {"cpu_s_per_s", "send_lag_ms", "sends_skipped",
"saturated", "saturated_why"}, "generator_cpu_s_per_s", "server_cpu_s_per_s",
"workers_missing", "workers_missing_why", "clients_unreported", "unmeasured",
"machine_listen_overflows", "route", "room_urls", "workers", "moves", "server_pids", ...};
`bytes_out` is what the clients sent, `bytes_in` what they got (whole run);
"downlink_per_client" counts the measured window only, per connected client-second.

The package, one module per job: `clients` (the load clients, on the shared client core
`client_demo.wsclient`), `job` (what a worker is given), `worker` (one worker process:
motion, sends, its figures), `orchestrate` (the run: the worker processes, /metrics
around the window), `scrape` (/metrics and the server's CPU), `report` (the figures and
the summary) and `command` (the command line).
"""

from client_demo.loadtest.clients import CLIENTS, CLOSE_TIMEOUT, ClientStats, Conn
from client_demo.loadtest.command import main
from client_demo.loadtest.job import WorkerJob, room_name
from client_demo.loadtest.orchestrate import (
    CLIENTS_PER_PROCESS,
    PROTOCOLS,
    auto_processes,
    check_args,
    collect,
    parse_processes,
    route_rooms,
    run,
    settle_time,
    stop_workers,
)
from client_demo.loadtest.report import (
    build_report,
    generator_verdict,
    meets_service_level,
    print_summary,
)
from client_demo.loadtest.scrape import (
    Scrape,
    bucket_quantiles,
    counter,
    fetch_metrics,
    find_server_pid,
    histogram_quantiles,
    listen_overflows,
    merge_metrics,
    metrics_url,
    pid_list,
    scrape,
    series,
)
from client_demo.wsclient import STATE_PREFIX

__all__ = [
    "CLIENTS",
    "CLIENTS_PER_PROCESS",
    "CLOSE_TIMEOUT",
    "PROTOCOLS",
    "STATE_PREFIX",
    "ClientStats",
    "Conn",
    "Scrape",
    "WorkerJob",
    "auto_processes",
    "bucket_quantiles",
    "build_report",
    "check_args",
    "collect",
    "counter",
    "fetch_metrics",
    "find_server_pid",
    "generator_verdict",
    "histogram_quantiles",
    "listen_overflows",
    "main",
    "meets_service_level",
    "merge_metrics",
    "metrics_url",
    "parse_processes",
    "pid_list",
    "print_summary",
    "room_name",
    "route_rooms",
    "run",
    "scrape",
    "series",
    "settle_time",
    "stop_workers",
]
