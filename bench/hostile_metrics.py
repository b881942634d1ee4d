"""The bench's figures from the server's /metrics: histogram quantiles, counter deltas and
gauges over a window, waiting for gauges to settle, and one measured window. Part of
`bench/hostile.py`."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import Counter
from collections.abc import Awaitable

from hostile_good import Window
from hostile_server import Server

from client_demo.loadtest import bucket_quantiles


async def metrics(srv: Server) -> dict[str, float]:
    """`Server.metrics` off the loop (in a thread)."""
    return await asyncio.to_thread(srv.metrics)


def quantiles(m0: dict, m1: dict, name: str, qs: tuple[float, ...] = (0.5, 0.99)) -> dict:
    """Quantiles (ms) of a histogram over the window between two scrapes (interpolated
    within buckets, as Prometheus' histogram_quantile)."""
    pat = re.compile(rf'^{name}_bucket{{le="([^"]+)"}}$')
    rows = sorted(
        (math.inf if pat.match(k).group(1) == "+Inf" else float(pat.match(k).group(1)),
         v - m0.get(k, 0.0))
        for k, v in m1.items() if pat.match(k)
    )  # fmt: skip
    out = {"n": int(rows[-1][1]) if rows else 0}
    for k, v in bucket_quantiles(rows, qs).items():
        out[k] = None if v is None else round(v, 3)
    return out


def delta(m0: dict, m1: dict, key: str) -> float:
    """How much counter `key` grew from scrape `m0` to scrape `m1`."""
    return m1.get(key, 0.0) - m0.get(key, 0.0)


def errors_by_code(m0: dict, m1: dict) -> dict[str, int]:
    """The protocol errors counted between two scrapes, by code (codes with none left out)."""
    out = {}
    for k, v in m1.items():
        m = re.match(r'^avatar_protocol_errors_total{code="([^"]+)"}$', k)
        if m and v - m0.get(k, 0.0):
            out[m.group(1)] = int(v - m0.get(k, 0.0))
    return out


def gauges(m: dict) -> dict[str, float]:
    """The counts that must go back to where they were: connections by kind, detached,
    avatars, rooms."""
    return {
        "players": m.get('avatar_connections{kind="player"}', 0.0),
        "spectators": m.get('avatar_connections{kind="spectator"}', 0.0),
        "pending": m.get('avatar_connections{kind="pending"}', 0.0),
        "detached": m.get("avatar_detached", 0.0),
        "avatars": m.get("avatar_avatars", 0.0),
        "rooms": m.get("avatar_rooms", 0.0),
    }


async def sample_peaks(srv: Server, stop: asyncio.Event, every: float = 0.2) -> dict:
    """The largest value of each gauge (and of all connections) every `every` s until `stop`."""
    peak: Counter = Counter()
    while not stop.is_set():
        g = gauges(await metrics(srv))
        g["connections"] = g["players"] + g["spectators"] + g["pending"]
        for k, v in g.items():
            peak[k] = max(peak[k], v)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    return dict(peak)


async def settle(srv: Server, want: dict, seconds: float) -> tuple[dict, float]:
    """Poll /metrics until every gauge in `want` has its value, for at most `seconds`."""
    t0 = time.perf_counter()
    while True:
        g = gauges(await metrics(srv))
        if all(g[k] == v for k, v in want.items()) or time.perf_counter() - t0 > seconds:
            return g, round(time.perf_counter() - t0, 2)
        await asyncio.sleep(0.1)


async def measure(
    srv: Server, window: Window, name: str, seconds: float, work: Awaitable | None = None
) -> dict:
    """One window: /metrics before and after `seconds` (while `work` runs, if any)."""
    m0 = await metrics(srv)
    window.open(name)
    t0 = time.perf_counter()
    extra = await work if work is not None else None
    await asyncio.sleep(max(0.0, seconds - (time.perf_counter() - t0)))
    window.close()
    m1 = await metrics(srv)
    out = {
        "seconds": round(time.perf_counter() - t0, 2),
        "tick_ms": quantiles(m0, m1, "avatar_tick_seconds"),
        "model_step_ms": quantiles(m0, m1, "avatar_model_step_seconds"),
        "overruns": int(delta(m0, m1, "avatar_tick_overruns_total")),
        "dropped_frames": int(delta(m0, m1, "avatar_frames_dropped_total")),
        "rate_dropped": int(delta(m0, m1, "avatar_messages_rate_dropped_total")),
        "tick_errors": int(delta(m0, m1, "avatar_tick_errors_total")),
        "protocol_errors": errors_by_code(m0, m1),
        "good": window.fraction(name),
        "server_mem_mb": srv.rss_mb(),
    }
    if extra is not None:
        out["hostile"] = extra
    return out
