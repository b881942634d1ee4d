import pytest

from server.core import protocol as P
from server.core.engine import TickEngine
from server.core.world import World
from tests.world_helpers import hello, make_world, pos


def test_admit_handles_takeover_resume_full_and_room_cleanup():
    w = make_world(max_room_avatars=2)
    a = w.admit(hello(room="r", avatar="a"), 0.0)
    b = w.admit(hello(room="r", avatar="b"), 0.0)
    assert (a.handle, b.handle) == (0, 1)
    assert w.player("r", "a") is a and w.player("r", "zz") is None
    a2 = w.admit(hello(room="r", avatar="a", resume=a.resume), 0.0)  # resume: same member
    assert a2 is a
    wrong = w.admit(hello(room="r", avatar="a", resume="not-it"), 0.0)  # takeover: fresh
    assert wrong is not a and w.player("r", "a") is wrong and w.n_players == 2
    a = wrong
    with pytest.raises(P.ProtocolError) as e:
        w.admit(hello(room="r", avatar="c"), 0.0)
    assert e.value.code == "room_full" and e.value.close_code == 1013
    w.remove(a)
    w.remove(a)  # idempotent
    c = w.admit(hello(room="r", avatar="c"), 0.0)
    assert c.handle == 0  # lowest free handle again
    s = w.admit(hello(room="other"), 0.0)
    assert s.handle is None and set(w.rooms) == {"r", "other"}
    w.remove(s)
    assert set(w.rooms) == {"r"}
    assert (w.n_players, w.n_spectators) == (2, 0)


def test_detached_players_stay_until_resumed_or_expired():
    w = make_world()
    a = w.admit(hello(room="r", avatar="a"), 0.0)
    token = a.resume
    w.detach(a, 10.0)
    assert (w.n_players, w.n_detached) == (1, 1) and w.player("r", "a") is a
    assert w.expire(12.0, grace=5.0) == 0
    back = w.admit(hello(room="r", avatar="a", resume=token), 13.0)
    assert back is a and back.detached_at is None and w.n_detached == 0
    assert back.resume != token  # a new token for the next drop
    w.detach(a, 20.0)
    assert w.expire(25.0, grace=5.0) == 1
    assert (w.n_players, w.n_detached) == (0, 0) and "r" not in w.rooms
    s = w.admit(hello(room="r"), 30.0)
    w.detach(s, 31.0)  # spectators are removed at once
    assert w.n_spectators == 0 and w.n_detached == 0


def test_spectator_cannot_send_pos_and_old_samples_are_ignored():
    w = make_world()
    s = w.admit(hello(room="r"), 0.0)
    with pytest.raises(P.ProtocolError) as e:
        w.receive_pos(s, pos(0, 1.0, (0, 0)), 1.0)
    assert e.value.code == "not_a_player"
    a = w.admit(hello(room="r", avatar="a"), 0.0)
    assert w.receive_pos(a, pos(0, 1.0, (0, 0)), 1.0)
    assert not w.receive_pos(a, pos(1, 1.0, (5, 0)), 1.1)
    assert not w.receive_pos(a, pos(1, 0.5, (5, 0)), 1.1)


def test_aoi_refresh_must_be_positive():
    with pytest.raises(ValueError):
        World(TickEngine(None, device="cpu", capacity=2), aoi_refresh=0)


def test_welcome_says_the_version_and_the_rule():
    w = make_world(dr_threshold=0.07, dr_heartbeat=2.0)
    m2 = w.admit(hello(v=2, room="r", avatar="a"), 0.0)
    m1 = w.admit(hello(v=1, room="r", avatar="b"), 0.0)
    w2, w1 = P.decode_server(w.welcome(m2, 1.0)), P.decode_server(w.welcome(m1, 1.0))
    assert (w2.v, w2.dr) == (2, {"threshold": 0.07, "heartbeat": 2.0})
    assert (w1.v, w1.dr) == (1, None)
