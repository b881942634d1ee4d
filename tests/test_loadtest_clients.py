"""The load clients (`client_demo.loadtest.clients`) without a server: what a refused or
unreachable hello counts as (its error kind, close code, the moves followed), and what one
received frame adds to a client's figures. (Real connections: tests/test_loadtest.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from client_demo.loadtest import clients
from client_demo.loadtest.clients import Conn, on_frame
from client_demo.loadtest.job import WorkerJob
from client_demo.wsclient import MAX_MOVES, STATE_PREFIX
from server.core import protocol as P

WELCOME = P.Welcome(avatar="c000000", room="load0", tick_hz=20.0, horizons=(0.1,), model="cv",
                    server_time=1.0, resume="x", handle=3)  # fmt: skip


def job(route: bool) -> WorkerJob:
    room_urls = {"load0": "ws://w0/", "load1": "ws://w1/"} if route else None
    return WorkerJob("ws://entry/", 0, 2, 2, 20.0, 1.0, 0.5, 2, 30.0, 1, 0, room_urls=room_urls)


def answers(table: dict):
    """An open_hello answering from `table` {url: reply or exception}; logs the URLs."""
    asked: list[str] = []

    async def open_hello(url: str):
        asked.append(url)
        reply = table[url]
        if isinstance(reply, BaseException):
            raise reply
        return "conn", reply, None if isinstance(reply, P.Welcome) else 4001

    return open_hello, asked


def moved(url):
    return P.Error("moved", "elsewhere", url)


async def test_a_welcomed_client_goes_to_its_rooms_worker_with_route():
    c = Conn(0, 0, 0.0, 0.0, False)
    open_hello, asked = answers({"ws://w0/": WELCOME})
    got = await clients._dial(job(route=True), c, open_hello)
    assert got.welcome == WELCOME and asked == ["ws://w0/"] and c.stats.error is None
    open_hello, asked = answers({"ws://entry/": WELCOME})
    assert (await clients._dial(job(route=False), Conn(1, 0, 0, 0, False), open_hello)).welcome
    assert asked == ["ws://entry/"]  # without --route: --url


async def test_moved_is_followed_with_route_and_an_error_without(monkeypatch):
    c = Conn(0, 0, 0.0, 0.0, False)
    open_hello, asked = answers({"ws://w0/": moved("ws://w1/"), "ws://w1/": WELCOME})
    assert (await clients._dial(job(route=True), c, open_hello)).welcome == WELCOME
    assert asked == ["ws://w0/", "ws://w1/"] and c.stats.moves == 1
    c = Conn(0, 0, 0.0, 0.0, False)
    open_hello, _ = answers({"ws://entry/": moved("ws://w1/")})
    assert await clients._dial(job(route=False), c, open_hello) is None
    assert c.stats.error == "moved" and c.stats.close_code == 4001 and c.stats.moves == 0
    # a loop: MAX_MOVES hops, then "moved" is its error
    c = Conn(0, 0, 0.0, 0.0, False)
    open_hello, asked = answers({"ws://w0/": moved("ws://w1/"), "ws://w1/": moved("ws://w0/")})
    assert await clients._dial(job(route=True), c, open_hello) is None
    assert c.stats.error == "moved" and c.stats.moves == MAX_MOVES == len(asked) - 1
    # a `moved` without a url: the room looked up again on --url; that failing is its error
    looked = []

    def route_url(url, room, timeout=5.0):
        looked.append((url, room))
        return "ws://w1/"

    monkeypatch.setattr(clients.wsclient, "route_url", route_url)
    c = Conn(0, 0, 0.0, 0.0, False)
    open_hello, asked = answers({"ws://w0/": moved(None), "ws://w1/": WELCOME})
    assert (await clients._dial(job(route=True), c, open_hello)).welcome == WELCOME
    assert looked == [("ws://entry/", "load0")] and asked[-1] == "ws://w1/"

    def unreachable(url, room, timeout=5.0):
        raise OSError("GET /route: refused")

    monkeypatch.setattr(clients.wsclient, "route_url", unreachable)
    c = Conn(0, 0, 0.0, 0.0, False)
    open_hello, _ = answers({"ws://w0/": moved(None)})
    assert await clients._dial(job(route=True), c, open_hello) is None
    assert c.stats.error == "moved_route_failed"


@pytest.mark.parametrize(
    ("reply", "error", "close_code"),
    [
        (P.Error("room_full", "full"), "room_full", 4001),
        (P.Error("closed", "closed during hello"), "closed", 4001),
        (P.Leave((), ()), "no_welcome", 4001),  # a reply that is not a welcome
        (None, "no_welcome", 4001),  # picows: dropped without a close frame
        ("ProtocolError", "ProtocolError", 4001),  # picows: the reply did not decode
        (ConnectionRefusedError("refused"), "ConnectionRefusedError", None),
        (TimeoutError(), "TimeoutError", None),
        (ConnectionClosed(Close(1013, "busy"), None), "closed", 1013),  # hello not sent
    ],
)
async def test_what_a_refused_or_unreachable_hello_counts_as(reply, error, close_code):
    c = Conn(0, 0, 0.0, 0.0, False)
    open_hello, _ = answers({"ws://entry/": reply})
    assert await clients._dial(job(route=False), c, open_hello) is None
    assert c.stats.error == error and c.stats.close_code == close_code
    assert not c.stats.connected


def state(handles, seqs) -> bytes:
    n = len(handles)
    rec = P.pack_records(np.array(handles), np.zeros(n), np.array(seqs), np.zeros((n, 3)),
                         np.zeros((n, 1, 2)), 2)  # fmt: skip
    return P.encode_state(1, 2.0, rec, n, 1, 2)


def test_a_frame_is_counted_and_a_sampled_client_decodes_its_state(monkeypatch):
    decoded = []
    real = P.decode_server

    def spy(data):
        decoded.append(data)
        return real(data)

    monkeypatch.setattr(clients.P, "decode_server", spy)
    window = (10.0, 20.0)
    plain, sampled = Conn(0, 0, 0.0, 0.0, False), Conn(1, 0, 0.0, 0.0, True)
    sampled.handle = 3
    sampled.sent_at = {4: 11.0, 5: 11.05, 6: 11.1}
    early, mine = state([8], [1]), state([3, 8], [5, 1])
    join = P.encode_join(["x"], [9])
    assert mine[1:12] == STATE_PREFIX and join[1:12] != STATE_PREFIX
    for c in (plain, sampled):
        on_frame(c, early, 5.0, window)  # before the window: in the totals only
        on_frame(c, mine, 11.25, window)
        on_frame(c, join, 12.0, window)
        s = c.stats
        assert s.frames == 3 and s.bytes_in == len(early) + len(mine) + len(join)
        assert s.frames_in_window == 2 and s.bytes_in_window == len(mine) + len(join)
        assert s.states_in_window == 1
    assert len(decoded) == 2  # the sampled client's two state frames, nothing else
    s = sampled.stats
    assert s.records == 3 and s.records_in_window == 2
    assert s.record_bytes == len(early) + len(mine)
    # seq 5 answered at 11.25 (sent at 11.05); seq 4 superseded; seq 6 still pending
    assert s.latencies == [pytest.approx(0.2)] and sampled.sent_at == {6: 11.1}
    assert plain.stats.records == 0 and not plain.stats.latencies
