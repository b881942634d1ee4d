"""The browser viewer (client_demo/viewer) in headless Chromium, against the real server.

Four bots walk circles in room "demo"; the test serves their true positions at
/demo/truth and a comparison table at /demo/compare (the demo's own route function), opens
the viewer as a spectator and reads what it draws from `window.avatarViewer`. A second test checks the JS decoder and dead reckoner against
the Python protocol code, with no server (Playwright serves the module files).

Needs Debian's chromium at /usr/bin/chromium (scripts/test.sh installs it) and the
`playwright` Python package (dev extra); `playwright install` is not used. Without chromium
the tests skip, except under CI (env CI set), where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from websockets.asyncio.client import connect

from server.core import protocol as P
from server.core.blend import EXPERTS
from server.core.downlink import path_at
from server.serve.app import AvatarServer
from tests.servers import running

ROOT = Path(__file__).resolve().parents[1]
VIEWER = ROOT / "client_demo" / "viewer"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 8000  # every wait in the page is bounded

ROOM = "demo"
RADIUS = 3.0  # m
OMEGA = 0.5  # rad/s: 1.5 m/s along the circle
BOTS = {  # name -> (centre x, centre y, direction)
    "ava": (-6.0, 4.0, 1),
    "bob": (6.0, 4.0, -1),
    "cy": (-6.0, -4.0, -1),
    "dee": (6.0, -4.0, 1),
}
MAX_SAMPLES = 400  # a bot's loop is bounded: 20 s at 20 Hz
SEND_PERIOD = 0.05


def true_pos(name: str, t: float) -> tuple[float, float]:
    """Where bot `name` is at monotonic time t."""
    cx, cy, sign = BOTS[name]
    phase = sign * OMEGA * t + list(BOTS).index(name) * math.pi / 2
    return cx + RADIUS * math.cos(phase), cy + RADIUS * math.sin(phase)


def need_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} not found (Debian: apt-get install -y chromium; scripts/test.sh does it as root)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI is set, so the browser tests must run")
    pytest.skip(reason)


@contextlib.asynccontextmanager
async def browser_page():
    from playwright.async_api import async_playwright  # dev extra; imported after the skip check

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True, timeout=WAIT_MS
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(WAIT_MS)
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text} ({m.location.get('url')})")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            yield page, problems
        finally:
            await browser.close()


# -- server with a truth route ---------------------------------------------------------------


def truth_handler(srv: AvatarServer):
    def handler(path_with_query: str) -> tuple[int, str, bytes]:
        room = parse_qs(urlsplit(path_with_query).query).get("room", [""])[0]
        if room != ROOM:
            return 404, "text/plain; charset=utf-8", b"no such demo room\n"
        server_time, t = srv.clock(), time.monotonic()
        avatars = {name: [*true_pos(name, t), 0.0] for name in BOTS}
        body = json.dumps({"server_time": server_time, "avatars": avatars}).encode()
        return 200, "application/json", body

    return handler


COMPARE_MEANS = {"gru": 0.1, "kalman": 0.2, "cv": 0.3, "interp": 0.4, "hold": 0.5}


def compare_handler():
    """/demo/compare as the demo serves it (`client_demo.__main__.compare_route`), for a
    meter with known errors and one bot's traffic over 10 s."""
    from client_demo.routes import compare_route
    from client_demo.scoring import METHODS, Meter

    assert list(COMPARE_MEANS) == list(METHODS)
    meter = Meter()
    for m, e in COMPARE_MEANS.items():
        meter.add(m, np.full(300, e), np.ones(300, dtype=bool))
    client = SimpleNamespace(bytes_in=40_000, records_in=550, welcome=SimpleNamespace(v=2))
    bots = [SimpleNamespace(client=client, relay_bytes=74_000, relay_records=2_950, view_bytes=0)]
    started = [time.monotonic() - 10.0]
    return lambda path: compare_route(meter, bots, started, path, ROOM)


async def bot(srv: AvatarServer, name: str, stop: asyncio.Event) -> None:
    """Say hello as `name`, then send its circle every 50 ms until `stop` (bounded)."""
    async with connect(srv.url, max_size=2**22) as ws:
        await ws.send(P.encode_client(P.Hello(room=ROOM, avatar=name)))
        assert isinstance(P.decode_server(await ws.recv()), P.Welcome)

        async def drain() -> None:  # read our frames, or the server calls us too_slow
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        try:
            for seq in range(MAX_SAMPLES):
                t = time.monotonic()
                await ws.send(P.encode_client(P.Pos(seq=seq, t=t, p=(*true_pos(name, t), 0.0))))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), SEND_PERIOD)
                if stop.is_set():
                    break
        finally:
            reader.cancel()


