"""The load tool against a real server on 127.0.0.1 port 0 (the tool is a benchmark): the
figures of a short run, the report under a server made too slow on purpose, workers that
die or never report; --route against two cluster workers sharing a real redis-server
(rooms spread, /metrics summed, `moved` followed); and its pure parts (the report, the
process rule, the verdicts, merging /metrics)."""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from client_demo import loadtest
from client_demo.client import AvatarClient
from client_demo.loadtest import (
    Scrape,
    auto_processes,
    build_report,
    collect,
    counter,
    fetch_metrics,
    generator_verdict,
    histogram_quantiles,
    main,
    meets_service_level,
    merge_metrics,
    parse_processes,
    print_summary,
    route_url,
    run,
    stop_workers,
)
from tests import loadtest_workers as workers
from tests.servers import running

# what every report has, whatever happened (bench/capacity.py and bench/peers read these)
KEYS = {"clients", "connected", "errors", "error_kinds", "close_codes", "processes",
        "processes_requested", "protocol", "frames_expected", "frames_received",
        "frames_fraction", "updates_expected", "updates_fraction", "server_frames_skipped",
        "e2e_ms", "e2e_samples", "e2e_clients", "e2e_clients_lost", "tick_ms", "model_step_ms",
        "overruns", "dropped_frames", "state_bytes_per_avatar", "msgs_sent", "bytes_out_per_s",
        "bytes_in_per_s", "server_bytes_out_per_s", "downlink_per_client", "generator",
        "generator_cpu_s_per_s", "server_cpu_s_per_s", "workers_missing",
        "workers_missing_why", "clients_unreported", "unmeasured",
        "machine_listen_overflows"}  # fmt: skip


def complete(r: dict) -> None:
    """The report has every key, is JSON as it stands, and prints."""
    assert r.keys() >= KEYS
    assert {"p50", "p95", "p99", "max"} <= r["e2e_ms"].keys() and "p99" in r["tick_ms"]
    assert {"bytes_per_s", "state_frames_per_s", "records_per_s", "records_from"} <= r[
        "downlink_per_client"
    ].keys()
    assert {"saturated", "saturated_why", "send_lag_ms", "cpu_s_per_s"} <= r["generator"].keys()
    json.loads(json.dumps(r, allow_nan=False))
    print_summary(r)


# each client library against the other server transport: all four sides get exercised,
# and each protocol version once
@pytest.mark.parametrize(
    ("client", "transport", "protocol"),
    [("picows", "websockets", 1), ("websockets", "picows", 2)],
)
async def test_short_load_run_gives_complete_consistent_figures(client, transport, protocol):
    async with running(tick_hz=20.0, transport=transport) as srv:
        r = await asyncio.to_thread(
            run, srv.url, 6, rate=20.0, duration=1.0, ramp=0.3, processes=2, rooms=2,
            sample_every=2, server_pid=os.getpid(), client=client, protocol=protocol,
        )  # fmt: skip
    complete(r)
    assert r["clients"] == r["connected"] == 6 and r["errors"] == 0 and r["processes"] == 2
    assert r["client"] == client and r["protocol"] == protocol and r["workers_missing"] == 0
    assert r["frames_expected"] == 6 * 1.0 * 20
    # a client may see one tick more than the window holds (one at each edge)
    assert 0 < r["frames_received"] <= r["frames_expected"] + r["connected"]
    e = r["e2e_ms"]
    assert r["e2e_samples"] > 0 and 0 <= e["p50"] <= e["p95"] <= e["p99"] <= e["max"]
    assert r["e2e_clients"] == 3
    t = r["tick_ms"]
    assert 0 < t["p50"] <= t["p99"]
    assert r["msgs_sent"] > 6 * 1.0 * 20 * 0.9 and r["bytes_out_per_s"] > 0
    assert r["server_cpu_s_per_s"] is not None and r["server_cpu_s_per_s"] > 0
    d = r["downlink_per_client"]
    assert d["bytes_per_s"] > 0 and 0 < d["state_frames_per_s"] <= d["frames_per_s"]
    # the decoding clients (0, 2, 4) share room load0: 3 avatars in view once all have moved
    assert 0 < d["records_per_s"] <= 3 * d["state_frames_per_s"] * (6 / 3) * 1.05
    assert d["server_records_per_s"] > 0
    assert r["generator"]["sends_scheduled"] > 0 and r["generator"]["send_lag_ms"]["p99"] >= 0
    if protocol == 1:  # a state frame every tick
        assert r["server_frames_skipped"] == 0
        assert r["updates_fraction"] == r["frames_fraction"] > 0.8
        assert r["bytes_in_per_s"] > r["bytes_out_per_s"]
        assert 2.5 * d["state_frames_per_s"] <= d["records_per_s"]
    else:  # no frame on a tick with nothing due: updates count what was due
        assert r["server_frames_skipped"] >= 0
        assert r["updates_expected"] <= r["frames_expected"]
        assert r["frames_fraction"] <= r["updates_fraction"]
        assert 0.6 < r["updates_fraction"] < 1.3


