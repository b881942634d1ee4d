import itertools

import numpy as np
import pytest
import torch

from server.core import blend as BL
from server.core import features as F
from server.core.blend import BlendConfig
from server.core.engine import TickEngine
from server.core.features import FeatureConfig
from server.core.model import LoadedModel, ModelConfig, MotionGRU

FEATS = FeatureConfig(horizons=(0.1, 0.2, 0.4, 0.7, 1.0), out_scale=(0.05, 0.1, 0.2, 0.3, 0.5))


def make_model(hidden=16, layers=1, seed=0, version="test", feats=FEATS) -> LoadedModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden=hidden, layers=layers, n_horizons=feats.n_horizons)
    m = MotionGRU(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return LoadedModel(m.eval(), feats, version, torch.device("cpu"), {})


def reference_predictions(lm: LoadedModel, t, p) -> tuple[np.ndarray, F.StepOutput]:
    """Whole-sequence forward over one avatar's samples, split at resets: its paths and
    the feature pipeline's output."""
    sf = F.sequence_features([t], [p], lm.features)
    x, out = sf.x[0], sf.out[0]
    starts = [*list(np.flatnonzero(out.reset)), len(t)]
    ys = []
    with torch.no_grad():
        for a, b in itertools.pairwise(starts):
            y, _ = lm.model(torch.from_numpy(x[a:b])[None])
            ys.append(y[0].numpy())
    return F.decode(np.concatenate(ys), out, lm.features), out


def reference_room(lm: LoadedModel, sent: list[list], blend: BlendConfig | None) -> list:
    """Every avatar's paths, each from `reference_predictions`; with `blend`, the online
    blend replayed over all of them as one room, tick by tick (`server.core.blend.replay_many`).
    `sent[i]` lists avatar i's (tick, t, position)."""
    refs = []
    for s in sent:
        t, p = np.array([x[1] for x in s]), np.array([x[2] for x in s])
        refs.append((t, *reference_predictions(lm, t, p)))
    if blend is None:
        return [paths for _, paths, _ in refs]
    h = np.asarray(lm.features.horizons)
    rows = [
        (t, o.p, o.reset, paths - o.p[:, None, :], o.v, o.prior_dp, o.prior_v)
        for t, paths, o in refs
    ]
    ticks = [np.array([x[0] for x in s]) for s in sent]
    served = BL.replay_many(rows, h, blend, ticks=ticks, room=np.zeros(len(sent), np.int64))
    return [o.p[:, None, :] + off for (_, _, o), (off, _) in zip(refs, served, strict=True)]


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("blend", [None, BlendConfig()], ids=["network", "blend"])
def test_engine_stepping_matches_sequence_forward(rng, layers, blend):
    """The engine's served paths equal the offline replay sample by sample (<= 1e-5), with
    avatars joining, leaving and resetting (a teleport): the network alone, and blended."""
    lm = make_model(layers=layers)
    eng = TickEngine(lm, device="cpu", capacity=2, blend=blend)  # forces growth
    n_av, n_ticks = 9, 60
    join_at = rng.integers(0, 20, n_av)
    leave_at = join_at + rng.integers(15, 40, n_av)
    truth = {}
    got: dict[int, list] = {i: [] for i in range(n_av)}
    sent: dict[int, list] = {i: [] for i in range(n_av)}
    for i in range(n_av):
        v = rng.normal(size=3) * [1.5, 1.5, 0.1]
        truth[i] = lambda tt, v=v, i=i: np.array([i * 3.0, 0, 0]) + np.outer(np.sin(tt), v) * 2
    for k in range(n_ticks):
        for i in range(n_av):
            if k == join_at[i]:
                eng.join(f"a{i}")
            if join_at[i] <= k < leave_at[i] and rng.random() < 0.8:  # some ticks without
                tt = k * 0.05 + rng.uniform(0, 0.01)
                pos = truth[i](np.array([tt]))[0]
                if i == 3 and k == join_at[i] + 8:
                    pos = pos + [40.0, 0, 0]  # teleport
                assert eng.submit(f"a{i}", tt, pos, seq=k)
                sent[i].append((k, tt, pos))
            if k == leave_at[i]:
                eng.leave(f"a{i}")
        res = eng.tick()
        assert len(set(res.slots.tolist())) == len(res)
        for row, av in enumerate(res.avatars):
            got[int(av[1:])].append(res.pred[row])
    refs = reference_room(lm, [sent[i] for i in range(n_av)], blend)
    worst = max(np.abs(np.array(got[i]) - refs[i]).max() for i in range(n_av))
    assert worst <= 1e-5
    assert len(eng) == 0 and eng.capacity >= 8


def test_latest_sample_wins_and_old_samples_rejected():
    eng = TickEngine(make_model(), device="cpu", blend=None)
    eng.join("a")
    assert eng.submit("a", 1.0, (0, 0, 0), seq=1)
    assert eng.submit("a", 1.1, (0.1, 0, 0), seq=2)
    assert not eng.submit("a", 1.05, (5, 5, 5), seq=3)  # older than the pending one
    res = eng.tick()
    assert res.seq.tolist() == [2] and res.t.tolist() == [1.1]
    assert not eng.submit("a", 1.1, (0, 0, 0), seq=4)  # not newer than processed
    assert len(eng.tick()) == 0


def test_avatars_without_sample_keep_last_prediction():
    eng = TickEngine(make_model(), device="cpu", blend=None)
    for a in ("a", "b"):
        eng.join(a)
        eng.submit(a, 0.0, (0, 0, 0))
    eng.tick()
    eng.submit("a", 0.1, (0.1, 0, 0), seq=5)
    before = eng.snapshot()
    res = eng.tick()
    assert res.avatars.tolist() == ["a"]
    snap = eng.snapshot()
    b = before.avatars.tolist().index("b")
    b2 = snap.avatars.tolist().index("b")
    np.testing.assert_array_equal(snap.pred[b2], before.pred[b])
    assert snap.seq[snap.avatars.tolist().index("a")] == 5


def test_slot_reuse_zeroes_state_and_growth_keeps_states():
    lm = make_model()
    eng = TickEngine(lm, device="cpu", capacity=2, blend=None)
    eng.join("a")
    eng.join("b")
    for k in range(3):
        eng.submit("a", k * 0.1, (k * 0.1, 0, 0))
        eng.submit("b", k * 0.1, (0, k * 0.1, 0))
        eng.tick()
    ha = eng.hidden("a")
    assert torch.count_nonzero(ha) > 0
    eng.join("c")  # grows 2 -> 4, states kept
    assert eng.capacity == 4
    torch.testing.assert_close(eng.hidden("a"), ha)
    slot_b = eng.slot("b")
    eng.leave("b")
    eng.join("d")
    assert eng.slot("d") == slot_b  # lowest free slot reused
    assert torch.count_nonzero(eng.hidden("d")) == 0
    with pytest.raises(KeyError):
        eng.join("a")
    with pytest.raises(KeyError):
        eng.leave("zz")
    with pytest.raises(KeyError):
        eng.submit("zz", 0, (0, 0))


def test_nan_inf_and_teleport_never_reach_hidden_state():
    eng = TickEngine(make_model(), device="cpu", blend=None)
    eng.join("a")
    for bad in [(np.nan, 0, 0), (0, np.inf, 0), (0, 0, -np.inf), (1e300, 0, 0)]:
        assert not eng.submit("a", 0.0, bad)
    assert not eng.submit("a", float("nan"), (0, 0, 0))
    for k in range(5):
        assert eng.submit("a", k * 0.1, (k * 0.1, 0, 0))
        eng.tick()
    assert torch.isfinite(eng.hidden("a")).all()
    assert eng.submit("a", 0.5, (1e5, 0, 0))  # teleport: finite but far
    res = eng.tick()
    assert res.reset.tolist() == [True]
    # After a reset the state equals a fresh avatar's first step at that position.
    fresh = TickEngine(eng.model, device="cpu", blend=None)
    fresh.join("z")
    fresh.submit("z", 0.5, (1e5, 0, 0))
    ref = fresh.tick()
    torch.testing.assert_close(eng.hidden("a"), fresh.hidden("z"))
    np.testing.assert_allclose(res.pred, ref.pred)


def test_cv_engine_without_model():
    eng = TickEngine(None, device="cpu")
    assert eng.version == "cv"
    eng.join("a")
    eng.submit("a", 0.0, (0, 0))
    eng.tick()
    eng.submit("a", 0.5, (1.0, 0.5))
    res = eng.tick()
    h = np.asarray(eng.cfg.horizons)
    np.testing.assert_allclose(res.pred[0], [1.0, 0.5, 0] + np.outer(h, [2.0, 1.0, 0]))


def test_two_element_position_means_z_zero():
    eng = TickEngine(None, device="cpu")
    eng.join("a")
    eng.submit("a", 0.0, [3.0, 4.0])
    assert eng.tick().pos.tolist() == [[3.0, 4.0, 0.0]]


def test_pending_counts_the_next_batch():
    eng = TickEngine(None, device="cpu")
    for a in ("a", "b", "c"):
        eng.join(a)
    assert eng.pending == 0
    eng.submit("a", 1.0, (0, 0))
    eng.submit("a", 2.0, (0, 0))  # latest wins: still one
    eng.submit("b", 1.0, (0, 0))
    assert eng.pending == 2
    eng.tick()
    assert eng.pending == 0


def test_submit_many_keeps_what_submit_slot_keeps(rng):
    a, b = TickEngine(None, device="cpu"), TickEngine(None, device="cpu")
    for e in (a, b):
        for i in range(8):
            e.join(f"x{i}")
    slots = np.arange(8)
    for k in range(3):
        t = np.full(8, 1.0 + k) + rng.normal(0, 0.5, 8)  # some not newer than the last
        p = rng.normal(0, 5, (8, 2))
        p[1, 0] = np.nan
        p[2, 1] = 2e6  # out of bounds
        t[3] = np.inf
        ok = a.submit_many(slots, t, p, np.full(8, k))
        expect = [b.submit_slot(s, t[s], p[s], k) for s in slots]
        assert ok.tolist() == expect and not ok[1:4].any()
        ra, rb = a.tick(), b.tick()
        np.testing.assert_array_equal(ra.slots, rb.slots)
        np.testing.assert_allclose(ra.offsets, rb.offsets)
    with pytest.raises(ValueError):
        a.submit_many(slots, np.ones(8), np.zeros((8, 4)), np.zeros(8))


# -- hot model swap ---------------------------------------------------------------------


def track(n: int, i: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth curving walk (no resets): times (n,), positions (n, 3)."""
    t = np.arange(n) * 0.1
    p = np.stack([np.sin(t + i) * 3 + i * 5, np.cos(1.3 * t) * 2, 0.1 * t], axis=1)
    return t, p


def split_reference(first: LoadedModel | None, second: LoadedModel, t, p, k: int):
    """Prediction (H, 3) and state (layers, hidden) at sample k of one avatar: `first`
    runs samples [0, k) from a zero state (None: the state stays zero), then `second`
    steps sample k from that state."""
    sf = F.sequence_features([t], [p], second.features)
    x, out = torch.from_numpy(sf.x[0]), sf.out[0]
    assert out.reset.tolist() == [True] + [False] * (len(t) - 1)
    with torch.no_grad():
        h = second.model.init_hidden(1) if first is None else first.model(x[None, :k])[1]
        y, h = second.model(x[None, k : k + 1], h)
    row = out.rows(slice(k, k + 1))
    return F.decode(y[0].numpy(), row, second.features)[0], h[:, 0]


def run_ticks(eng: TickEngine, tracks: dict, ks) -> None:
    for k in ks:
        for av, (t, p) in tracks.items():
            assert eng.submit(av, t[k], p[k], seq=k)
        eng.tick()


def test_swap_same_shape_keeps_hidden_state_and_predictions():
    old, new = make_model(seed=0, version="old"), make_model(seed=1, version="new")
    eng = TickEngine(old, device="cpu", blend=None)
    tracks = {"a": track(8, 0), "b": track(8, 1)}
    for av in tracks:
        eng.join(av)
    run_ticks(eng, tracks, range(5))
    h, before = eng.hidden("a"), eng.snapshot()
    assert torch.count_nonzero(h) > 0
    assert eng.swap_model(new) is True
    assert eng.version == "new" and eng.model is new
    torch.testing.assert_close(eng.hidden("a"), h, rtol=0, atol=0)
    after = eng.snapshot()  # last predictions stay
    np.testing.assert_array_equal(after.avatars, before.avatars)
    np.testing.assert_array_equal(after.pred, before.pred)
    t, p = tracks["a"]
    assert eng.submit("a", t[5], p[5], seq=5)
    res = eng.tick()
    ref, h_ref = split_reference(old, new, t, p, 5)
    np.testing.assert_allclose(res.pred[0], ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(eng.hidden("a"), h_ref, rtol=1e-5, atol=1e-5)
    stale, _ = split_reference(old, old, t, p, 5)
    assert np.abs(stale - ref).max() > 1e-3  # the new model really served this step
    assert eng.nonfinite_resets == 0


@pytest.mark.parametrize("hidden,layers", [(8, 2), (16, 2), (24, 1)])
def test_swap_other_shape_resets_hidden_states_and_keeps_ticking(hidden, layers):
    old, new = make_model(seed=0, version="old"), make_model(hidden, layers, seed=2, version="x")
    eng = TickEngine(old, device="cpu", capacity=2, blend=None)
    tracks = {"a": track(9, 0), "b": track(9, 1)}
    for av in tracks:
        eng.join(av)
    run_ticks(eng, tracks, range(5))
    t, p = tracks["a"]
    assert eng.submit("a", t[5], p[5], seq=5)  # pending across the swap
    before = eng.snapshot()
    assert eng.swap_model(new) is False
    assert eng.version == "x"
    for av in tracks:
        assert eng.hidden(av).shape == (layers, hidden)
        assert torch.count_nonzero(eng.hidden(av)) == 0
    np.testing.assert_array_equal(eng.snapshot().pred, before.pred)
    assert eng.pending == 1
    res = eng.tick()
    assert res.avatars.tolist() == ["a"] and res.reset.tolist() == [False]
    ref, h_ref = split_reference(None, new, t, p, 5)  # the new model from a zero state
    np.testing.assert_allclose(res.pred[0], ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(eng.hidden("a"), h_ref, rtol=1e-5, atol=1e-5)
    tracks["c"] = track(9, 2)
    eng.join("c")  # grows the new pool 2 -> 4
    assert eng.capacity == 4
    run_ticks(eng, tracks, range(6, 9))
    for av in tracks:
        h = eng.hidden(av)
        assert h.shape == (layers, hidden) and torch.isfinite(h).all()
        assert torch.count_nonzero(h) > 0


def test_swap_to_other_feature_config_resets_and_serves_it():
    old = make_model(seed=0)
    scale = tuple(2 * s for s in FEATS.out_scale)
    feats = FeatureConfig(horizons=FEATS.horizons, out_scale=scale, max_speed=30.0)
    new = make_model(seed=0, version="fc", feats=feats)  # same weights and state shape
    eng = TickEngine(old, device="cpu", blend=None)
    eng.join("a")
    t, p = track(4)
    run_ticks(eng, {"a": (t, p)}, range(3))
    assert torch.count_nonzero(eng.hidden("a")) > 0
    assert eng.swap_model(new) is False
    assert eng.cfg == feats and torch.count_nonzero(eng.hidden("a")) == 0
    eng.submit("a", t[3], p[3], seq=3)
    ref, _ = split_reference(None, new, t, p, 3)  # decoded with the new residual scale
    np.testing.assert_allclose(eng.tick().pred[0], ref, rtol=0, atol=1e-5)


def test_swap_rejects_other_horizons_and_leaves_engine_unchanged():
    old = make_model(seed=0, version="old")
    eng = TickEngine(old, device="cpu", blend=None)
    eng.join("a")
    run_ticks(eng, {"a": track(3)}, range(3))
    h = eng.hidden("a")
    other = make_model(seed=1, version="h10", feats=FeatureConfig())
    with pytest.raises(ValueError, match="horizons"):
        eng.swap_model(other)
    broken = make_model(seed=1, version="broken")
    broken.features = FeatureConfig()  # 10 horizons for a 5-horizon network
    with pytest.raises(ValueError):
        eng.swap_model(broken)
    assert eng.model is old and eng.version == "old" and eng.cfg == FEATS
    torch.testing.assert_close(eng.hidden("a"), h, rtol=0, atol=0)
    cv = TickEngine(None, device="cpu")  # default features: 10 horizons
    with pytest.raises(ValueError, match="horizons"):
        cv.swap_model(old)
    assert cv.model is None and cv.version == "cv"


def test_swap_model_to_cv_and_back():
    old, new = make_model(seed=0, version="old"), make_model(seed=3, version="new")
    eng = TickEngine(old, device="cpu", blend=None)
    cv = TickEngine(None, features=FEATS, device="cpu")
    t, p = track(10)
    for e in (eng, cv):
        e.join("a")
    run_ticks(eng, {"a": (t, p)}, range(4))
    run_ticks(cv, {"a": (t, p)}, range(4))
    assert eng.swap_model(None) is False
    assert eng.version == "cv" and eng.model is None and eng.cfg == FEATS
    for k in (4, 5):  # served as constant-velocity dead reckoning
        for e in (eng, cv):
            e.submit("a", t[k], p[k], seq=k)
        np.testing.assert_allclose(eng.tick().pred, cv.tick().pred, rtol=0, atol=1e-9)
    assert eng.swap_model(None) is True  # CV to CV: nothing to reset
    assert eng.swap_model(new) is False
    assert eng.version == "new" and eng.model is new
    assert eng.hidden("a").shape == (1, 16) and torch.count_nonzero(eng.hidden("a")) == 0
    eng.submit("a", t[6], p[6], seq=6)
    res = eng.tick()
    ref, _ = split_reference(new, new, t, p, 6)
    zero_ref, h_ref = split_reference(None, new, t, p, 6)  # from a zero state
    np.testing.assert_allclose(res.pred[0], zero_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(eng.hidden("a"), h_ref, rtol=1e-5, atol=1e-5)
    assert np.abs(ref - zero_ref).max() > 1e-4  # the reset is visible
    run_ticks(eng, {"a": (t, p)}, range(7, 10))
    assert torch.isfinite(eng.hidden("a")).all()
    # A CV engine takes a model too.
    assert cv.swap_model(old) is False and cv.version == "old"
    assert cv.hidden("a").shape == (1, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_swap_moves_model_to_engine_device():
    old = make_model(seed=0)
    eng = TickEngine(old, device="cuda", blend=None)
    new = make_model(seed=1, version="new")  # on the CPU
    eng.join("a")
    run_ticks(eng, {"a": track(4)}, range(2))
    assert eng.swap_model(new) is True
    assert new.device == eng.device and next(new.model.parameters()).is_cuda
    run_ticks(eng, {"a": track(4)}, range(2, 4))
    assert torch.isfinite(eng.hidden("a")).all() and eng.nonfinite_resets == 0


def test_group_ids_are_reused_when_rooms_empty():
    """Rooms come and go over a server's life; their ids stay small (the neighbour grid
    packs them into 21 bits)."""
    eng = TickEngine(None, device="cpu")
    for r in range(1000):
        eng.join(f"a{r}", f"room{r}")
        eng.join(f"b{r}", f"room{r}")
        eng.leave(f"a{r}")
        eng.leave(f"b{r}")
    eng.join("x", "lobby")
    eng.join("y", "other")
    eng.join("z", "lobby")
    g = {a: int(eng.table.group[eng.slot(a)]) for a in "xyz"}
    assert g["x"] == g["z"] != g["y"] and max(g.values()) <= 1


def test_start_and_finish_tick_are_tick_and_a_pickled_copy_steps_the_same(rng):
    import pickle

    lm = make_model()
    a, b = (
        TickEngine(lm, device="cpu", blend=None),
        TickEngine(make_model(), device="cpu", blend=None),
    )
    for e in (a, b):
        e.join("x", "r1"), e.join("y", "r1")
    copy = None
    for k in range(12):
        if k == 6:  # a copy made between two ticks (what a step worker gets) goes on alike
            copy = pickle.loads(pickle.dumps(b))
            assert copy.worker is None and copy.fstate.t.base is copy.fstate.data
            copy.join("z", "r2"), a.join("z", "r2")
            b = copy
        noise = rng.normal(0, 0.01, 3)
        for e in (a, b):
            for i, key in enumerate(("x", "y", "z")):
                if key in e:
                    assert e.submit(key, k * 0.05, (i + 0.1 * k, noise[i], 0.0), k)
        ra = a.tick()
        batch = b.start_tick()
        assert batch.tick == b.ticks and len(batch) == len(ra) and b.pending == 0
        rb = b.finish_tick(batch)
        np.testing.assert_array_equal(ra.offsets, rb.offsets)
        assert ra.avatars.tolist() == rb.avatars.tolist() and ra.tick == rb.tick
    assert len(b.finish_tick(b.start_tick())) == 0  # nothing pending: an empty result


def test_an_avatar_that_leaves_during_a_step_gets_no_row_nor_its_successor_its_state():
    # the loop may run join/leave between start_tick and finish_tick (a thread's step)
    eng = TickEngine(make_model(), device="cpu", blend=None)
    tracks = {"a": track(8, 0), "b": track(8, 1), "c": track(8, 2)}
    for av in tracks:
        eng.join(av)
    run_ticks(eng, tracks, range(3))
    for av, (t, p) in tracks.items():
        eng.submit(av, t[3], p[3], seq=3)
    batch = eng.start_tick()
    slot_a, slot_c = eng.slot("a"), eng.slot("c")
    eng.leave("a"), eng.leave("c")
    assert eng.join("d") == slot_a  # the lowest free slot: a's
    res = eng.finish_tick(batch)
    assert res.avatars.tolist() == ["b"] and len(res.offsets) == 1
    assert np.isnan(eng.predictions().t[[slot_a, slot_c]]).all()
    assert eng.snapshot().avatars.tolist() == ["b"]
    assert torch.count_nonzero(eng.hidden("d")) == 0  # d starts from a zero state
    assert np.isnan(eng.fstate.data[0, slot_a])  # and a new segment


def test_pend_batch_queues_another_engines_batch_and_refuses_foreign_slots():
    src, dst = (
        TickEngine(make_model(), device="cpu", blend=None),
        TickEngine(make_model(), device="cpu", blend=None),
    )
    for e in (src, dst):
        e.join("a"), e.join("b")
    src.submit("b", 0.1, (1.0, 2.0, 0.0), seq=7)
    batch = src.start_tick()
    dst.pend_batch(batch)
    assert dst.pending == 1
    res = dst.tick()
    assert res.avatars.tolist() == ["b"] and res.seq.tolist() == [7]
    np.testing.assert_array_equal(res.offsets, src.finish_tick(batch).offsets)
    dst.leave("b")
    with pytest.raises(RuntimeError):
        dst.pend_batch(batch)  # slot 1 is no longer joined here
