import numpy as np
import pytest
import torch

from server.core import features as F
from server.core import layout as L
from server.core.engine import TickEngine
from server.core.layout import FeatureConfig, FeatureState
from server.core.model import LoadedModel, ModelConfig, MotionGRU
from server.core.neighbours import neighbour_features


def brute_force(state, rows, live, group, clock, cfg):
    """The definition, one avatar at a time: k nearest live same-group rows within radius."""
    d = state.data
    out = np.zeros((len(rows), L.NB_WIDTH * cfg.neighbours), np.float32)
    for a, e in enumerate(rows):
        cands = []
        for j in np.flatnonzero(live & ~np.isnan(d[0])):
            age = clock[e] - clock[j]
            if j == e or group[j] != group[e] or abs(age) > cfg.max_gap:
                continue
            rel = d[11:13, j] + d[14:16, j] * age - d[11:13, e]
            dist = np.hypot(*rel)
            if dist <= cfg.nb_radius:
                cands.append((dist, j, rel))
        cands.sort(key=lambda c: c[0])
        c, s = d[9, e], d[10, e]
        for b, (_, j, rel) in enumerate(cands[: cfg.neighbours]):
            dv = d[14:16, j] - d[14:16, e]
            blk = [
                (c * rel[0] + s * rel[1]) / cfg.nb_pos_scale,
                (-s * rel[0] + c * rel[1]) / cfg.nb_pos_scale,
                (c * dv[0] + s * dv[1]) / cfg.v_scale,
                (-s * dv[0] + c * dv[1]) / cfg.v_scale,
                1.0,
            ]
            out[a, L.NB_WIDTH * b : L.NB_WIDTH * (b + 1)] = np.clip(blk, -10, 10)
    return out


def random_state(rng, n=60, span=30.0, cfg=None):
    cfg = cfg or FeatureConfig(neighbours=4)
    st = FeatureState(n)
    rows = np.arange(n)
    p0 = np.c_[rng.uniform(0, span, (n, 2)), np.zeros(n)]
    v = np.c_[rng.normal(0, 1, (n, 2)), np.zeros(n)]
    t0 = rng.uniform(0, 0.04, n)
    for k in range(4):
        F.step(st, rows, t0 + 0.05 * k, p0 + v * 0.05 * k, cfg)
    return st, cfg


def test_matches_the_brute_force_definition(rng):
    st, cfg = random_state(rng)
    n = len(st)
    live = rng.random(n) < 0.9
    group = rng.integers(0, 2, n)
    rows = np.flatnonzero(live)[::2]
    clock = st.t.copy()
    got = neighbour_features(st, rows, live, group, clock, cfg)
    want = brute_force(st, rows, live, group, clock, cfg)
    assert got[:, L.NB_ON :: L.NB_WIDTH].sum() > len(rows)  # most have neighbours
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_rooms_dead_rows_and_stale_samples_are_not_neighbours(rng):
    cfg = FeatureConfig(neighbours=2)
    st = FeatureState(4)
    p = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [-1, 0, 0.0]])
    F.step(st, np.arange(4), np.zeros(4), p, cfg)
    live = np.array([True, True, True, False])  # row 3 left
    group = np.array([0, 1, 0, 0])  # row 1 is in another room
    clock = np.array([0.0, 0.0, 5.0, 0.0])  # row 2's newest sample is 5 s away
    got = neighbour_features(st, np.array([0]), live, group, clock, cfg)
    assert not got.any()
    clock[2] = 0.5
    got = neighbour_features(st, np.array([0]), live, group, clock, cfg)
    assert got[0, L.NB_ON] == 1 and got[0, L.NB_WIDTH + L.NB_ON] == 0


def test_dense_cell_is_cut_to_the_cap_deterministically(rng):
    cfg = FeatureConfig(neighbours=3, nb_cell_cap=4, nb_radius=8.0)
    st = FeatureState(40)
    F.step(st, np.arange(40), np.zeros(40), np.c_[rng.uniform(0, 1, (40, 2)), np.zeros(40)], cfg)
    live, group, clock = np.ones(40, bool), np.zeros(40, np.int64), np.zeros(40)
    a = neighbour_features(st, np.arange(40), live, group, clock, cfg)
    perm = rng.permutation(40)  # the same crowd numbered differently
    st2 = FeatureState(40)
    st2.data[:] = st.data[:, perm]
    b = neighbour_features(st2, np.arange(40), live, group, clock, cfg)
    inv = np.argsort(perm)
    np.testing.assert_allclose(a, b[inv], atol=1e-6)
    assert (a[:, L.NB_ON :: L.NB_WIDTH].sum(1) == 3).all()