async def test_report_under_a_server_slower_than_its_tick():
    """The model step takes longer than the tick period: ticks overrun, clients get fewer
    frames than ticks were due; the tool says so and returns its whole report."""
    async with running(tick_hz=20.0, inline_step_ms=0.0) as srv:
        world = srv.world
        step = world.step

        def slow_step():
            # the workload: 2.4 tick periods, in the step's worker thread (inline_step_ms=0);
            # a tick with no avatar pending steps on the loop, so it stays fast (a slow step
            # there would starve the server's sockets)
            if world.engine.pending:
                time.sleep(0.12)
            return step()

        world.step = slow_step
        r = await asyncio.to_thread(
            run, srv.url, 20, rate=20.0, duration=1.0, ramp=0.3, sample_every=5,
            server_pid=os.getpid(),
        )  # fmt: skip
    complete(r)
    assert r["processes_requested"] == "auto" and r["processes"] == 1 and r["protocol"] == 2
    assert r["workers_missing"] == 0 and r["connected"] == 20
    assert r["overruns"] > 0 and r["tick_ms"]["p99"] > 100.0
    assert r["frames_expected"] == 20 * 1.0 * 20
    assert r["frames_fraction"] < 0.8 and r["updates_fraction"] < 0.8
    assert not meets_service_level(r)


async def test_a_worker_killed_mid_run_is_counted_and_the_rest_is_measured():
    killed = []

    def kill_first(pids):
        os.kill(pids[0], signal.SIGKILL)
        killed.append(pids[0])

    async with running(tick_hz=20.0) as srv:
        r = await asyncio.to_thread(
            run, srv.url, 4, rate=20.0, duration=1.0, ramp=0.2, processes=2, sample_every=1,
            on_start=kill_first,
        )  # fmt: skip
    complete(r)
    assert r["workers_missing"] == 1 and r["clients_unreported"] == 2
    assert r["e2e_clients_lost"] == 2 and r["e2e_clients"] == 2
    (why,) = r["workers_missing_why"]
    assert f"pid {killed[0]}" in why and "SIGKILL" in why and "clients 0..1" in why
    assert r["connected"] == 2 and r["frames_expected"] == 2 * 1.0 * 20
    assert r["frames_received"] > 0 and r["e2e_samples"] > 0
    assert not meets_service_level(r)  # half the clients were not measured


async def test_workers_not_ready_by_the_deadline_give_a_report_of_nothing_measured():
    async with running(tick_hz=20.0) as srv:
        t0 = time.monotonic()
        r = await asyncio.to_thread(run, srv.url, 3, duration=1.0, processes=2, ready_timeout=0.01)
        took = time.monotonic() - t0
    complete(r)
    assert took < 4.0  # no window is run for nobody
    assert r["workers_missing"] == 2 and r["clients_unreported"] == 3 and r["connected"] == 0
    assert all("not ready within 0.01 s" in w for w in r["workers_missing_why"])
    assert r["frames_fraction"] is None and r["updates_fraction"] is None
    assert r["e2e_ms"]["p99"] is None and r["tick_ms"]["p99"] is None
    assert r["generator"]["saturated"] is None
    for key in ("frames_fraction", "updates_fraction", "e2e_ms", "tick_ms"):
        assert r["unmeasured"][key]
    assert not meets_service_level(r)


# -- a cluster: two workers sharing a real redis-server (tests/redis_server.py) ----------------


def cluster(redis_url: str):
    return running(redis=redis_url, directory_ttl=0.8, predictor="cv", tick_hz=20.0)


ROUTED = {"route", "room_urls", "workers", "moves", "server_pids"}


