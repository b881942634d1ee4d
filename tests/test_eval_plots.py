"""Tests for training.eval_plots: the evaluation's PNG plots."""

import numpy as np

from training.eval_plots import plot
from training.eval_tables import PATH_PREDICTORS, RENDER_METHODS
from training.simulate import simulate


def test_plot_writes_the_three_pngs(tmp_path):
    h = np.array([0.5, 1.0])
    obs = simulate(2, 4.0, seed=5)
    by_h = {"0.5": 0.1, "1": 0.2}
    rng = np.random.default_rng(0)
    result = {
        "predictors": {k: {"ade_by_horizon": by_h} for k in PATH_PREDICTORS},
        "_render": {k: [rng.uniform(0, 1, 50)] for k in RENDER_METHODS},
        "_obs": obs,
        "_gru_paths": [np.repeat(o.p[:, None, :], len(h), axis=1) for o in obs],
    }
    files = plot(result, h, tmp_path / "plots")
    assert sorted(f.name for f in files) == [
        "error_vs_horizon.png",
        "example_tracks.png",
        "render_error_cdf.png",
    ]
    assert all(f.stat().st_size > 0 for f in files)
