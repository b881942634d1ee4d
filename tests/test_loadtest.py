"""The load tool, briefly, against a real server on 127.0.0.1 port 0 (the tool is a benchmark)."""

from __future__ import annotations

import asyncio
import os

import pytest

from client_demo.loadtest import histogram_quantiles, main, meets_service_level, run
from tests.servers import running


# each client library against the other server transport: all four sides get exercised
@pytest.mark.parametrize(
    ("client", "transport"), [("picows", "websockets"), ("websockets", "picows")]
)
async def test_short_load_run_gives_complete_consistent_figures(client, transport):
    async with running(tick_hz=20.0, transport=transport) as srv:
        r = await asyncio.to_thread(
            run, srv.url, 6, rate=20.0, duration=2.0, ramp=0.5, processes=2, rooms=2,
            sample_every=2, server_pid=os.getpid(), client=client,
        )  # fmt: skip
    keys = {"clients", "errors", "frames_expected", "frames_received", "e2e_ms", "tick_ms",
            "bytes_out_per_s", "generator_cpu_s_per_s", "server_cpu_s_per_s", "overruns"}  # fmt: skip
    assert keys <= r.keys()
    assert r["clients"] == r["connected"] == 6 and r["errors"] == 0 and r["processes"] == 2
    assert r["client"] == client
    assert 0 < r["frames_received"] <= r["frames_expected"] * 1.02  # a tick may straddle the edge
    assert r["frames_expected"] == 6 * 2 * 20
    e = r["e2e_ms"]
    assert r["e2e_samples"] > 0 and 0 <= e["p50"] <= e["p95"] <= e["p99"] <= e["max"]
    t = r["tick_ms"]
    assert 0 < t["p50"] <= t["p99"]
    assert r["msgs_sent"] > 6 * 2 * 20 * 0.9 and r["bytes_in_per_s"] > r["bytes_out_per_s"] > 0
    assert r["server_cpu_s_per_s"] is not None and r["server_cpu_s_per_s"] > 0


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


def test_cli_refuses_a_missing_server(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--url", "ws://127.0.0.1:1/", "--clients", "1", "--duration", "1"])
    assert e.value.code == 1
    assert "http://127.0.0.1:1/metrics" in capsys.readouterr().err


def test_run_refuses_a_missing_server_with_oserror():
    with pytest.raises(OSError):
        run("ws://127.0.0.1:1/", 1, duration=1.0)
