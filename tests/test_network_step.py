"""The network's batched step (server.core.network_step): `NetworkStep`, its repair of
non-finite rows, `state_shape` and `check_model`. The repair tests through `TickEngine`
are how a broken model meets the step in the server."""

import numpy as np
import pytest
import torch

from server.core import features as F
from server.core.engine import TickEngine
from server.core.model import LoadedModel, ModelConfig, MotionGRU
from server.core.network_step import NetworkStep, check_model, state_shape
from server.core.slots import HiddenStatePool
from tests.test_engine import FEATS, make_model, run_ticks, track

CPU = torch.device("cpu")


def test_non_finite_hidden_state_is_never_stored():
    lm = make_model()
    eng = TickEngine(lm, device="cpu", blend=None)
    eng.join("a")
    eng.join("b")
    eng.submit("a", 0.0, (0, 0, 0))
    eng.submit("b", 0.0, (1, 0, 0))
    eng.tick()
    assert eng.nonfinite_resets == 0
    with torch.no_grad():
        lm.model.rnn.bias_hh_l0[0] = float("nan")  # a broken model poisons every row
    eng.submit("a", 0.1, (0.1, 0, 0))
    res = eng.tick()
    assert torch.count_nonzero(eng.hidden("a")) == 0  # zeroed, not NaN
    assert torch.count_nonzero(eng.hidden("b")) > 0  # untouched: no sample this tick
    assert eng.nonfinite_resets == 1
    prior = prior_engine()  # the fallback is the Kalman prior's path (a zero residual)
    prior.join("a")
    prior.submit("a", 0.0, (0, 0, 0))
    prior.tick()
    prior.submit("a", 0.1, (0.1, 0, 0))
    np.testing.assert_allclose(res.offsets[0], prior.tick().offsets[0], rtol=0, atol=1e-6)


def prior_engine(feats=FEATS) -> TickEngine:
    """An engine serving an untrained model: exactly the Kalman prior."""
    cfg = ModelConfig(hidden=4, n_horizons=feats.n_horizons, n_features=feats.n_features)
    return TickEngine(
        LoadedModel(MotionGRU(cfg), feats, "prior", torch.device("cpu"), {}), blend=None
    )


def test_nonfinite_step_rows_are_reset_and_counted(monkeypatch):
    lm, twin_lm = make_model(seed=0), make_model(seed=0)
    eng, twin = (
        TickEngine(lm, device="cpu", blend=None),
        TickEngine(twin_lm, device="cpu", blend=None),
    )
    cv = prior_engine()
    tracks = {f"a{i}": track(8, i) for i in range(4)}
    for e in (eng, twin, cv):
        for av in tracks:
            e.join(av)
        run_ticks(e, tracks, range(4))
    assert eng.nonfinite_resets == 0  # healthy ticks count nothing
    step = lm.model.step

    def poisoned(x, h):
        y, h = step(x, h)
        y, h = y.clone(), h.clone()
        h[-1, 1, 3] = float("nan")  # row 1: hidden state
        y[2, 4, 0] = float("inf")  # row 2: prediction only
        return y, h

    monkeypatch.setattr(lm.model, "step", poisoned)
    for e in (eng, twin, cv):
        for av, (t, p) in tracks.items():
            e.submit(av, t[4], p[4], seq=4)
    res, ref, ref_cv = eng.tick(), twin.tick(), cv.tick()
    assert res.avatars.tolist() == ["a0", "a1", "a2", "a3"]
    assert eng.nonfinite_resets == 2
    assert np.isfinite(res.offsets).all()
    np.testing.assert_array_equal(res.offsets[[0, 3]], ref.offsets[[0, 3]])
    np.testing.assert_allclose(res.offsets[[1, 2]], ref_cv.offsets[[1, 2]], rtol=0, atol=1e-6)
    for i in (1, 2):
        assert torch.count_nonzero(eng.hidden(f"a{i}")) == 0
    for i in (0, 3):
        torch.testing.assert_close(eng.hidden(f"a{i}"), twin.hidden(f"a{i}"), rtol=0, atol=0)
    np.testing.assert_array_equal(eng.snapshot().offsets[[1, 2]], res.offsets[[1, 2]])
    monkeypatch.setattr(lm.model, "step", step)
    run_ticks(eng, tracks, range(5, 8))
    assert eng.nonfinite_resets == 2
    assert torch.isfinite(eng.pool.h).all()


def test_finite_rows_whose_sum_overflows_are_kept(monkeypatch):
    # the batch check is one sum: finite values that overflow it cost only the row check
    lm = make_model(seed=0)
    eng = TickEngine(lm, device="cpu", blend=None)
    tracks = {f"a{i}": track(8, i) for i in range(3)}
    for av in tracks:
        eng.join(av)
    run_ticks(eng, tracks, range(4))
    step = lm.model.step

    def huge(x, h):
        y, h = step(x, h)
        h = h.clone()
        h[-1, :2, 0] = 3e38  # two rows: finite, their sum is not
        return y, h

    monkeypatch.setattr(lm.model, "step", huge)
    run_ticks(eng, tracks, range(4, 5))
    assert eng.nonfinite_resets == 0
    kept = [float(eng.hidden(f"a{i}")[-1, 0]) for i in range(2)]
    assert kept == [float(np.float32(3e38))] * 2


# -- NetworkStep on its own ------------------------------------------------------------