def staggered_scene(rng, n=12, steps=80):
    """Avatars joining and leaving at different ticks, 20 Hz with per-avatar phase."""
    ts, ps = [], []
    for _ in range(n):
        a = int(rng.integers(0, steps // 2))
        b = int(rng.integers(a + 5, steps))
        k = np.arange(a, b)
        t = 0.05 * k + rng.uniform(0, 0.04)
        v = rng.normal(0, 1.2, 2)
        xy = rng.uniform(0, 10, 2) + np.outer(t, v) + 0.1 * np.sin(np.c_[t, 2 * t])
        ts.append(t)
        ps.append(np.c_[xy, np.zeros(len(t))])
    return ts, ps


def tiny_model(cfg, seed=0, cell="gru"):
    torch.manual_seed(seed)
    m = MotionGRU(ModelConfig(n_features=cfg.n_features, hidden=12, head_hidden=12, cell=cell))
    with torch.no_grad():
        for prm in m.parameters():
            prm.normal_(0, 0.2)
    return LoadedModel(m.eval(), cfg, "test", torch.device("cpu"), {})


def replay_in_engine(engine, ts, ps, tick=0.05):
    """Join each avatar at the tick of its first sample, leave after its last; return the
    features and predictions of every (avatar, sample)."""
    t0 = min(t[0] for t in ts)
    ticks = [np.floor((t - t0) / tick + 1e-9).astype(int) for t in ts]
    last = max(k[-1] for k in ticks)
    x = [np.zeros((len(t), engine.cfg.n_features), np.float32) for t in ts]
    pred = [np.zeros((len(t), len(engine.horizons), 3)) for t in ts]
    steps = 0
    for k in range(last + 1):
        for i, tk in enumerate(ticks):
            if tk[0] == k:
                engine.join(f"a{i}", "room")
            j = np.flatnonzero(tk == k)
            if len(j):
                engine.submit(f"a{i}", ts[i][j[0]], ps[i][j[0]])
        res = engine.tick()
        steps += 1
        for r, av in enumerate(res.avatars):
            i = int(av[1:])
            j = np.flatnonzero(ticks[i] == k)[0]
            x[i][j] = engine.last_features[r]
            pred[i][j] = res.pred[r]
        for i, tk in enumerate(ticks):
            if tk[-1] == k:
                engine.leave(f"a{i}")
    return x, pred, steps


def test_training_path_and_engine_give_the_same_neighbour_features(rng):
    cfg = FeatureConfig(neighbours=3, nb_radius=6.0)
    ts, ps = staggered_scene(rng)
    sf = F.scene_features(ts, ps, cfg)
    lm = tiny_model(cfg)
    x, _, _ = replay_in_engine(TickEngine(lm, device="cpu", capacity=4, blend=None), ts, ps)
    worst = max(np.abs(a - b).max() for a, b in zip(x, sf.x, strict=True))
    assert worst <= 1e-5
    on = np.concatenate(sf.x)[:, L.N_FEATURES + L.NB_ON :: L.NB_WIDTH]
    assert on.sum() > 50  # the scene has neighbours to compare


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_engine_one_step_per_tick_matches_the_sequence_forward(rng, cell):
    from training.evaluate import GRUPredictor

    cfg = FeatureConfig(neighbours=3, nb_radius=6.0, out_scale=(0.1,) * 10)
    ts, ps = staggered_scene(rng, n=8, steps=50)
    lm = tiny_model(cfg, cell=cell)
    calls = []
    step = lm.model.step
    lm.model.step = lambda *a: calls.append(1) or step(*a)
    engine = TickEngine(lm, device="cpu", capacity=4, blend=None)
    _, pred, ticks = replay_in_engine(engine, ts, ps)
    assert len(calls) <= ticks  # one batched model step per tick at most (none when idle)
    want = GRUPredictor(lm).scene(list(zip(ts, ps, strict=True)), cfg.horizons)
    worst = max(np.abs(a - b).max() for a, b in zip(pred, want, strict=True))
    assert worst <= 1e-4


def test_scene_without_neighbours_equals_sequence_features(rng):
    cfg = FeatureConfig()
    ts, ps = staggered_scene(rng, n=5)
    a = F.scene_features(ts, ps, cfg)
    b = F.sequence_features(ts, ps, cfg)
    for xa, xb in zip(a.x, b.x, strict=True):
        np.testing.assert_array_equal(xa, xb)


def test_mirror_signs_cover_the_neighbour_blocks(rng):
    cfg = FeatureConfig(neighbours=2, nb_radius=20.0)
    ts, ps = staggered_scene(rng, n=4)
    a = np.concatenate(F.scene_features(ts, ps, cfg).x)
    b = np.concatenate(F.scene_features(ts, [p * [1, -1, 1] for p in ps], cfg).x)
    moving = np.abs(a[:, L.SPEED_EMA]) > 0.2  # frames settled
    np.testing.assert_allclose(a[moving], (b * cfg.mirror_signs())[moving], atol=1e-4)


def test_an_avatar_outside_every_occupied_cell_sees_no_one(rng):
    """Rows passed in must be live; one that is not, alone in its cell (no candidate there,
    its key beyond every occupied cell), must neither fail nor read another cell's block."""
    st, cfg = random_state(rng, n=10, span=5.0)
    live = np.ones(10, bool)
    live[0] = False
    st.data[11:13, 0] = 5000.0
    got = neighbour_features(st, np.array([0, 1]), live, np.zeros(10, np.int64), st.t.copy(), cfg)
    assert not got[0].any() and got[1, L.NB_ON] == 1


def test_set_threads_is_clamped_to_the_cores_and_kept_per_thread():
    import threading

    import numba

    from server.core.neighbours import set_threads

    cores = numba.config.NUMBA_NUM_THREADS
    before = numba.get_num_threads()
    try:
        set_threads(10_000)
        assert numba.get_num_threads() == cores
        set_threads(0)
        assert numba.get_num_threads() == 1
        seen = []
        t = threading.Thread(target=lambda: seen.append(numba.get_num_threads()))
        t.start()
        t.join()
        assert seen == [cores]  # another thread keeps numba's default
    finally:
        numba.set_num_threads(before)
