"""The demo's HTTP routes on the embedded server, for the browser viewer: the bots' true
positions (/demo/truth) and the comparison table so far (/demo/compare)."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

from client_demo.compare import scoreboard
from client_demo.players import Bot, Motion
from client_demo.scoring import Meter


def _other_room(path: str, room: str) -> bool:
    return parse_qs(urlsplit(path).query).get("room", [room])[0] != room


def truth_route(
    server, motion: Motion, bots: list[Bot], path: str, room: str
) -> tuple[int, str, bytes]:
    """GET /demo/truth?room=R: every bot's true position now (for the viewer); 404 elsewhere."""
    if _other_room(path, room):
        return 404, "text/plain; charset=utf-8", b"no demo bots in that room\n"
    now = time.monotonic()
    body = {
        "server_time": server.clock(),
        "avatars": {b.name: [round(float(v), 4) for v in motion.at(b.index, now)] for b in bots},
    }
    return 200, "application/json", json.dumps(body).encode()


def compare_route(
    meter: Meter, bots: list[Bot], started_at: list[float], path: str, room: str
) -> tuple[int, str, bytes]:
    """GET /demo/compare?room=R: the demo's table so far (`scoreboard`, for the viewer):
    {"elapsed_s", "bots", "methods": [{method, feed, mean, p95, n, kB_per_s,
    records_per_s}, ...]}; 404 for another room."""
    if _other_room(path, room):
        return 404, "text/plain; charset=utf-8", b"no demo bots in that room\n"
    elapsed = time.monotonic() - started_at[0] if started_at else 0.0
    body = {"elapsed_s": elapsed, "bots": len(bots), "methods": scoreboard(meter, bots, elapsed)}
    return 200, "application/json", json.dumps(body).encode()
