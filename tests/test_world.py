import numpy as np
import pytest

from server.core import protocol as P
from server.core.engine import TickEngine
from server.core.members import ClockOffset
from server.core.world import World


def hello(v: int = 1, **kw) -> P.Hello:
    """The tests above the downlink section are about v1 (every avatar every tick)."""
    return P.Hello(v=v, **kw)


def make_world(**kw) -> World:
    return World(TickEngine(None, device="cpu", capacity=2), **kw)


def tick(world: World, server_time: float) -> dict:
    world.begin_tick()
    result = world.engine.tick()
    members = world.fan_out(result, server_time)
    out = {}
    for m in members:
        msgs = [P.decode_server(f) for f in m.outbox.controls]
        msgs += [P.decode_server(m.outbox.state)] if m.outbox.state is not None else []
        m.outbox.controls.clear()
        m.outbox.state = None
        out[m.avatar or f"spectator{m.uid}"] = msgs
    return out


def names(msgs, handles_to_names) -> list[str]:
    state = msgs[-1]
    assert isinstance(state, P.State)
    return [handles_to_names[h] for h in state.handle.tolist()]


def pos(seq, t, p):
    return P.Pos(seq=seq, t=t, p=tuple(map(float, p)))


def test_clock_offset_tracks_minimum_delay_and_drift():
    c = ClockOffset(drift=1e-3)
    assert c.offset == 0.0
    c.update(10.0, 110.05)  # offset 100, delay 50 ms
    c.update(10.1, 110.11)  # delay 10 ms: new minimum
    assert c.offset == pytest.approx(100.01)
    c.update(10.2, 110.30)  # a slow message does not raise it ...
    assert c.offset == pytest.approx(100.01 + 1e-3 * 0.19)
    for k in range(1, 200):  # ... but a persistent shift is followed at <= drift s/s
        c.update(10.2 + k, 110.30 + k)
    assert 100.01 < c.offset <= 100.10 + 1e-9
    c.rtt = 0.02
    assert c.offset == pytest.approx(c.base - 0.01)


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


def test_fan_out_views_join_leave_and_predictions():
    w = make_world(aoi_radius=10.0, aoi_cap=64)
    a = w.admit(hello(room="r", avatar="a"), 0.0)
    b = w.admit(hello(room="r", avatar="b"), 0.0)
    far = w.admit(hello(room="r", avatar="far"), 0.0)
    other = w.admit(hello(room="elsewhere", avatar="x"), 0.0)
    spec = w.admit(hello(room="r", region=(-1, -1, 1, 1)), 0.0)
    handle = {m.handle: m.avatar for m in (a, b, far)}
    # Before any sample nobody is visible: empty states, no joins.
    out = tick(w, 100.0)
    assert all(len(msgs) == 1 and len(msgs[0]) == 0 for msgs in out.values())
    for k in range(3):  # client clocks: a's is 50 s behind the server's
        t = 0.1 * k
        w.receive_pos(a, pos(k, 50 + t, (t, 0, 0)), 100 + t)
        w.receive_pos(b, pos(k, t, (3, t, 0)), 100 + t)
        w.receive_pos(far, pos(k, t, (50, 0, 0)), 100 + t)
        w.receive_pos(other, pos(k, t, (0, 0, 0)), 100 + t)
        out = tick(w, 100.0 + t)
        if k == 0:
            join = out["a"][0]
            assert isinstance(join, P.Join) and set(join.avatars) == {"a", "b"}
            assert dict(zip(join.handles, join.avatars, strict=True)) == {0: "a", 1: "b"}
            assert [type(m) for m in out["far"]] == [P.Join, P.State]
            assert out["far"][0].avatars == ("far",)
        else:
            assert [type(m) for m in out["a"]] == [P.State]
    assert names(out["a"], handle) == ["a", "b"]  # itself first, then nearest; far is beyond
    assert names(out["far"], handle) == ["far"]
    assert len(out["x"][-1]) == 1  # another room: only itself
    assert names(out[f"spectator{spec.uid}"], handle) == ["a"]  # region around a
    st = out["a"][-1]
    eng = w.engine
    ia = np.flatnonzero(st.handle == a.handle)[0]
    np.testing.assert_allclose(st.offsets[ia], eng.last_off[a.slot], atol=6e-4)
    np.testing.assert_allclose(st.pos[ia], eng.last_pos[a.slot], atol=1e-6)
    assert st.seq[ia] == 2 and st.offsets[ia, -1, 0] == pytest.approx(1.0, abs=1e-3)  # CV 1 m/s
    assert st.age[ia] == pytest.approx(0.0, abs=1e-3)  # anchored on the server clock
    # b walks out of a's radius: leave; then b disconnects: leave for the spectator too.
    w.receive_pos(b, pos(3, 0.3, (45, 0, 0)), 100.3)
    out = tick(w, 100.3)
    assert isinstance(out["a"][0], P.Leave) and out["a"][0].avatars == ("b",)
    assert isinstance(out["far"][0], P.Join) and out["far"][0].avatars == ("b",)
    w.remove(b)
    nb = w.admit(hello(room="r", avatar="newcomer"), 100.3)
    assert nb.handle == b.handle  # handle reused ...
    w.receive_pos(nb, pos(0, 7.0, (49, 0, 0)), 100.35)
    out = tick(w, 100.35)
    kinds = [type(m) for m in out["far"]]
    assert kinds == [P.Leave, P.Join, P.State]  # ... and its leave comes before the join
    assert out["far"][0].avatars == ("b",) and out["far"][1].avatars == ("newcomer",)


