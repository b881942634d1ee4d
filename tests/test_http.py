"""HTTP GET routes on the WebSocket port (server.serve.http): `HttpRoutes.reply` on its own
over a tiny source, and end to end on a real server (127.0.0.1, port 0) per transport."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from server.core.blend import EXPERTS
from server.serve.http import VIEWER_DIR, HttpRoutes
from tests.app_helpers import Client, fetch, get
from tests.servers import running


class FakeMetrics:
    def exposition(self) -> tuple[str, bytes]:
        return "text/plain; version=0.0.4", b"fake_metric 1.0\n"


class FakeCluster:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def route(self, room: str) -> str:
        self.asked.append(room)
        return f"ws://worker/{room}"


def routes(cluster=None) -> HttpRoutes:
    source = SimpleNamespace(world=None, cluster=cluster, metrics=FakeMetrics(), url="ws://h:1/")
    return HttpRoutes(source)


# -- HttpRoutes.reply on its own -----------------------------------------------------------


def test_reply_health_metrics_and_unknown_paths():
    r = routes()
    assert r.reply("/healthz")[:3] == (200, "text/plain; charset=utf-8", b"ok\n")
    assert r.reply("/metrics?x=1")[:3] == (200, "text/plain; version=0.0.4", b"fake_metric 1.0\n")
    for path in ("/nope", "/healthz/extra", "/viewerx"):
        assert r.reply(path).status == 404, path


def test_added_routes_answer_with_the_query_a_failing_one_is_a_500():
    r = routes()
    r.add("/echo", lambda p: (201, "text/plain", p.encode()))
    r.add("/boom", lambda p: 1 / 0)
    assert r.reply("/echo?a=1")[:3] == (201, "text/plain", b"/echo?a=1")
    assert r.reply("/boom").status == 500  # logged, never raised
    r.add("/route", lambda p: (200, "application/json", b'{"url": "ws://mine/"}'))
    assert r.reply("/route?room=x").body == b'{"url": "ws://mine/"}'  # /route may be replaced


@pytest.mark.parametrize(
    "path", ["/", "/index.html", "/healthz", "/metrics", "/experts", "/viewer/a.js"]
)
def test_adding_a_path_the_server_owns_raises_value_error(path):
    r = routes()
    with pytest.raises(ValueError):
        r.add(path, lambda p: (200, "text/plain", b""))
    assert r.reply("/healthz").status == 200  # nothing replaced


def test_route_of_one_process_and_of_a_cluster_worker():
    one = routes().reply("/route?room=lobby")
    assert (one.status, json.loads(one.body)) == (200, {"url": None})
    assert ("Access-Control-Allow-Origin", "*") in one.headers
    cluster = FakeCluster()
    r = routes(cluster)
    worker = r.reply("/route?room=hall")
    assert json.loads(worker.body) == {"url": "ws://worker/hall"} and cluster.asked == ["hall"]
    assert r.reply("/route").status == 400 and cluster.asked == ["hall"]  # no room given


def test_experts_without_a_world_has_no_avatars():
    reply = routes().reply("/experts?room=lobby")
    assert reply.status == 200
    assert json.loads(reply.body) == {"experts": list(EXPERTS), "avatars": {}}


def test_viewer_static_files_and_nothing_outside_them():
    r = routes()
    for path in ("/", "/index.html"):
        reply = r.reply(path)
        assert reply.status == 200 and reply.content_type == "text/html; charset=utf-8"
        assert reply.body == (VIEWER_DIR / "index.html").read_bytes()
    js = r.reply("/viewer/viewer.js")
    assert js.content_type == "text/javascript; charset=utf-8"
    assert js.body == (VIEWER_DIR / "viewer.js").read_bytes()
    # a path out of the viewer's folder (a file that exists there) is never read
    assert (VIEWER_DIR / "../../pyproject.toml").resolve().is_file()
    for path in ("/viewer/../../pyproject.toml", "/viewer/missing.js"):
        reply = r.reply(path)
        assert reply.content_type == "text/plain; charset=utf-8", path
        assert b"ws://h:1/" in reply.body and b"[project]" not in reply.body


# -- end to end ----------------------------------------------------------------------------


@pytest.mark.usefixtures("transport")
async def test_http_endpoints_share_the_port():
    async with running() as srv:
        c = await Client.open(srv, avatar="a")
        await c.pos(0, 1.0, (0, 0))
        await c.state_where(lambda s: len(s) == 1)
        assert (await fetch(srv, "/healthz")).strip() == "ok"
        status, headers, body = await get(srv, "/metrics")
        assert status == 200 and headers["Content-Type"] == CONTENT_TYPE_LATEST
        assert b"avatar_ticks_total" in body
        assert "avatar-stream" in await fetch(srv, "/")
        await c.close()


@pytest.mark.usefixtures("transport")
async def test_route_of_one_process_is_the_url_asked_and_readable_from_any_origin():
    async with running() as srv:

        def get():
            url = f"http://127.0.0.1:{srv.port}/route?room=lobby"
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.headers.get("Access-Control-Allow-Origin"), json.loads(r.read())

        cors, body = await asyncio.to_thread(get)
        assert body == {"url": None} and cors == "*"


@pytest.mark.usefixtures("transport")
async def test_extra_routes():
    async with running() as srv:
        srv.add_route("/demo/echo", lambda p: (200, "text/plain", p.encode()))
        srv.add_route("/demo/boom", lambda p: 1 / 0)
        assert await fetch(srv, "/demo/echo?x=1") == "/demo/echo?x=1"
        with pytest.raises(urllib.error.HTTPError) as e:
            await fetch(srv, "/demo/boom")
        assert e.value.code == 500
        e.value.close()  # the error holds the HTTP connection open
        with pytest.raises(ValueError):
            srv.add_route("/metrics", lambda p: (200, "text/plain", b""))


@pytest.mark.usefixtures("transport")
async def test_experts_give_the_blend_weights_of_each_avatar_of_a_room():
    """/experts?room=R: the blend's weights of each avatar of R now, summing to 1."""
    async with running() as srv:
        a = await Client.open(srv, avatar="a")
        b = await Client.open(srv, avatar="b")
        for k in range(8):
            await a.pos(k, 0.05 * k, (0.1 * k, 0, 0))
            await b.pos(k, 0.05 * k, (0, 0.1 * k, 0))
        await a.state_where(lambda s: len(s) == 2 and (s.seq == 7).all())
        got = json.loads(await fetch(srv, "/experts?room=lobby"))
        assert got["experts"] == list(EXPERTS) and set(got["avatars"]) == {"a", "b"}
        for w in got["avatars"].values():
            assert len(w) == len(EXPERTS) and sum(w) == pytest.approx(1.0, abs=0.01)
        assert json.loads(await fetch(srv, "/experts?room=nowhere"))["avatars"] == {}
        await a.close()
        await b.close()
