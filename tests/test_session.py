"""server.core.session: the Sans-I/O session, driven with events and `now`, no socket."""

from __future__ import annotations

import pytest

from server.core import protocol as P
from server.core import session as S
from server.core.engine import TickEngine
from server.core.stats import Stats
from server.core.world import World


def world() -> World:
    return World(TickEngine(None, device="cpu"))


def hello(avatar: str = "a", room: str = "r", **kw) -> bytes:
    return P.encode_client(P.Hello(room=room, avatar=avatar, **kw))


def errors(actions: list[S.Action]) -> list[P.Error]:
    """The error frames among `actions`, decoded."""
    out = []
    for a in actions:
        if isinstance(a, S.Send):
            for f in a.frames:
                msg = P.decode_server(f)
                if isinstance(msg, P.Error):
                    out.append(msg)
    return out


def closes(actions: list[S.Action]) -> list[S.Close]:
    return [a for a in actions if isinstance(a, S.Close)]


def new(w: World | None = None, now: float = 100.0, **rules) -> S.Session:
    return S.Session(w or world(), S.SessionRules(**rules), Stats(), now, epoch=1000.0)


def test_hello_admits_welcomes_and_pings_once():
    w = world()
    s = new(w)
    assert s.open(100.0) == []
    out = s.receive(hello(), 100.5)
    kinds = [type(a) for a in out]
    assert kinds == [S.Admitted, S.Send, S.Ping]
    assert out[0].member is s.member and w.player("r", "a") is s.member
    assert isinstance(P.decode_server(out[1].frames[0]), P.Welcome)
    assert s.hello_deadline is None and s.stats.frames_in == 1


def test_a_full_server_refuses_at_open():
    s = new()
    out = s.open(100.0, full=True)
    assert [e.code for e in errors(out)] == ["server_full"]
    assert closes(out)[0].code == P.ERROR_CODES["server_full"] and s.closed


def test_first_message_must_be_hello_and_a_second_hello_is_refused():
    s = new()
    out = s.receive(P.encode_client(P.Ping(t=1.0)), 100.1)
    assert [e.code for e in errors(out)] == ["expected_hello"] and s.closed
    s = new()
    s.receive(hello(), 100.1)
    out = s.receive(hello(), 100.2)
    assert [e.code for e in errors(out)] == ["expected_hello"] and s.member is None


def test_garbage_closes_with_its_protocol_code_and_nothing_raises():
    s = new()
    out = s.receive(b"\xc1\xc1 not msgpack", 100.1)
    assert len(errors(out)) == 1 and len(closes(out)) == 1 and s.closed
    assert s.receive(hello(), 100.2) == []  # closed: nothing more is read


def test_hello_deadline_and_idle_timeout_and_pings():
    s = new(hello_timeout=5.0, idle_timeout=30.0)
    assert s.hello_deadline == pytest.approx(105.0)
    assert s.check(104.9) == []
    out = s.check(105.0)
    assert [e.code for e in errors(out)] == ["hello_timeout"]

    s = new(hello_timeout=5.0, idle_timeout=30.0)
    s.receive(hello(), 101.0)  # its admission pinged at 101
    assert s.check(105.0) == []  # no hello deadline any more; a ping is not due yet
    assert s.check(111.0) == [S.Ping()]  # idle_timeout / 3 after the last ping
    assert s.check(112.0) == []
    s.pong(120.0)
    assert s.check(149.0) == [S.Ping()]  # pinged, but traffic 29 s ago: not idle yet
    out = s.check(150.5)
    assert [e.code for e in errors(out)] == ["idle_timeout"] and s.closed


def test_rate_limit_drops_the_excess_and_closes_when_sustained():
    s = new(max_msg_rate=10.0)
    s.receive(hello(), 100.0)
    pos = [P.encode_client(P.Pos(seq=k, t=0.01 * k, p=(0.0, 0.0, 0.0))) for k in range(40)]
    outs = [s.receive(f, 100.0) for f in pos[:12]]  # all at once: a 10-message burst passes
    assert s.stats.rate_dropped == 3 and not s.closed and not any(outs)
    refused = []
    for k, f in enumerate(pos[12:]):
        refused += s.receive(f, 100.0 + 0.001 * k)
    assert [e.code for e in errors(refused)] == ["rate_limited"] and s.closed


def test_ping_is_answered_with_the_server_clock_and_bye_closes_normally():
    w = world()
    s = new(w)
    s.receive(hello(), 100.0)
    out = s.receive(P.encode_client(P.Ping(t=7.0)), 100.25)
    pong = P.decode_server(out[0].frames[0])
    assert pong == P.Pong(t=7.0, server_time=pytest.approx(1100.25))
    out = s.receive(P.encode_client(P.Bye()), 100.5)
    assert out == [S.Close(P.CLOSE_NORMAL, "bye")] and s.closed
    assert w.player("r", "a") is None


