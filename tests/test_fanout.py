"""Fan-out (server.core.fanout): what frames and records each viewer gets. Driven through
`World` (admit, receive_pos, begin_tick, engine.tick, fan_out) as the server drives it, plus
one direct test of `FanOut.run` over hand-made members and predictions."""

import numpy as np
import pytest

from server.core import protocol as P
from server.core.downlink import DownlinkReckoner
from server.core.engine import TickEngine
from server.core.fanout import FanOut
from server.core.interest import InterestGrid
from server.core.members import Member, Room
from server.core.tick_io import Predictions, TickResult
from server.core.world import World
from tests.world_helpers import hello, make_world, names, pos, records, tick


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


# -- downlink dead reckoning (v2) ---------------------------------------------------------


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


# -- FanOut on its own ---------------------------------------------------------------------


def test_fan_out_of_hand_made_predictions_gives_a_v1_viewer_its_view():
    """`FanOut.run` over a `Room` of `Member`s and a `TickResult` whose `latest` is a
    hand-made read-only `Predictions`: a v1 viewer's frames decode to those predictions."""
    horizons = (0.5, 1.0)
    cap = 4
    fan = FanOut(DownlinkReckoner(cap, horizons, 0.02, 1.0), InterestGrid(10.0, 64))
    room = Room("r")
    members = {}
    for uid, (avatar, slot) in enumerate([("a", 0), ("b", 1), ("new", 2), ("far", 3)], 1):
        m = Member(uid, room, avatar, room.take_handle(), slot=slot, version=1)
        room.players[avatar] = m
        members[avatar] = m
    nan = float("nan")
    t = np.array([1.0, 1.1, nan, 0.9])  # slot 2 not stepped yet: not visible
    clock = np.array([99.9, 99.95, nan, 99.8])
    p = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 1.0], [nan] * 3, [100.0, 0.0, 0.0]])
    off = np.zeros((cap, len(horizons), 3), dtype=np.float32)
    off[0] = [[0.5, 0.0, 0.0], [1.0, 0.0, 0.0]]
    off[1] = [[0.0, -0.25, 0.125], [0.0, -0.5, 0.25]]  # climbing: 3-D offsets on the wire
    off[3] = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    seq = np.array([7, 8, -1, 9], dtype=np.int64)
    latest = Predictions.of(t=t, clock=clock, pos=p, off=off, seq=seq, weights=np.zeros((cap, 3)))
    empty = np.empty(0, dtype=np.int64)
    result = TickResult(
        42, empty, np.empty(0, dtype=object), np.empty(0), np.empty((0, 3)),
        np.empty((0, len(horizons), 3), dtype=np.float32), empty, np.empty(0, dtype=bool),
        latest,
    )  # fmt: skip
    server_time = 100.0
    out = fan.run([room], result, server_time)
    assert {m.avatar for m in out} == {"a", "b", "new", "far"}
    a = members["a"]
    join = P.decode_server(a.outbox.controls[0])
    assert isinstance(join, P.Join) and len(a.outbox.controls) == 1
    assert dict(zip(join.avatars, join.handles, strict=True)) == {"a": 0, "b": 1}
    st = P.decode_server(a.outbox.state)
    assert isinstance(st, P.State) and st.tick == 42 and st.server_time == server_time
    assert st.handle.tolist() == [members["a"].handle, members["b"].handle]  # itself first
    np.testing.assert_allclose(st.pos, p[[0, 1]], atol=1e-6)
    np.testing.assert_allclose(st.offsets, off[[0, 1]], atol=5e-4)
    assert st.seq.tolist() == [7, 8]
    np.testing.assert_allclose(st.age, server_time - clock[[0, 1]], atol=5e-4)
    # no prediction yet: no joins, an empty state frame; far away: only itself
    new = members["new"]
    assert not new.outbox.controls and len(P.decode_server(new.outbox.state)) == 0
    far = P.decode_server(members["far"].outbox.state)
    assert far.handle.tolist() == [members["far"].handle]
    assert fan.records_sent == {1: 2 + 2 + 0 + 1}