async def test_route_spreads_the_rooms_over_two_workers_and_sums_their_metrics(
    redis_url, monkeypatch
):
    reads = []  # every /metrics scrape of the run: (the URLs read, what came back)
    real = loadtest.scrape

    def spy(urls, pids=None, timeout=10.0):
        got = real(urls, pids, timeout)
        reads.append((urls, got))
        return got

    monkeypatch.setattr(loadtest, "scrape", spy)
    async with cluster(redis_url) as w0, cluster(redis_url) as w1:
        await w0.cluster.next_beat()  # its view of the workers has w1 now
        r = await asyncio.to_thread(
            run, w0.url, 8, rate=20.0, duration=1.0, ramp=0.3, processes=1, rooms=2,
            sample_every=4, route=True,
        )  # fmt: skip
    complete(r)
    assert r.keys() >= ROUTED and r["route"] is True
    both = {w0.url, w1.url}
    assert set(r["workers"]) == both and len(r["workers"]) == 2  # one room each
    assert set(r["room_urls"]) == {"load0", "load1"} and set(r["room_urls"].values()) == both
    assert r["connected"] == 8 and r["errors"] == 0 and r["workers_missing"] == 0
    assert r["moves"] == 0  # nobody was sent to the wrong worker
    assert r["frames_fraction"] > 0.5
    # the server side is the two workers' together: both read at each scrape, summed
    (urls0, m0), (urls1, m1) = reads[:2]
    assert set(urls0) == set(urls1) == both
    for m in (m0, m1):
        assert m.why is None
        assert counter(m.text, "avatar_connections", {"kind": "player"}) == 8
    assert r["tick_ms"]["p99"] is not None and r["overruns"] is not None
    # both workers run in this process: found by their ports, counted once
    assert r["server_pids"] == [os.getpid()] and r["server_cpu_s_per_s"] > 0


@pytest.mark.parametrize("client", ["picows", "websockets"])
async def test_a_client_sent_to_the_wrong_worker_follows_moved(redis_url, monkeypatch, client):
    """Room load0 lives on w1 but the route map (stale, as a route answer may be) sends its
    clients to w0: w0 answers `moved` with w1's URL and each client follows it, once."""
    async with cluster(redis_url) as w0, cluster(redis_url) as w1:
        await w0.cluster.next_beat()
        holder = AvatarClient(w1.url, "load0", "holder", version=1)
        holder._route = lambda: asyncio.sleep(0, w1.url)  # load0 is placed on w1
        async with holder:
            stale = {"load0": w0.url, "load1": w1.url}
            monkeypatch.setattr(loadtest, "route_url", lambda url, room, timeout=5.0: stale[room])
            r = await asyncio.to_thread(
                run, w0.url, 4, rate=20.0, duration=1.0, ramp=0.2, processes=1, rooms=2,
                sample_every=4, client=client, route=True,
            )  # fmt: skip
            moved = counter(
                await asyncio.to_thread(fetch_metrics, w0.url), "avatar_hellos_moved_total"
            )
    complete(r)
    assert r["room_urls"] == stale
    assert r["connected"] == 4 and r["errors"] == 0, r["error_kinds"]
    assert r["moves"] == 2 and moved == 2  # clients 0 and 2 (load0), one hop each
    assert r["frames_fraction"] > 0.5 and r["tick_ms"]["p99"] is not None


def test_route_url_falls_back_to_the_url_asked_and_refuses_what_is_not_a_route():
    asked = []
    reply = {"status": 404, "body": b"not found\n"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            self.send_response(reply["status"])
            self.end_headers()
            self.wfile.write(reply["body"])

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"ws://127.0.0.1:{httpd.server_port}/"
            assert route_url(url, "load 0") == url  # 404: a server without /route
            assert asked == ["/route?room=load%200"]
            reply.update(status=200, body=b'{"url": null}')  # one server: the URL asked
            assert route_url(url, "load0") == url
            reply["body"] = b'{"url": "ws://127.0.0.1:9/"}'
            assert route_url(url, "load0") == "ws://127.0.0.1:9/"
            for status, body in ((200, b"<html>"), (200, b'{"url": 3}'), (500, b"error")):
                reply.update(status=status, body=body)
                with pytest.raises(OSError, match="/route"):
                    route_url(url, "load0")
        finally:
            httpd.shutdown()
            thread.join(5)
    with pytest.raises(OSError):
        route_url("ws://127.0.0.1:1/", "load0")  # nobody listens


def test_collect_by_a_deadline_then_stop_stragglers_by_pid():
    """A stopped worker never reports: it is left pending at the deadline and then
    terminated by its PID; one that exits first, one that fails and one that reports are
    told apart."""
    ctx = mp.get_context("spawn")
    plan = [
        (workers.never_reports, ()),
        (workers.exits, (3,)),
        (workers.sends, ("fatal", "RuntimeError: boom")),
        (workers.sends, ("result", {"connected": 7})),
    ]
    procs, links = [], []
    for target, args in plan:
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=target, args=(w, *args), daemon=True)
        p.start()
        w.close()
        procs.append(p)
        links.append(r)
    try:
        os.kill(procs[0].pid, signal.SIGSTOP)
        got, why = {}, {}
        t0 = time.monotonic()
        pending = collect(procs, links, {0, 1, 2, 3}, "result", time.time() + 1.5, got, why)
        assert 1.4 < time.monotonic() - t0 < 3.0  # waited for the straggler, not longer
        assert pending == {0} and got == {3: {"connected": 7}}
        assert "exit code 3" in why[1] and why[2] == "failed: RuntimeError: boom"
        stop_workers(procs, grace=2.0)
        assert not procs[0].is_alive() and procs[0].exitcode == -signal.SIGTERM
    finally:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join()


