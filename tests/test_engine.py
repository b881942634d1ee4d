import itertools

import numpy as np
import pytest
import torch

from server import features as F
from server.engine import TickEngine
from server.features import FeatureConfig
from server.model import LoadedModel, ModelConfig, MotionGRU


def make_model(hidden=16, layers=1, seed=0) -> LoadedModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden=hidden, layers=layers, n_horizons=5)
    m = MotionGRU(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    feats = FeatureConfig(horizons=(0.1, 0.2, 0.4, 0.7, 1.0), out_scale=(0.05, 0.1, 0.2, 0.3, 0.5))
    return LoadedModel(m.eval(), feats, "test", torch.device("cpu"), {})


def reference_predictions(lm: LoadedModel, t, p) -> np.ndarray:
    """Whole-sequence forward over one avatar's samples, split at resets."""
    sf = F.sequence_features([t], [p], lm.features)
    x, out = sf.x[0], sf.out[0]
    starts = [*list(np.flatnonzero(out.reset)), len(t)]
    ys = []
    with torch.no_grad():
        for a, b in itertools.pairwise(starts):
            y, _ = lm.model(torch.from_numpy(x[a:b])[None])
            ys.append(y[0].numpy())
    return F.decode(np.concatenate(ys), out, lm.features)


@pytest.mark.parametrize("layers", [1, 2])
def test_engine_stepping_matches_sequence_forward(rng, layers):
    lm = make_model(layers=layers)
    eng = TickEngine(lm, device="cpu", capacity=2)  # forces growth
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
                sent[i].append((tt, pos))
            if k == leave_at[i]:
                eng.leave(f"a{i}")
        res = eng.tick()
        assert len(set(res.slots.tolist())) == len(res)
        for row, av in enumerate(res.avatars):
            got[int(av[1:])].append(res.pred[row])
    worst = 0.0
    for i in range(n_av):
        t = np.array([s[0] for s in sent[i]])
        p = np.array([s[1] for s in sent[i]])
        ref = reference_predictions(lm, t, p)
        worst = max(worst, np.abs(np.array(got[i]) - ref).max())
    assert worst <= 1e-5
    assert len(eng) == 0 and eng.capacity >= 8


def test_latest_sample_wins_and_old_samples_rejected():
    eng = TickEngine(make_model(), device="cpu")
    eng.join("a")
    assert eng.submit("a", 1.0, (0, 0, 0), seq=1)
    assert eng.submit("a", 1.1, (0.1, 0, 0), seq=2)
    assert not eng.submit("a", 1.05, (5, 5, 5), seq=3)  # older than the pending one
    res = eng.tick()
    assert res.seq.tolist() == [2] and res.t.tolist() == [1.1]
    assert not eng.submit("a", 1.1, (0, 0, 0), seq=4)  # not newer than processed
    assert len(eng.tick()) == 0


def test_avatars_without_sample_keep_last_prediction():
    eng = TickEngine(make_model(), device="cpu")
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
    eng = TickEngine(lm, device="cpu", capacity=2)
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
    eng = TickEngine(make_model(), device="cpu")
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
    fresh = TickEngine(eng.model, device="cpu")
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


def test_non_finite_hidden_state_is_never_stored():
    lm = make_model()
    eng = TickEngine(lm, device="cpu")
    eng.join("a")
    eng.join("b")
    eng.submit("a", 0.0, (0, 0, 0))
    eng.submit("b", 0.0, (1, 0, 0))
    eng.tick()
    with torch.no_grad():
        lm.model.gru.bias_hh_l0[0] = float("nan")  # a broken model poisons every row
    eng.submit("a", 0.1, (0.1, 0, 0))
    eng.tick()
    assert torch.count_nonzero(eng.hidden("a")) == 0  # zeroed, not NaN
    assert torch.count_nonzero(eng.hidden("b")) > 0  # untouched: no sample this tick


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