def step_output(n: int, rng: np.random.Generator, feats=FEATS) -> F.StepOutput:
    """`n` rows of made-up features and priors (a unit heading each); no resets."""
    x = rng.normal(size=(n, feats.n_features)).astype(np.float32)
    x[:, F.RESET] = 0.0
    ang = rng.uniform(-np.pi, np.pi, n)
    return F.StepOutput(
        x=x,
        reset=np.zeros(n, dtype=bool),
        p=rng.normal(size=(n, 3)),
        v=rng.normal(size=(n, 3)),
        head=np.stack([np.cos(ang), np.sin(ang)], axis=1),
        prior_dp=rng.normal(size=(n, 3)) * 0.1,
        prior_v=rng.normal(size=(n, 3)),
    )


def filled_pool(lm: LoadedModel, capacity: int, rng) -> HiddenStatePool:
    layers, hidden = state_shape(lm)
    pool = HiddenStatePool(layers, hidden, capacity, CPU)
    pool.h[:] = torch.from_numpy(rng.normal(size=(layers, capacity, hidden)).astype(np.float32))
    return pool


def test_run_is_one_model_step_from_the_pool_decoded_and_stored(rng):
    lm = make_model(layers=2)
    net = NetworkStep(CPU, np.asarray(FEATS.horizons), FEATS, capacity=8)
    pool = filled_pool(lm, 6, rng)
    before = pool.h.clone()
    slots = np.array([4, 0, 2])
    out = step_output(3, rng)
    out.x[1, F.RESET] = 1.0  # row 1 (slot 0) starts from a zero state
    got = net.run(lm, pool, slots, out)
    h_in = before[:, slots].clone()
    h_in[:, 1] = 0.0
    with torch.no_grad():
        y, h_new = lm.model.step(torch.from_numpy(out.x), h_in)
    want = F.decode(y.numpy(), out, FEATS) - out.p[:, None, :]
    assert got.shape == (3, FEATS.n_horizons, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    torch.testing.assert_close(pool.h[:, slots], h_new)
    for s in (1, 3, 5):  # slots not in the batch keep their state
        torch.testing.assert_close(pool.h[:, s], before[:, s], rtol=0, atol=0)
    assert net.nonfinite == 0


def test_run_resets_non_finite_rows_to_the_prior_and_counts_them(rng, monkeypatch):
    lm = make_model()
    net = NetworkStep(CPU, np.asarray(FEATS.horizons), FEATS, capacity=4)
    slots = np.array([0, 1, 2, 3])
    out = step_output(4, rng)
    out.prior_dp[3, 0] = np.inf  # row 3: a non-finite prior falls back to zero offsets
    healthy = net.run(lm, filled_pool(lm, 4, np.random.default_rng(5)), slots, out)
    net.nonfinite = 0  # row 3's prior made it count once: start over
    step = lm.model.step

    def poisoned(x, h):
        y, h = step(x, h)
        y, h = y.clone(), h.clone()
        h[0, 1, 0] = float("nan")  # row 1: hidden state
        y[2, 0, 1] = float("inf")  # row 2: prediction only
        return y, h

    monkeypatch.setattr(lm.model, "step", poisoned)
    pool2 = filled_pool(lm, 4, np.random.default_rng(5))
    got = net.run(lm, pool2, slots, out)
    h = np.asarray(FEATS.horizons)
    prior = out.prior_dp[:, None, :] + out.prior_v[:, None, :] * h[None, :, None]
    assert np.isfinite(got).all() and net.nonfinite == 3
    np.testing.assert_array_equal(got[0], healthy[0])
    np.testing.assert_allclose(got[[1, 2]], prior[[1, 2]], rtol=0, atol=1e-5)
    assert (got[3] == 0).all()
    assert torch.isfinite(pool2.h).all()
    for s in (1, 2, 3):
        assert torch.count_nonzero(pool2.h[:, s]) == 0
    assert torch.count_nonzero(pool2.h[:, 0]) > 0


def test_grow_takes_batches_up_to_the_new_capacity(rng):
    lm = make_model()
    net = NetworkStep(CPU, np.asarray(FEATS.horizons), FEATS, capacity=2)
    pool = filled_pool(lm, 5, rng)
    net.grow(5)
    got = net.run(lm, pool, np.arange(5), step_output(5, rng))
    assert got.shape == (5, FEATS.n_horizons, 3) and np.isfinite(got).all()


def test_state_shape_of_cv_gru_and_lstm():
    assert state_shape(None) == (1, 1)
    assert state_shape(make_model(hidden=8, layers=2)) == (2, 8)
    cfg = ModelConfig(hidden=8, layers=3, n_horizons=FEATS.n_horizons, cell="lstm")
    lstm = LoadedModel(MotionGRU(cfg), FEATS, "lstm", CPU, {})
    assert state_shape(lstm) == (3, 16)  # h and c packed


@pytest.mark.parametrize("extra", [{"n_features": 1}, {"n_horizons": 1}])
def test_check_model_refuses_a_network_that_does_not_fit_the_features(extra):
    check_model(make_model())  # fits: no error
    kw = {"n_features": FEATS.n_features, "n_horizons": FEATS.n_horizons}
    for k, d in extra.items():
        kw[k] += d
    bad = LoadedModel(MotionGRU(ModelConfig(hidden=4, **kw)), FEATS, "bad", CPU, {})
    with pytest.raises(ValueError, match="bad"):
        check_model(bad)