# -- tests ----------------------------------------------------------------------------------------

DRAWN = "() => Object.fromEntries(window.avatarViewer.drawn)"
MOVED = """(prev) => {
  const d = window.avatarViewer.drawn;
  return Object.keys(prev).every((id) => {
    const p = d.get(id);
    return p && Math.hypot(p[0] - prev[id][0], p[1] - prev[id][1]) > 0.05;
  });
}"""
COMPARE_ROWS = """() => Array.from(document.querySelectorAll("#cmp tbody tr"),
  (tr) => Array.from(tr.children, (td) => td.textContent))"""
ERROR_SHOWN = """() => {
  const e = document.getElementById("err");
  return !e.hidden && Number.isFinite(parseFloat(e.textContent))
    && window.avatarViewer.errors.window.length >= 10;
}"""


async def test_viewer_draws_live_avatars_with_truth():
    need_chromium()
    t0 = time.perf_counter()

    def with_truth(srv: AvatarServer) -> None:
        srv.add_route("/demo/truth", truth_handler(srv))  # what the demo serves
        srv.add_route("/demo/compare", compare_handler())

    async with running(with_truth, tick_hz=20.0) as srv, browser_page() as (page, problems):
        stop = asyncio.Event()
        bots = [asyncio.create_task(bot(srv, name, stop)) for name in BOTS]
        try:
            await page.goto(f"http://127.0.0.1:{srv.port}/?room={ROOM}")
            await page.wait_for_function(
                "() => window.avatarViewer && window.avatarViewer.drawn.size === 4"
            )
            first = await page.evaluate(DRAWN)
            await page.wait_for_function(MOVED, arg=first)
            second, t_page = await page.evaluate(
                "() => [Object.fromEntries(window.avatarViewer.drawn), window.avatarViewer.stream.serverNow()]"
            )
            assert set(first) == set(second) == set(BOTS), problems

            # drawn positions: finite, moving, on their circles, near the truth right now
            base = srv.clock() - time.monotonic()  # server clock = base + monotonic
            for name, (x, y) in second.items():
                cx, cy, _ = BOTS[name]
                assert math.isfinite(x) and math.isfinite(y), (name, x, y)
                assert math.dist((x, y), first[name]) > 0.05, name
                assert abs(math.dist((x, y), (cx, cy)) - RADIUS) < 0.75, (name, x, y)
                assert math.dist((x, y), true_pos(name, t_page - base)) < 1.0, (name, x, y)

            # the clock mapping: the page's server time is the server's (same machine)
            await page.wait_for_function("() => window.avatarViewer.stream.stats.rttMs !== null")
            before = srv.clock()
            t_page, rtt_ms = await page.evaluate(
                "() => [window.avatarViewer.stream.serverNow(), window.avatarViewer.stream.stats.rttMs]"
            )
            after = srv.clock()
            # An offset estimated over a round trip is known to half that round trip.
            slack = 0.03 + rtt_ms / 2000.0
            assert before - slack <= t_page <= after + slack, (before, t_page, after, rtt_ms)

            # the panel: truth error, tick rate, frame size
            await page.wait_for_function(ERROR_SHOWN)
            err_text = await page.text_content("#err")
            err = float(err_text.split()[0])
            assert math.isfinite(err) and 0 <= err < 1.0, err_text
            stats = await page.evaluate("() => window.avatarViewer.stream.stats")
            assert stats["frames"] > 0 and stats["records"] >= 4, stats
            assert 5 < stats["tickHz"] < 40, stats  # from tick numbers: v2 skips ticks
            assert stats["recordsPerS"] > 0 and stats["bytesPerS"] > 60 * stats["recordsPerS"]
            assert "rec/s" in await page.text_content("#downlink")
            assert await page.text_content("#model") == srv.world.engine.version

            # the demo's comparison: one row per method, as the route serves it
            await page.wait_for_function(
                "() => !document.getElementById('compare').hidden"
                " && document.querySelectorAll('#cmp tbody tr').length === 5"
            )
            rows = await page.evaluate(COMPARE_ROWS)
            assert [r[0] for r in rows] == list(COMPARE_MEANS), rows
            assert [float(r[1]) for r in rows] == list(COMPARE_MEANS.values()), rows
            for r in rows:  # p95 of a constant is its 1 mm bin; 10 s of traffic
                assert float(r[2]) >= float(r[1]) and float(r[3]) > 0 and float(r[4]) > 0, r
            assert rows[0][3:] != rows[1][3:]  # gru: its own feed; the rest share the relay's
            assert len({tuple(r[3:]) for r in rows[1:]}) == 1, rows

            # the online blend's weights per avatar (GET /experts): the trusted expert, labelled
            await page.wait_for_function(
                "() => Object.keys(Object.fromEntries(window.avatarViewer.drawn))"
                ".every((id) => window.avatarViewer.expertLabel(id) !== '')"
            )
            labels = await page.evaluate(
                "() => [...window.avatarViewer.drawn.keys()].map(window.avatarViewer.expertLabel)"
            )
            for label in labels:
                name, weight = label.split()
                assert name in EXPERTS and 1 / len(EXPERTS) <= float(weight) <= 1.0, labels

            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "viewer.png"))
        finally:
            stop.set()
            results = await asyncio.gather(*bots, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
    assert not problems, problems
    assert time.perf_counter() - t0 < 30


def _module_server(page):
    """Serve client_demo/viewer at http://viewer.test/ from the page's own network layer."""

    async def fulfil(route) -> None:
        path = urlsplit(route.request.url).path.lstrip("/") or "probe.html"
        if path == "probe.html":
            return await route.fulfill(
                body="<!doctype html><title>probe</title>", content_type="text/html"
            )
        target = (VIEWER / path).resolve()
        if VIEWER not in target.parents or not target.is_file():
            return await route.fulfill(status=404, body="not found")
        return await route.fulfill(body=target.read_bytes(), content_type="text/javascript")

    return page.route("http://viewer.test/**", fulfil)


DECODE = """async ({ frame, horizons }) => {
  const { decodeStateRecords } = await import("/avatarstream.js");
  const { decode } = await import("/vendor/msgpack.js");
  const m = decode(new Uint8Array(frame));
  return decodeStateRecords(m, horizons).map((r) => ({
    handle: r.handle, age: r.age, seq: r.seq, pos: r.pos, anchor: r.anchor,
    times: Array.from(r.times), points: Array.from(r.points),
  }));
}"""

RECKON = """async () => {
  const { DeadReckoner } = await import("/avatarstream.js");
  const dr = new DeadReckoner({ blend: 0.2 });
  const a = { anchor: 10, seq: 1, times: [10, 10.5, 11], points: [0, 0, 0, 1, 0, 0, 2, 0, 0] };
  dr.update("a", a, 10.1);
  const at = (t) => dr.positionAt("a", t);
  const out = { before: at(9), mid: at(10.25), end: at(11), extra: at(11.25), held: at(12), later: at(20) };
  out.same = dr.update("a", { ...a, anchor: 10.0004 }, 10.2);     // same anchor again: no-op
  out.older = dr.update("a", { ...a, anchor: 9.5, seq: 0 }, 10.2); // older: no-op
  const b = { anchor: 10.5, seq: 2, times: [10.5, 11, 11.5], points: [1, 1, 0, 2, 1, 0, 3, 1, 0] };
  out.fresh = dr.update("a", b, 10.6);
  out.blend = [10.6, 10.7, 10.8, 10.9].map(at);   // from (1.2, 0) onto the new path over 0.2 s
  out.unknown = dr.positionAt("nobody", 10);
  return out;
}"""


async def test_js_decoder_and_reckoner():
    need_chromium()
    rng = np.random.default_rng(7)
    horizons = [round(0.1 * (k + 1), 1) for k in range(10)]
    async with browser_page() as (page, problems):
        await _module_server(page)
        await page.goto("http://viewer.test/probe.html")
        for dims in (2, 3):
            n = 5
            offsets = rng.uniform(-3, 3, (n, len(horizons), 3))
            rec = P.pack_records(
                handle=np.arange(n) * 7 + 1,
                age_s=rng.uniform(0, 0.2, n),
                seq=rng.integers(0, 2**32, n),
                pos=rng.uniform(-500, 500, (n, 3)),
                offsets=offsets,
                dims=dims,
            )
            frame = P.encode_state(42, 1767225612.5, rec, n, len(horizons), dims)
            expect = P.decode_server(frame)
            got = await page.evaluate(DECODE, {"frame": list(frame), "horizons": horizons})
            assert [r["handle"] for r in got] == expect.handle.tolist()
            assert [r["seq"] for r in got] == expect.seq.tolist()
            np.testing.assert_allclose([r["age"] for r in got], expect.age, atol=1e-9)
            np.testing.assert_allclose([r["pos"] for r in got], expect.pos, rtol=1e-7)
            anchor = expect.server_time - expect.age
            np.testing.assert_allclose([r["anchor"] for r in got], anchor, rtol=1e-15)
            times = anchor[:, None] + np.array([0.0, *horizons])
            np.testing.assert_allclose([r["times"] for r in got], times, rtol=1e-15)
            points = np.concatenate(
                [expect.pos[:, None, :], expect.pos[:, None, :] + expect.offsets], axis=1
            )
            np.testing.assert_allclose([r["points"] for r in got], points.reshape(n, -1), atol=1e-4)

        r = await page.evaluate(RECKON)
        np.testing.assert_allclose(r["before"], [0, 0, 0])
        np.testing.assert_allclose(r["mid"], [0.5, 0, 0])
        np.testing.assert_allclose(r["end"], [2, 0, 0])
        np.testing.assert_allclose(r["extra"], [2.5, 0, 0])  # last segment's velocity ...
        np.testing.assert_allclose(r["held"], [3, 0, 0])  # ... for 0.5 s, then hold
        np.testing.assert_allclose(r["later"], [3, 0, 0])
        # what the server assumes a client draws when it decides not to resend (protocol v2)
        pos, off = np.zeros((1, 3)), np.array([[[1.0, 0, 0], [2.0, 0, 0]]])
        for key, t in (("before", 9), ("mid", 10.25), ("end", 11), ("extra", 11.25), ("held", 12)):
            want = path_at(pos, off, [0.5, 1.0], np.array([t - 10.0]))[0]
            np.testing.assert_allclose(r[key], want, atol=1e-12)
        assert r["same"] is False and r["older"] is False and r["fresh"] is True
        s = 0.5  # smoothstep(0.5) = 0.5: halfway through the blend
        np.testing.assert_allclose(r["blend"][0], [1.2, 0, 0], atol=1e-12)
        np.testing.assert_allclose(r["blend"][1], [1.4, 1 - s, 0], atol=1e-12)
        np.testing.assert_allclose(r["blend"][2], [1.6, 1, 0], atol=1e-12)
        np.testing.assert_allclose(r["blend"][3], [1.8, 1, 0], atol=1e-12)
        assert r["unknown"] is None
    assert not problems, problems


STREAM_OPEN_AT = """(url) => {
  const s = window.avatarViewer && window.avatarViewer.stream;
  return s && s.state === "open" && s.servedBy === url;
}"""


async def test_viewer_follows_its_room_when_its_worker_drains(redis_url):
    """Two cluster workers on a real Redis: the viewer watches a room on w1; w1 drains
    (SIGTERM): close 4001, no error message, and the viewer looks the room up and goes on
    at w0 by itself."""
    need_chromium()
    cluster = {"redis": redis_url, "directory_ttl": 0.8, "predictor": "cv", "tick_hz": 20.0}
    async with running(**cluster) as w0:
        w1_cm = running(**cluster)
        w1 = await w1_cm.__aenter__()
        try:
            await w0.cluster.next_beat()
            await w1.cluster.next_beat()  # each sees the other
            async with (
                connect(w1.url) as holder,  # places "hall" on w1 (its claim at hello)
                browser_page() as (page, problems),
            ):
                await holder.send(P.encode_client(P.Hello(room="hall", avatar="holder")))
                assert isinstance(P.decode_server(await holder.recv()), P.Welcome)
                await page.goto(f"http://127.0.0.1:{w1.port}/?room=hall")
                await page.wait_for_function(STREAM_OPEN_AT, arg=w1.url)
                w1.request_shutdown()  # what SIGTERM does: drain
                await page.wait_for_function(STREAM_OPEN_AT, arg=w0.url)
                last_error = await page.evaluate("() => window.avatarViewer.stream.stats.lastError")
                assert last_error is None  # a drain is not an error
                assert w0.world.rooms["hall"].spectators
                # no demo here: the viewer's optional /demo/truth and /demo/compare answer
                # 404, nothing else
                assert not [p for p in problems if "/demo/" not in p], problems
        finally:
            await w1_cm.__aexit__(None, None, None)