def test_a_second_connection_replaces_the_first_and_takes_the_avatar_id():
    w = world()
    first, second = new(w), new(w)
    first.receive(hello(), 100.0)
    member = first.member
    out = second.receive(hello(), 101.0)
    assert out[0] == S.Replace(first)
    told = first.replaced()
    assert [e.code for e in errors(told)] == ["replaced"] and first.closed
    assert second.member is w.player("r", "a") and second.member.handle == member.handle
    assert second.member.session is second and first.stats.replaced == 1


def test_resume_after_a_drop_is_counted_and_a_clean_close_removes_the_avatar():
    w = world()
    s = new(w, resume_grace=10.0)
    s.receive(hello(), 100.0)
    token = s.member.resume
    s.disconnected(clean=False, now=101.0)  # dropped: kept for the grace period
    assert w.player("r", "a") is not None
    again = new(w, resume_grace=10.0)
    again.receive(hello(resume=token), 102.0)
    assert again.stats.resumed == 1 and again.member is w.player("r", "a")
    again.disconnected(clean=True, now=103.0)
    assert w.player("r", "a") is None


@pytest.mark.parametrize(
    ("outcome", "owned", "code"),
    [
        (None, True, None),
        ("ws://elsewhere:1/", True, "moved"),
        (None, False, "moved"),
        (P.ProtocolError("server_full", "no directory"), True, "server_full"),
    ],
)
def test_a_room_placed_elsewhere_is_claimed_first(outcome, owned, code):
    w = world()
    s = new(w, owns=lambda room: False)
    out = s.receive(hello(), 100.0)
    assert out == [S.Claim("r")] and s.member is None
    assert s.receive(P.encode_client(P.Ping(t=1.0)), 100.1) == []  # nothing read meanwhile
    out = s.claimed(outcome, owned, 100.2)
    if code is None:
        assert [type(a) for a in out] == [S.Admitted, S.Send, S.Ping] and s.member is not None
    else:
        err = errors(out)
        assert [e.code for e in err] == [code] and s.closed
        if isinstance(outcome, str):
            assert err[0].url == outcome
    with pytest.raises(RuntimeError):
        s.claimed(None, True, 100.3)  # one answer per claim


def test_move_away_closes_with_4001_and_no_error():
    w = world()
    s = new(w)
    s.receive(hello(), 100.0)
    out = s.move_away("draining")
    assert out == [S.Close(P.CLOSE_MOVED, "moved")] and w.player("r", "a") is None
    assert s.move_away("again") == []


def bin_pos(seq: int, t: float, p=(1.0, 2.0, 0.5)) -> bytes:
    return P.encode_pos_binary(P.Pos(seq=seq, t=t, p=p))


def test_a_hello_that_asks_for_binary_pos_is_confirmed_and_its_frames_are_staged():
    w = world()
    s = new(w)
    out = s.receive(hello(pos_encoding="binary"), 100.0)
    welcome = P.decode_server(out[1].frames[0])
    assert welcome.pos_encoding == "binary"
    w.begin_tick()  # the avatar gets its engine slot
    assert s.receive(bin_pos(1, 5.0), 100.05) == [] and w.engine.pending == 1
    assert s.receive(P.encode_client(P.Pos(seq=2, t=5.1, p=(1.0, 2.0, 0.0))), 100.1) == []
    assert s.receive(bin_pos(3, 5.0), 100.15) == []  # older than the newest: ignored, no error
    res = w.engine.tick()
    assert len(res) == 1 and res.seq.tolist() == [2]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bin_pos(1, 5.0)[:-1], "bad_message"),  # one byte short
        (bin_pos(1, 5.0) + b"\0", "bad_message"),
        (bin_pos(1, float("nan")), "non_finite"),
        (bin_pos(1, 5.0, (2e6, 0.0, 0.0)), "out_of_range"),
        (bin_pos(1, 2e12), "out_of_range"),
    ],
)
def test_a_bad_binary_pos_is_refused_with_its_code(frame, code):
    s = new()
    s.receive(hello(pos_encoding="binary"), 100.0)
    assert [e.code for e in errors(s.receive(frame, 100.1))] == [code] and s.closed


def test_binary_pos_without_asking_is_refused_and_msgpack_clients_are_unchanged():
    s = new()
    out = s.receive(hello(), 100.0)
    assert P.decode_server(out[1].frames[0]).pos_encoding == "msgpack"
    # not msgpack: refused as any such bytes were before binary pos existed
    assert [e.code for e in errors(s.receive(bin_pos(1, 5.0), 100.1))] == ["bad_msgpack"]


def test_a_spectator_asking_for_binary_pos_gets_msgpack():
    s = new()
    out = s.receive(hello(avatar=None, pos_encoding="binary"), 100.0)
    assert P.decode_server(out[1].frames[0]).pos_encoding == "msgpack"