# -- pure parts ---------------------------------------------------------------------------------


def test_processes_follow_the_client_count_within_the_cpus():
    assert auto_processes(1, cpus=8) == 1
    assert auto_processes(350, cpus=8) == 1 and auto_processes(351, cpus=8) == 2
    assert auto_processes(2000, cpus=8) == 6 and auto_processes(2000, cpus=2) == 2
    assert 1 <= auto_processes(10**6) <= (os.cpu_count() or 1)
    assert parse_processes("auto") is None and parse_processes(None) is None
    assert parse_processes("3") == 3
    with pytest.raises(ValueError):
        parse_processes("0")


def test_help_states_the_process_rule(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ceil(clients / 350)" in out and "--protocol" in out and "--report-timeout" in out
    assert "--route" in out and "GET /route" in out and "comma list" in out


@pytest.mark.parametrize("bad", [["--processes", "0"], ["--processes", "many"],
                                 ["--protocol", "3"], ["--server-pid", "12,x"]])  # fmt: skip
def test_cli_refuses_bad_processes_and_protocol(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--url", "ws://127.0.0.1:1/", *bad])
    assert e.value.code == 2
    assert bad[0] in capsys.readouterr().err


def _result(**over) -> dict:
    """One worker's figures: 10 clients in a 1 s window at 20 Hz, all connected."""
    r = {
        "pid": 1, "clients": 10, "connected": 10, "connected_late": 0, "errors": [],
        "close_codes": [], "sent": 200, "bytes_out": 10_000, "frames": 120, "bytes_in": 30_000,
        "states_in_window": 50, "frames_in_window": 60, "bytes_in_window": 20_000,
        "client_seconds": 10.0, "expected": 200.0, "latencies": np.full(40, 0.03),
        "records": 300, "record_bytes": 6_000, "records_in_window": 300, "sampled_clients": 2,
        "sampled_client_seconds": 2.0, "cpu_s": 1.0, "window_cpu_s": 0.2, "window_wall_s": 1.0,
        "send_lags": np.full(100, 0.001), "sends_skipped": 0, "sends_scheduled": 200,
    }  # fmt: skip
    return {**r, **over}


def _metrics(skipped: float, players: float, records: float, ticks: float) -> str:
    return (
        f"avatar_state_frames_skipped_total {skipped}\n"
        f'avatar_connections{{kind="player"}} {players}\n'
        f'avatar_state_records_total{{version="1"}} 0.0\n'
        f'avatar_state_records_total{{version="2"}} {records}\n'
        f"avatar_tick_overruns_total 0.0\navatar_bytes_out_total {ticks * 1000}\n"
        f'avatar_tick_seconds_bucket{{le="0.01"}} {ticks}\n'
        f'avatar_tick_seconds_bucket{{le="+Inf"}} {ticks}\n'
    )


SETUP = {"clients": 10, "rate_hz": 20.0, "duration_s": 1.0, "ramp_s": 0.5, "settle_s": 0.5,
         "processes": 1, "processes_requested": "auto", "rooms": 1, "client": "picows",
         "protocol": 2, "sample_every": 5, "server_pid": None}  # fmt: skip


@pytest.mark.parametrize(
    ("protocol", "players", "updates_expected"),
    [(2, 10, 50), (2, 20, 125), (1, 10, 200)],  # 150 skipped; half of them ours at 20 players
)
def test_updates_take_out_the_frames_the_server_skipped_by_design(
    protocol, players, updates_expected
):
    m0 = Scrape(_metrics(100, players, 1000, 100), t=10.0)
    m1 = Scrape(_metrics(250, players, 1000 + 5 * players, 120), t=11.0)
    r = build_report({**SETUP, "protocol": protocol}, [_result()], {}, m0, m1, m1)
    assert r["frames_fraction"] == 50 / 200
    assert r["server_frames_skipped"] == 150
    assert r["updates_expected"] == updates_expected
    assert r["updates_fraction"] == pytest.approx(50 / updates_expected)
    d = r["downlink_per_client"]
    assert d["bytes_per_s"] == 2000 and d["frames_per_s"] == 6 and d["state_frames_per_s"] == 5
    assert d["records_per_s"] == 150 and "the 2 decoding clients" in d["records_from"]
    if protocol == 2:
        assert d["server_records_per_s"] == pytest.approx(5.0)
    assert r["tick_ms"]["p99"] is not None and r["e2e_ms"]["p99"] == pytest.approx(30.0)
    assert meets_service_level(r) == (protocol == 2 and players == 10)


def test_a_report_without_metrics_marks_what_it_could_not_measure():
    failed = Scrape(None, t=1.0, why="http://x/metrics: timed out")
    r = build_report(SETUP, [_result()], {}, failed, failed, failed)
    assert r["frames_fraction"] == 0.25  # the clients' own count stands
    for key in ("tick_ms", "overruns", "updates_fraction", "server_bytes_out_per_s"):
        assert "timed out" in r["unmeasured"][key]
    assert r["tick_ms"]["p99"] is None and r["overruns"] is None
    assert not meets_service_level(r)
    json.dumps(r, allow_nan=False)


def test_metrics_read_when_the_clients_were_gone_do_not_stand_for_the_window():
    """/metrics answered when this run's clients were not connected describe another
    time: the server-side figures say so instead."""
    m0 = Scrape(_metrics(100, 10, 1000, 100), t=10.0, took=0.1)
    m1 = Scrape(_metrics(100, 0, 1000, 101), t=11.0, took=0.1)
    r = build_report(SETUP, [_result()], {}, m0, m1, m1)
    assert r["tick_ms"]["p99"] is None and r["overruns"] is None
    assert "answered with 10 and 0 players" in r["unmeasured"]["tick_ms"]
    assert r["frames_fraction"] == 0.25  # the clients' own count stands
    assert not meets_service_level(r)


def test_metrics_answered_late_do_not_stand_for_the_window():
    """A read the server answered seconds late (a connection storm fills its accept queue)
    leaves the time its counters describe uncertain: they are not used."""
    m0 = Scrape(_metrics(100, 10, 1000, 100), t=15.0, took=10.0)
    m1 = Scrape(_metrics(250, 10, 1050, 101), t=20.0, took=0.1)
    r = build_report(SETUP, [_result()], {}, m0, m1, m1)
    assert r["tick_ms"]["p99"] is None and r["updates_fraction"] is None
    assert "took 10.0 s and 0.1 s" in r["unmeasured"]["tick_ms"]
    assert r["metrics_read_s"] == [10.0, 0.1]
    assert not meets_service_level(r)
    ok = build_report(SETUP, [_result()], {}, Scrape(m0.text, t=15.0, took=0.5), m1, m1)
    assert ok["tick_ms"]["p99"] is not None and ok["updates_fraction"] is not None


def test_generator_verdict():
    assert generator_verdict([0.5, 0.3], 5.0, 0, 1000) == []
    (why,) = generator_verdict([0.95, 0.3], 5.0, 0, 1000)
    assert "worker 0" in why and "0.95" in why
    (why,) = generator_verdict([0.2], 35.0, 0, 1000)
    assert "35 ms late" in why
    assert generator_verdict([0.2], 5.0, 5, 1000) == []  # a stall: under 1 % skipped
    (why,) = generator_verdict([0.2], 5.0, 50, 1000)
    assert "50 of 1000 sends skipped" in why
    assert generator_verdict([None], None, 0, 0) == []


def _exposition(obs: np.ndarray, players: int, spectators: int, extra: str = "") -> str:
    """A server's /metrics as prometheus_client writes it: a tick histogram of `obs`
    (seconds) and the connections gauge, with their comment lines."""
    lines = ["# HELP avatar_tick_seconds Tick duration", "# TYPE avatar_tick_seconds histogram"]
    for le in (0.001, 0.005, 0.01, 0.05, math.inf):
        text = "+Inf" if le == math.inf else repr(le)
        lines.append(f'avatar_tick_seconds_bucket{{le="{text}"}} {float(np.sum(obs <= le))}')
    lines += [
        f"avatar_tick_seconds_count {float(len(obs))}",
        f"avatar_tick_seconds_sum {float(obs.sum())}",
        "# TYPE avatar_connections gauge",
        f'avatar_connections{{kind="player"}} {float(players)}',
        f'avatar_connections{{kind="spectator"}} {float(spectators)}',
    ]
    return "\n".join(lines) + "\n" + extra


def test_merge_metrics_sums_samples_with_the_same_name_and_labels(rng):
    a, b = rng.exponential(0.003, 300), rng.exponential(0.02, 100)
    merged = merge_metrics([
        _exposition(a, 3, 1, 'only_here_total 2.0\nx{path="a b}"} 1.0\n'),
        _exposition(b, 5, 0, 'x{path="a b}"} 1.5\n'),
    ])  # fmt: skip
    assert "#" not in merged
    assert counter(merged, "avatar_connections", {"kind": "player"}) == 8  # labels apart
    assert counter(merged, "avatar_connections", {"kind": "spectator"}) == 1
    assert counter(merged, "avatar_tick_seconds_count") == 400
    assert counter(merged, "avatar_tick_seconds_sum") == pytest.approx(a.sum() + b.sum())
    assert counter(merged, "only_here_total") == 2.0 and 'x{path="a b}"} 2.5' in merged
    # the quantiles of the merged buckets are those of all the observations together
    qs = (0.5, 0.9, 0.99)
    together = histogram_quantiles("", _exposition(np.concatenate([a, b]), 0, 0),
                                   "avatar_tick_seconds", qs)  # fmt: skip
    assert histogram_quantiles("", merged, "avatar_tick_seconds", qs) == together
    alone = histogram_quantiles("", _exposition(a, 0, 0), "avatar_tick_seconds", qs)
    assert alone != together
    assert merge_metrics([_exposition(a, 3, 1)]) == merge_metrics([_exposition(a, 3, 1), ""])
    assert merge_metrics([]) == ""


def test_histogram_quantiles_use_the_window_only():
    before = 'x_bucket{le="0.001"} 10.0\nx_bucket{le="0.01"} 10.0\nx_bucket{le="+Inf"} 10.0\n'
    after = 'x_bucket{le="0.001"} 10.0\nx_bucket{le="0.01"} 110.0\nx_bucket{le="+Inf"} 110.0\n'
    q = histogram_quantiles(before, after, "x")
    assert 1.0 < q["p50"] < 10.0 and q["p50"] < q["p99"] <= 10.0


def test_service_level():
    ok = {"errors": 0, "e2e_ms": {"p99": 80.0}, "tick_ms": {"p99": 20.0}, "frames_fraction": 0.99}
    assert meets_service_level(ok)
    assert not meets_service_level({**ok, "errors": 1})
    assert not meets_service_level({**ok, "e2e_ms": {"p99": 101.0}})
    assert not meets_service_level({**ok, "tick_ms": {"p99": 26.0}})
    assert not meets_service_level({**ok, "frames_fraction": 0.9})
    # v2: the updates count, not the frames the server skipped by design
    assert meets_service_level({**ok, "frames_fraction": 0.3, "updates_fraction": 0.97})
    assert not meets_service_level({**ok, "updates_fraction": 0.9})
    assert meets_service_level({**ok, "updates_fraction": None})  # frames: a lower bound
    assert not meets_service_level({**ok, "frames_fraction": None})
    assert not meets_service_level({**ok, "e2e_ms": {"p99": None}})
    assert not meets_service_level({**ok, "workers_missing": 1})


def test_cli_refuses_a_missing_server(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--url", "ws://127.0.0.1:1/", "--clients", "1", "--duration", "1"])
    assert e.value.code == 1
    assert "http://127.0.0.1:1/metrics" in capsys.readouterr().err


def test_run_refuses_a_missing_server_with_oserror():
    with pytest.raises(OSError):
        run("ws://127.0.0.1:1/", 1, duration=1.0)
