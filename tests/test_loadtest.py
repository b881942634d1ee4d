"""Whole load runs against a real server on 127.0.0.1 port 0 (the tool is a benchmark): the
figures of a short run, the report under a server made too slow on purpose, workers that
die or never report; --route against two cluster workers sharing a real redis-server
(rooms spread, /metrics summed, `moved` followed). Its parts: tests/test_loadtest_*.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from client_demo.client import AvatarClient
from client_demo.loadtest import (
    counter,
    fetch_metrics,
    meets_service_level,
    orchestrate,
    print_summary,
    run,
)
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
    ("client", "transport", "protocol", "pos_encoding"),
    [
        ("picows", "websockets", 1, "msgpack"),
        ("websockets", "picows", 2, "msgpack"),
        ("picows", "picows", 2, "binary"),
    ],
)
async def test_short_load_run_gives_complete_consistent_figures(
    client, transport, protocol, pos_encoding
):
    async with running(tick_hz=20.0, transport=transport) as srv:
        r = await asyncio.to_thread(
            run, srv.url, 6, rate=20.0, duration=1.0, ramp=0.3, processes=2, rooms=2,
            sample_every=2, server_pid=os.getpid(), client=client, protocol=protocol,
            pos_encoding=pos_encoding,
        )  # fmt: skip
        assert srv.stats.errors == {}  # every pos taken, in either encoding
    complete(r)
    assert r["clients"] == r["connected"] == 6 and r["errors"] == 0 and r["processes"] == 2
    assert r["client"] == client and r["protocol"] == protocol and r["workers_missing"] == 0
    assert r["pos_encoding"] == pos_encoding
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
        engine = srv.steps.engine
        finish = engine.finish_tick  # the step's second half: `tick` and the thread's

        def slow_finish(batch):
            # the workload: 2.4 tick periods, in the step's thread (inline_step_ms=0); a
            # tick with no avatar pending steps on the loop, so it stays fast (a slow step
            # there would starve the server's sockets)
            if len(batch.slots):
                time.sleep(0.12)
            return finish(batch)

        engine.finish_tick = slow_finish
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
    real = orchestrate.scrape

    def spy(urls, pids=None, timeout=10.0):
        got = real(urls, pids, timeout)
        reads.append((urls, got))
        return got

    monkeypatch.setattr(orchestrate, "scrape", spy)
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
            monkeypatch.setattr(
                orchestrate, "route_url", lambda url, room, timeout=5.0: stale[room]
            )
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