def test_cap_and_dims():
    w = make_world(aoi_radius=100.0, aoi_cap=3)
    ms = [w.admit(hello(room="r", avatar=f"m{i}"), 0.0) for i in range(6)]
    for k in range(2):
        for i, m in enumerate(ms):
            w.receive_pos(m, pos(k, 0.1 * k, (i * 2.0, 0, 0)), 0.1 * k)
        out = tick(w, 0.1 * k)
    handle = {m.handle: m.avatar for m in ms}
    assert names(out["m0"], handle) == ["m0", "m1", "m2"]
    assert names(out["m3"], handle)[0] == "m3" and len(out["m3"][-1]) == 3
    assert out["m0"][-1].extra == {} and all(len(v[-1]) == 3 for v in out.values())
    # flat world -> 2-D offsets on the wire; a climbing avatar -> 3-D
    assert P.decode_server(w.welcome(ms[0], 0.0)).handle == ms[0].handle
    w.receive_pos(ms[0], pos(2, 0.2, (0, 0, 1.0)), 0.2)
    out = tick(w, 0.2)
    st = out["m0"][-1]
    assert st.offsets[0, -1, 2] > 0.5


def test_model_predictions_reach_the_frame(tmp_path):
    from tests.test_engine import make_model

    lm = make_model()
    w = World(TickEngine(lm, device="cpu"), aoi_radius=50.0)
    ref = TickEngine(make_model(), device="cpu")
    a = w.admit(hello(room="r", avatar="a"), 0.0)
    ref.join("a")
    rng = np.random.default_rng(0)
    p = np.zeros(3)
    for k in range(20):
        p = p + rng.normal(size=3) * [0.2, 0.2, 0.0]
        t = 0.1 * k
        w.receive_pos(a, pos(k, t, p), t)
        ref.submit("a", t, p, k)
        out = tick(w, t)
        expect = ref.tick()
        st = out["a"][-1]
        np.testing.assert_allclose(st.offsets[0], expect.offsets[0], atol=5.1e-4)
        assert st.seq[0] == k


