"""AvatarClient against a real server on 127.0.0.1 port 0, and the client core it shares
with the load tool and bench/cluster.py (`client_demo.wsclient`): GET /route, `dial`."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from client_demo import wsclient
from client_demo.client import AvatarClient, Refused, route_url
from server.core import protocol as P
from tests.servers import running


async def next_state(c: AvatarClient, pred, budget: int = 400) -> P.State:
    for _ in range(budget):
        msg = await c.recv()
        if isinstance(msg, P.State) and pred(msg):
            return msg
    raise AssertionError("no matching state within the frame budget")


async def test_stream_and_receive_own_and_others_predictions():
    async with (
        running() as srv,
        AvatarClient(srv.url, "r", "alice", ping_interval=0.05) as a,
        AvatarClient(srv.url, "r", "bob") as b,
    ):
        assert a.welcome.avatar == "alice" and len(a.welcome.horizons) == 10
        t0 = time.monotonic()
        for k in range(3):
            a.send_pos(k, t0 + 0.1 * k, (0.1 * k, 0.0, 0.0))
            b.send_pos(k, t0 + 0.1 * k, (2.0, 0.1 * k))
        st = await next_state(a, lambda s: len(s) == 2 and s.seq.max() == 2)
        assert sorted(a.names[h] for h in st.handle.tolist()) == ["alice", "bob"]
        assert a.names[a.welcome.handle] == "alice"
        await next_state(a, lambda s: a.clock.rtt is not None)  # a pong came back
        assert a.clock.ready and abs(a.clock.offset - (a.welcome.server_time - t0)) < 1.0
        assert a.frames_out >= 4 and a.bytes_in > 0


async def test_a_binary_pos_client_beside_a_msgpack_one():
    async with (
        running() as srv,
        AvatarClient(srv.url, "r", "alice", pos_encoding="binary") as a,
        AvatarClient(srv.url, "r", "bob") as b,
    ):
        assert (a.welcome.pos_encoding, b.welcome.pos_encoding) == ("binary", "msgpack")
        t0 = time.monotonic()
        for k in range(3):
            a.send_pos(k, t0 + 0.1 * k, (0.1 * k, 0.0, 0.0))
            b.send_pos(k, t0 + 0.1 * k, (2.0, 0.1 * k))
        st = await next_state(b, lambda s: len(s) == 2 and s.seq.max() == 2)
        assert sorted(b.names[h] for h in st.handle.tolist()) == ["alice", "bob"]
        assert a.bytes_out >= 3 * 37 and srv.stats.errors == {}
    with pytest.raises(ValueError):
        AvatarClient("ws://127.0.0.1:1/", "r", "c", pos_encoding="json")


async def test_refused_replaced_and_resumed_after_a_drop():
    async with (
        running(max_room_avatars=1) as srv,
        AvatarClient(srv.url, "r", "x", backoff=(0.01, 0.05)) as c,
    ):
        with pytest.raises(Refused) as e:  # another avatar: the room is full
            await AvatarClient(srv.url, "r", "y", reconnect=False).connect()
        assert e.value.code == "room_full" and e.value.close_code == 1013
        c.send_pos(0, 1.0, (0, 0))
        await next_state(c, lambda s: len(s) == 1)
        c.ws.transport.abort()  # the network drops the connection (no close frame)
        for _ in range(400):
            msg = await c.recv()
            if isinstance(msg, P.Welcome):
                break
        assert isinstance(msg, P.Welcome) and c.connects == 2
        assert srv.stats.resumed == 1  # it sent its resume token: same avatar back
        c.send_pos(1, 2.0, (1, 0))
        st = await next_state(c, lambda s: len(s) == 1)
        assert np.allclose(st.pos[0][:2], (1, 0))
        # the same avatar from elsewhere takes over; the first client stops, no fight
        async with AvatarClient(srv.url, "r", "x", reconnect=False) as d:
            errors = []
            for _ in range(400):
                msg = await c.recv()
                if msg is None:
                    break
                if isinstance(msg, P.Error):
                    errors.append(msg.code)
            assert errors == ["replaced"] and not c.reconnect and c.connects == 2
            d.send_pos(0, 5.0, (3, 0))
            st = await next_state(d, lambda s: len(s) == 1)
            assert np.allclose(st.pos[0][:2], (3, 0))


async def test_unreachable_server_raises_after_attempts():
    with pytest.raises(OSError):
        await AvatarClient(
            "ws://127.0.0.1:1/", "r", "x", backoff=(0.01, 0.02), max_attempts=2
        ).connect()


async def test_client_asks_any_worker_where_its_room_is_and_connects_there():
    async with running() as home:
        seen: list[str] = []

        def route(path: str):  # what a cluster worker answers (server.cluster): home serves it
            seen.append(path)
            return 200, "application/json", json.dumps({"url": home.url}).encode()

        async with (
            running(setup=lambda s: s.add_route("/route", route)) as entry,
            AvatarClient(entry.url, "big hall", "alice") as c,
        ):
            assert c.served_by == home.url and c.welcome.room == "big hall"
            assert seen == ["/route?room=big%20hall"]
            assert home.world.player("big hall", "alice") is not None
            assert entry.world.player("big hall", "alice") is None
        # a server without /route (404) is used as it is
        async with AvatarClient(home.url, "r", "bob") as c:
            assert c.served_by == home.url


async def test_client_sent_to_a_worker_that_is_down_says_hello_at_the_one_it_asked():
    from tests.redis_server import free_port

    gone = f"ws://127.0.0.1:{free_port()}/"  # nothing listens: a killed worker's stale route

    def route(path: str):
        return 200, "application/json", json.dumps({"url": gone}).encode()

    async with (
        running(setup=lambda s: s.add_route("/route", route)) as entry,
        AvatarClient(entry.url, "r", "carol", max_attempts=1) as c,  # one try, no retry
    ):
        assert c.served_by == entry.url and entry.world.player("r", "carol") is not None


# -- the client core: route_url, dial ----------------------------------------------------------


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


def _replies(table: dict, down: set[str] = frozenset()):
    """An open_hello that answers from `table` {url: reply} (and cannot reach `down`),
    logging the URLs it was asked."""
    asked: list[str] = []

    async def open_hello(url: str):
        asked.append(url)
        if url in down:
            raise ConnectionRefusedError(f"{url}: refused")
        reply = table[url]
        return f"conn to {url}", reply, None if isinstance(reply, P.Welcome) else 4001

    return open_hello, asked


WELCOME = P.Welcome(avatar="a", room="r", tick_hz=20.0, horizons=(0.1,), model="cv",
                    server_time=1.0, resume="x")  # fmt: skip


def moved(url: str | None) -> P.Error:
    return P.Error("moved", "elsewhere", url)


async def test_dial_follows_moved_at_once_and_stops_at_the_hop_limit():
    open_hello, asked = _replies({"a": moved("b"), "b": moved("c"), "c": WELCOME})
    hops: list[P.Error] = []
    got = await wsclient.dial(open_hello, "a", on_move=hops.append)
    assert got.welcome == WELCOME and got.conn == "conn to c" and got.url == "c"
    assert asked == ["a", "b", "c"] and got.moves == 2 and [h.url for h in hops] == ["b", "c"]
    # a loop: `max_moves` hops (counting the `moves` made before), then the `moved` is the reply
    open_hello, asked = _replies({"a": moved("b"), "b": moved("a")})
    got = await wsclient.dial(open_hello, "a", moves=1, max_moves=3)
    assert asked == ["a", "b", "a"] and got.moves == 3 and got.welcome is None
    assert got.conn is None and got.reply == moved("b") and got.close_code == 4001
    # none followed at all: the first `moved` is the refusal
    open_hello, asked = _replies({"a": moved("b")})
    got = await wsclient.dial(open_hello, "a", max_moves=0)
    assert asked == ["a"] and got.reply == moved("b") and got.moves == 0


async def test_dial_looks_the_room_up_for_no_target_and_a_moved_without_url():
    lookups = []

    async def lookup():
        lookups.append(1)
        return "b", None

    open_hello, asked = _replies({"a": moved(None), "b": WELCOME})
    got = await wsclient.dial(open_hello, "a", lookup)
    assert asked == ["a", "b"] and len(lookups) == 1 and got.welcome == WELCOME
    got = await wsclient.dial(open_hello, None, lookup)
    assert asked[-1] == "b" and len(lookups) == 2 and got.moves == 0
    with pytest.raises(ValueError):
        await wsclient.dial(open_hello, None)


async def test_dial_says_hello_at_the_fallback_when_a_worker_is_down():
    # the lookup's fallback (the server that answered) for a looked-up URL; `fallback` for
    # the target and for the URLs a `moved` names
    async def lookup():
        return "dead", "entry"

    open_hello, asked = _replies({"entry": WELCOME}, down={"dead"})
    got = await wsclient.dial(open_hello, None, lookup)
    assert asked == ["dead", "entry"] and got.url == "entry" and got.down == "dead"
    assert got.welcome == WELCOME
    open_hello, asked = _replies({"a": moved("dead"), "home": WELCOME}, down={"dead"})
    got = await wsclient.dial(open_hello, "a", fallback="home")
    assert asked == ["a", "dead", "home"] and got.welcome == WELCOME and got.moves == 1
    # the fallback sends it back to the worker that is down (its entry has not expired):
    # not followed, it is the refusal
    open_hello, asked = _replies({"home": moved("dead")}, down={"dead"})
    got = await wsclient.dial(open_hello, "dead", fallback="home")
    assert asked == ["dead", "home"] and got.reply == moved("dead") and got.down == "dead"
    # no fallback, or the fallback itself down: the error is raised
    with pytest.raises(ConnectionRefusedError):
        await wsclient.dial(_replies({}, down={"dead"})[0], "dead")
    with pytest.raises(ConnectionRefusedError):
        await wsclient.dial(_replies({}, down={"dead", "home"})[0], "dead", fallback="home")


async def test_open_hello_gives_the_refusal_with_its_close_code():
    async with running(max_room_avatars=1) as srv:
        hello = wsclient.hello_frame("r", "x")
        ws, welcome, code = await wsclient.open_hello(srv.url, hello)
        assert isinstance(welcome, P.Welcome) and code is None and welcome.avatar == "x"
        _, reply, code = await wsclient.open_hello(srv.url, wsclient.hello_frame("r", "y"))
        assert isinstance(reply, P.Error) and reply.code == "room_full" and code == 1013
        await ws.close()
    with pytest.raises(ValueError):
        await wsclient.open_hello("http://127.0.0.1:1/", hello)
