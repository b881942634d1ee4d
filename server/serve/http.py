"""Plain HTTP GETs on the WebSocket port: health, metrics, room routing, the viewer.

`HttpRoutes.reply(path)` is what a transport calls for a request that is not a WebSocket
upgrade. It never raises: an unknown path is a 404, a failing added route a 500.

    /healthz            "ok"
    /metrics            Prometheus exposition (server.serve.metrics)
    /route?room=R       where a client of room R connects (server.cluster.member)
    /experts?room=R     the blend's weight of each expert per avatar of room R, now
    / /index.html /viewer/...   the browser viewer (client_demo/viewer)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs, urlsplit

import numpy as np

from server.core.blend import EXPERTS
from server.core.world import World
from server.serve.metrics import Metrics
from server.serve.transports import HttpReply

if TYPE_CHECKING:
    from server.cluster.member import ClusterMember

log = logging.getLogger("avatar_stream")

RouteHandler = Callable[[str], tuple[int, str, bytes]]

VIEWER_DIR = Path(__file__).resolve().parents[2] / "client_demo" / "viewer"
OWN_PATHS = ("/", "/index.html", "/healthz", "/metrics", "/experts")  # /route may be replaced
_TEXT = "text/plain; charset=utf-8"
_CORS = (("Access-Control-Allow-Origin", "*"),)


class HttpSource(Protocol):
    """What the routes read of the server when a request comes."""

    world: World | None
    cluster: ClusterMember | None
    metrics: Metrics

    @property
    def url(self) -> str: ...


class HttpRoutes:
    """The server's HTTP GET routes, plus those added with `add`."""

    def __init__(self, server: HttpSource) -> None:
        self.server = server
        self._added: dict[str, RouteHandler] = {}

    def add(self, path: str, handler: RouteHandler) -> None:
        """Serve HTTP GET `path` (exact, query string ignored for matching) with `handler`.

        `handler(path_with_query)` returns (status, content_type, body) and must not block;
        an exception in it gives a 500. Raises ValueError for a path the server owns.
        """
        if path in OWN_PATHS or path.startswith("/viewer/"):
            raise ValueError(f"{path} is served by the server itself")
        self._added[path] = handler

    def reply(self, path: str) -> HttpReply:
        """The reply to a plain HTTP GET of `path` (transports call this; never raises)."""
        route = path.split("?", 1)[0]
        if route == "/healthz":
            return HttpReply(200, _TEXT, b"ok\n")
        if route == "/metrics":
            return HttpReply(200, *self.server.metrics.exposition())
        if route in ("/", "/index.html") or route.startswith("/viewer/"):
            return self._static(route)
        if route in self._added:
            try:
                return HttpReply(*self._added[route](path))
            except Exception:
                log.exception("route %s failed", route)
                return HttpReply(500, _TEXT, b"error\n")
        if route == "/route":
            return self._route(path)
        if route == "/experts":
            return self._experts(path)
        return HttpReply(404, _TEXT, b"not found\n")

    def _route(self, path: str) -> HttpReply:
        """GET /route?room=R: where a client of room R connects. One process serves every
        room itself: {"url": null} ("the URL you asked"). A cluster worker: see
        server.cluster.member. Readable from any origin (CORS *)."""
        url = None
        cluster = self.server.cluster
        if cluster is not None:
            room = parse_qs(urlsplit(path).query).get("room", [""])[0]
            if not room:
                return HttpReply(400, _TEXT, b"route needs ?room=NAME\n")
            url = cluster.route(room)
        body = json.dumps({"url": url}).encode()
        # a web app on another origin looks rooms up too (the WebSocket checks its origin)
        return HttpReply(200, "application/json", body, _CORS)

    def _experts(self, path: str) -> HttpReply:
        """GET /experts?room=R: the weight the online blend gives each expert now, per
        avatar of room R (averaged over the horizons): {"experts": [...], "avatars": {id:
        [w, ...]}}; {"avatars": {}} with the blend off or no such room."""
        room = parse_qs(urlsplit(path).query).get("room", [""])[0]
        w = self.server.world
        out: dict = {"experts": list(EXPERTS), "avatars": {}}
        r = w.rooms.get(room) if w is not None else None
        if r is not None and w.engine.blend is not None and w.engine.model is not None:
            latest = w.engine.predictions()
            for avatar, m in r.players.items():
                if m.slot >= 0 and not np.isnan(latest.t[m.slot]):
                    out["avatars"][avatar] = np.round(latest.weights[m.slot], 3).tolist()
        body = json.dumps(out).encode()
        return HttpReply(200, "application/json", body, _CORS)

    def _static(self, path: str) -> HttpReply:
        name = "index.html" if path in ("/", "/index.html") else path.removeprefix("/viewer/")
        target = (VIEWER_DIR / name).resolve()
        if VIEWER_DIR in target.parents and target.is_file():
            kind = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}.get(
                target.suffix, "application/octet-stream"
            )
            return HttpReply(200, kind + "; charset=utf-8", target.read_bytes())
        body = (
            f"avatar-stream: connect a WebSocket client to {self.server.url} "
            "(protocol: docs/protocol.md); /metrics, /healthz\n"
        ).encode()
        return HttpReply(200, _TEXT, body)