def test_aoi_refresh_spreads_view_updates_and_membership_changes_apply_at_once():
    """aoi_refresh=k: a moved avatar's views catch up within k ticks, a k-th of the rows per
    tick; a join is seen by everyone at the next tick; positions are always current."""
    k = 4
    w = World(TickEngine(None, device="cpu", capacity=2), aoi_radius=10.0, aoi_refresh=k)
    ref = World(TickEngine(None, device="cpu", capacity=2), aoi_radius=10.0)
    ms = {}
    for world in (w, ref):
        ms[world] = [world.admit(hello(room="r", avatar=f"a{i}"), 0.0) for i in range(8)]
    t = 0.0

    def canon(out: dict) -> dict:  # comparable: (kind, avatars/handles, positions)
        return {
            who: [
                ("state", m.handle.tolist(), m.pos.round(3).tolist())
                if isinstance(m, P.State)
                else (type(m).__name__, tuple(m.avatars), tuple(m.handles))
                for m in msgs
            ]
            for who, msgs in out.items()
        }

    def step(moved_x: float) -> tuple[dict, dict]:
        nonlocal t
        t += 0.05
        outs = []
        for world in (w, ref):
            for i, m in enumerate(ms[world]):
                x = moved_x if i == 0 else 3.0 * i  # a0 moves; the others stand 3 m apart
                world.receive_pos(m, pos(round(t * 20), t, (x, 0, 0)), t)
            outs.append(canon(tick(world, t)))
        return outs[0], outs[1]

    got, want = step(0.0)  # first tick: everything computed at once
    assert got == want
    stale = 0
    for _ in range(k):  # a0 jumps far away: each tick refreshes a k-th of the views
        got, want = step(500.0)
        stale += got != want
        for who in got:  # positions are current even in a stale view
            by_handle = dict(zip(got[who][-1][1], got[who][-1][2], strict=True))
            ref_pos = dict(zip(want[who][-1][1], want[who][-1][2], strict=True))
            assert all(by_handle[h] == ref_pos[h] for h in by_handle.keys() & ref_pos.keys())
    assert stale >= 1  # views did lag (the last rows' leave frames arrive at tick k)
    got, want = step(500.0)
    assert got == want  # after k ticks every row was refreshed
    # a join: every view is recomputed at the next tick
    for world in (w, ref):
        ms[world].append(world.admit(hello(room="r", avatar="new"), 0.0))
    t += 0.05
    outs = []
    for world in (w, ref):
        for i, m in enumerate(ms[world]):
            x = 500.0 if i == 0 else 3.0 * i if i < 8 else 1.0
            world.receive_pos(m, pos(round(t * 20), t, (x, 0, 0)), t)
        outs.append(canon(tick(world, t)))
    assert outs[0] == outs[1]


def test_aoi_refresh_must_be_positive():
    with pytest.raises(ValueError):
        World(TickEngine(None, device="cpu", capacity=2), aoi_refresh=0)


# -- downlink dead reckoning (v2) ---------------------------------------------------------


def records(msgs, handle) -> dict:
    """avatar -> (seq, pos x) of the records in this tick's state frame (none: {})."""
    states = [m for m in msgs if isinstance(m, P.State)]
    if not states:
        return {}
    st = states[-1]
    rows = zip(st.handle, st.seq, st.pos[:, 0], strict=True)
    return {handle[h]: (int(q), float(x)) for h, q, x in rows}


def test_v2_resends_a_record_only_off_its_path_or_on_heartbeat():
    w = make_world(aoi_radius=100.0, dr_threshold=0.02, dr_heartbeat=1.0)
    v2 = w.admit(hello(v=2, room="r", avatar="viewer"), 0.0)
    mover = w.admit(hello(v=2, room="r", avatar="mover"), 0.0)
    v1 = w.admit(hello(v=1, room="r", avatar="old"), 0.0)
    handle = {m.handle: m.avatar for m in (v2, mover, v1)}
    got2, got1, mover_got = [], [], 0
    for k in range(30):  # 1 m/s along x, on a 20 Hz tick; v2 and v1 stand still
        t = 0.05 * k
        x = t if k < 20 else 1.0 - (t - 1.0)  # turns back at k == 20
        w.receive_pos(mover, pos(k, t, (x, 0, 0)), 100 + t)
        if k == 0:
            w.receive_pos(v2, pos(0, t, (0, 1, 0)), 100 + t)
            w.receive_pos(v1, pos(0, t, (0, 2, 0)), 100 + t)
        out = tick(w, 100.0 + t)
        got2.append(records(out.get("viewer", []), handle))
        got1.append(records(out["old"], handle))
        mover_got += len(records(out.get("mover", []), handle))
    # v1: everyone, every tick, with the newest sample
    assert all(set(r) == {"viewer", "mover", "old"} for r in got1)
    assert [r["mover"][0] for r in got1] == list(range(30))
    # v2: the mover's first sample (new), its second (off the hold path), then nothing while
    # constant velocity holds, then the turn (off the path), then the new straight line holds
    mover_sent = [k for k, r in enumerate(got2) if "mover" in r]
    assert mover_sent[:2] == [0, 1] and 21 in mover_sent
    assert not [k for k in mover_sent if 2 <= k <= 20]
    assert [k for k in mover_sent if k > 21] in ([], [22])  # CV needs one interval to settle
    # the still avatars: first tick only, then the 1 s heartbeat (k == 20)
    assert [k for k, r in enumerate(got2) if "old" in r] == [0, 20]
    # a tick with nothing due brings no state frame at all
    assert any(r == {} for r in got2)
    # the resent records are the mover's newest sample at that tick
    assert got2[21]["mover"][0] == 21
    assert (
        w.fanout.records_sent[1] == 90
        and w.fanout.records_sent[2] == sum(map(len, got2)) + mover_got
    )
    assert w.fanout.dr_resends >= 3 + 2 and w.fanout.frames_skipped > 0


