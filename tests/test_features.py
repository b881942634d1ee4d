import numpy as np
import pytest

from server.core import features as F
from server.core.layout import FeatureConfig, FeatureState


def rot(theta: float) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def curved_track(n=40, dt=0.05):
    t = np.arange(n) * dt
    a = 0.3 * t
    p = np.stack([3 * np.sin(a), 3 * (1 - np.cos(a)), 0 * t], axis=1) + [5, -2, 0]
    return t, p


def test_first_sample_is_reset_and_cv_prior_is_hold():
    cfg = FeatureConfig()
    st = FeatureState(2)
    out = F.step(
        st, np.array([0, 1]), np.array([1.0, 2.0]), np.array([[1, 2, 0], [3, 4, 5.0]]), cfg
    )
    assert out.reset.all()
    assert (out.x[:, F.RESET] == 1).all()
    pred = F.decode(np.zeros((2, cfg.n_horizons, 3)), out, cfg)
    np.testing.assert_allclose(pred, np.broadcast_to(out.p[:, None], pred.shape))


@pytest.mark.parametrize("q, r", [(1.0, 0.02), (0.05, 0.001), (40.0, 0.2)])
def test_zero_residual_is_the_kalman_prior_exactly(q, r, rng):
    """A zero model output is `training.baselines.KalmanCV` with the same q and r, on an
    irregular, noisy track with a gap and a teleport (resets)."""
    from training.baselines import KalmanCV

    cfg = FeatureConfig(kalman_q=q, kalman_r=r)
    t = np.cumsum(rng.uniform(0.02, 0.12, 120))
    t[60:] += 2.0  # a gap: reset
    p = np.cumsum(rng.normal(scale=0.05, size=(120, 3)), axis=0)
    p[90:, 0] += 40.0  # a teleport: reset
    out = F.sequence_features([t], [p], cfg).out[0]
    assert out.reset[[0, 60, 90]].all()
    pred = F.decode(np.zeros((len(t), cfg.n_horizons, 3)), out, cfg)
    oracle = KalmanCV(q=q, r=r, init_vel_std=cfg.kalman_init_vel_std)(t, p, cfg.horizons)
    np.testing.assert_allclose(pred, oracle, rtol=0, atol=1e-9)


def test_decode_is_one_function_for_numpy_and_torch(rng):
    import torch

    n, H = 7, 10
    args = [
        rng.normal(size=(n, H, 3)),
        rng.normal(size=(n, 3)),
        rng.normal(size=(n, 3)),
        rng.normal(size=(n, 2)),
        np.linspace(0.1, 1, H),
        rng.uniform(0.1, 1, H),
    ]
    a = F.decode_offsets(*args)
    b = F.decode_offsets(*[torch.from_numpy(x) for x in args]).numpy()
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_encode_decode_roundtrip(rng):
    cfg = FeatureConfig(out_scale=tuple(np.linspace(0.1, 1, 10)))
    t, p = curved_track()
    sf = F.sequence_features([t], [p], cfg)
    out = sf.out[0]
    truth = rng.normal(size=(len(t), cfg.n_horizons, 3))
    res = F.encode_targets(truth, out, cfg)
    np.testing.assert_allclose(F.decode(res, out, cfg), truth, atol=1e-5)


def test_features_invariant_to_rotation_translation_and_mirror_flips_y():
    cfg = FeatureConfig()
    t, p = curved_track()
    base = F.sequence_features([t], [p], cfg).x[0]
    moved = p @ rot(1.1).T + [100, -40, 0]
    x2 = F.sequence_features([t], [moved], cfg).x[0]
    # Frames start from a default heading before the avatar moves: compare once moving.
    np.testing.assert_allclose(base[3:], x2[3:], atol=1e-5)
    mirrored = p * [1, -1, 1]
    x3 = F.sequence_features([t], [mirrored], cfg).x[0]
    np.testing.assert_allclose(base[3:], x3[3:] * cfg.mirror_signs(), atol=1e-5)


@pytest.mark.parametrize("kind", ["teleport", "gap"])
def test_teleport_and_gap_reset(kind):
    cfg = FeatureConfig()
    t = np.arange(10) * 0.1
    p = np.zeros((10, 3))
    p[:, 0] = t
    if kind == "teleport":
        p[6:, 0] += 50.0
    else:
        t[6:] += 5.0
    out = F.sequence_features([t], [p], cfg).out[0]
    assert out.reset.tolist() == [True] + [False] * 5 + [True] + [False] * 3
    assert np.abs(out.x).max() <= F.FEATURE_CLIP
    np.testing.assert_allclose(out.v[6], 0)


def test_irregular_dt_and_duplicate_time_are_finite(rng):
    cfg = FeatureConfig()
    t = np.cumsum(rng.uniform(1 / 60, 1 / 10, 200))
    t[50] = t[49]  # duplicate time: clamped to min_dt, never inf
    p = np.cumsum(rng.normal(scale=0.01, size=(200, 3)), axis=0)
    out = F.sequence_features([t], [p], cfg).out[0]
    assert np.isfinite(out.x).all()
    assert np.abs(out.x).max() <= F.FEATURE_CLIP


def test_sequence_features_matches_stepping_with_different_lengths(rng):
    cfg = FeatureConfig()
    tracks = []
    for n in (5, 17, 9):
        t = np.cumsum(rng.uniform(0.02, 0.1, n))
        tracks.append((t, np.cumsum(rng.normal(scale=0.05, size=(n, 3)), axis=0)))
    sf = F.sequence_features([a for a, _ in tracks], [b for _, b in tracks], cfg)
    for i, (t, p) in enumerate(tracks):
        st = FeatureState(1)
        for k in range(len(t)):
            o = F.step(st, np.array([0]), t[k : k + 1], p[k : k + 1], cfg)
            np.testing.assert_array_equal(o.x[0], sf.x[i][k])
