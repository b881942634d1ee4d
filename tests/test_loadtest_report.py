"""The load tool's report (`client_demo.loadtest.report`), pure: the figures from the
workers' results and the /metrics reads around the window, what could not be measured and
why, the generator's verdict and the service level."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client_demo.loadtest.report import (
    build_report,
    generator_verdict,
    meets_service_level,
    print_summary,
)
from client_demo.loadtest.scrape import Scrape


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


def test_summary_prints_every_figure_and_says_what_was_not_measured(capsys):
    m0 = Scrape(_metrics(100, 10, 1000, 100), t=10.0)
    m1 = Scrape(_metrics(250, 10, 1050, 120), t=11.0)
    routed = {**SETUP, "route": True, "room_urls": {"load0": "ws://a/"}, "workers": ["ws://a/"],
              "server_pids": [7]}  # fmt: skip
    r = build_report(routed, [_result()], {}, m0, m1, m1)
    print_summary(r)
    out = capsys.readouterr().out
    for head in ("frames", "e2e ms", "tick ms", "traffic", "per client down", "cpu s/s", "sends",
                 "cluster", "service level"):  # fmt: skip
        assert f"  {head}" in out
    assert "clients 10 (connected 10, errors 0) at 20 Hz for 1 s, protocol v2" in out
    assert "1 server(s) for 1 room(s) (GET /route): ws://a/ (1 room)" in out
    assert "HELD" in out and "unmeasured server_cpu_s_per_s: could not read /proc/PID/stat" in out
    failed = Scrape(None, t=1.0, why="http://x/metrics: timed out")
    print_summary(build_report(SETUP, [], {0: (0, 10, 9, "no report")}, failed, failed, failed))
    out = capsys.readouterr().out
    assert "MISSING  1 worker(s), 10 clients in no figure" in out and "BROKEN" in out
    assert "unmeasured" in out and "timed out" in out