def test_v2_avatar_entering_a_view_brings_its_last_sent_path():
    w = make_world(aoi_radius=10.0, dr_threshold=0.05, dr_heartbeat=5.0)
    a = w.admit(hello(v=2, room="r", avatar="a"), 0.0)
    b = w.admit(hello(v=2, room="r", avatar="b"), 0.0)
    handle = {a.handle: "a", b.handle: "b"}
    w.receive_pos(a, pos(0, 0.0, (0, 0, 0)), 100.0)
    w.receive_pos(b, pos(0, 0.0, (50, 0, 0)), 100.0)
    out = tick(w, 100.0)
    assert set(records(out["a"], handle)) == {"a"}
    w.receive_pos(b, pos(1, 0.05, (50, 0, 0)), 100.05)  # still, so on its path: not due
    out = tick(w, 100.05)
    assert "b" not in out
    w.remove(a)  # ... b is not due, but a newcomer near it gets b's path with the join
    c = w.admit(hello(v=2, room="r", avatar="c"), 100.1)
    handle[c.handle] = "c"
    w.receive_pos(c, pos(0, 0.1, (49, 0, 0)), 100.1)
    out = tick(w, 100.1)
    kinds = [type(m) for m in out["c"]]
    assert kinds == [P.Join, P.State]
    assert set(out["c"][0].avatars) == {"b", "c"}
    got = records(out["c"], handle)
    assert set(got) == {"b", "c"} and got["b"] == (0, 50.0)  # the path b's viewers hold
    assert set(records(out.get("b", []), handle)) == {"c"}  # b already had its own


def test_v2_dropped_frame_resyncs_the_whole_view_and_empty_views_heartbeat():
    w = make_world(aoi_radius=100.0, dr_threshold=0.05, dr_heartbeat=0.5)
    a = w.admit(hello(v=2, room="r", avatar="a"), 0.0)
    b = w.admit(hello(v=2, room="r", avatar="b"), 0.0)
    handle = {a.handle: "a", b.handle: "b"}
    for k in range(3):
        w.receive_pos(a, pos(k, 0.05 * k, (0, 0, 0)), 100 + 0.05 * k)
        w.receive_pos(b, pos(k, 0.05 * k, (1, 0, 0)), 100 + 0.05 * k)
        out = tick(w, 100.0 + 0.05 * k)
    assert "a" not in out  # both still: nothing due, no frame
    a.resync = True  # what the app sets when it drops a's state frame (socket not draining)
    out = tick(w, 100.15)
    assert set(records(out["a"], handle)) == {"a", "b"} and not a.resync
    # a spectator with nothing in its region gets an empty frame once per heartbeat
    s = w.admit(hello(v=2, room="r", region=(500, 500, 501, 501)), 100.2)
    frames = []
    for k in range(12):
        out = tick(w, 100.2 + 0.05 * k)
        frames.append(len(out.get(f"spectator{s.uid}", [])))
    assert frames[0] == 1 and sum(frames) == 2 and frames[10] == 1  # at 0 s and at 0.5 s


def test_welcome_says_the_version_and_the_rule():
    w = make_world(dr_threshold=0.07, dr_heartbeat=2.0)
    m2 = w.admit(hello(v=2, room="r", avatar="a"), 0.0)
    m1 = w.admit(hello(v=1, room="r", avatar="b"), 0.0)
    w2, w1 = P.decode_server(w.welcome(m2, 1.0)), P.decode_server(w.welcome(m1, 1.0))
    assert (w2.v, w2.dr) == (2, {"threshold": 0.07, "heartbeat": 2.0})
    assert (w1.v, w1.dr) == (1, None)
