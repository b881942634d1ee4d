"""Tests for training.windows: residual targets over the prior and training windows."""

import numpy as np

from server.core import features as F
from server.core.features import FeatureConfig
from training.datasets import Track
from training.windows import make_windows, residuals


def test_residual_targets_mask_teleports_and_decode_back():
    t = np.arange(30) * 0.1
    p = np.zeros((30, 3))
    p[:, 0] = t
    p[20:, 0] += 30.0  # teleport at sample 20
    tr = Track("a", t, p)
    cfg = FeatureConfig()
    ((x, y, reset),) = residuals([tr], cfg)
    assert x.shape == (30, F.N_FEATURES) and y.shape == (30, 10, 3)
    assert reset[0] and reset[20]
    assert np.isnan(y[19]).all()  # the future across the jump is no target
    assert np.isfinite(y[5]).all()
    np.testing.assert_allclose(y[5], 0, atol=1e-4)  # straight line: the prior is (nearly) exact


def test_make_windows_burn_in_and_segments():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, F.N_FEATURES)).astype(np.float32)
    y = rng.normal(size=(50, 10, 3))
    reset = np.zeros(50, bool)
    reset[[0, 30]] = True
    w = make_windows([(x, y, reset)], np.ones(10), length=16, burn_in=4)
    assert w.x.shape[1:] == (16, F.N_FEATURES)
    # first window of each segment is supervised from step 0, later ones after burn-in
    assert w.m[0, 0].all()
    assert not w.m[1, :4].any() and w.m[1, 4].all()
    starts = [np.flatnonzero((x == wx[0]).all(1))[0] for wx in w.x]
    assert 30 in starts  # a window starts at the second segment
    for s, wx, wm in zip(starts, w.x, w.m, strict=True):
        n = min(16, (30 if s < 30 else 50) - s)
        assert not wm[n:].any()  # no window crosses a reset
        np.testing.assert_array_equal(wx[:n], x[s : s + n])
