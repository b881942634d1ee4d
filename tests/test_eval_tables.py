"""Tests for training.eval_tables: statistics, the best classical predictor, ratios, tables."""

import numpy as np
import pytest

from training.eval_tables import (
    CLASSICAL,
    CLASSICAL_PATHS,
    best_classical,
    predictor_stats,
    print_table,
    ratios,
)

H = np.array([0.5, 1.0])


def _table() -> dict:
    """Errors per predictor: (N, H) path errors and render errors, `gru` the best."""
    scale = {"hold": 4.0, "cv": 2.0, "cv_window": 2.5, "kalman": 1.5, "imm": 1.6, "gru": 1.0}
    errs = {k: [np.array([[0.1, 0.2], [0.3, np.nan]]) * s] for k, s in scale.items()}
    rerr = {k: [np.linspace(0.0, 0.1, 21) * s] for k, s in scale.items()}
    rerr["interp"] = [np.linspace(0.0, 0.1, 21) * 3.0]
    return predictor_stats(errs, rerr, H)


def test_predictor_stats_ignore_nan_and_label_horizons():
    t = _table()
    assert list(t["gru"]["ade_by_horizon"]) == ["0.5", "1"]
    assert t["gru"]["ade_by_horizon"]["0.5"] == pytest.approx(0.2)
    assert t["gru"]["ade_by_horizon"]["1"] == pytest.approx(0.2)
    assert t["gru"]["ade"] == pytest.approx(0.2)
    assert set(t["interp"]) == {"render_mean", "render_p95"}
    assert t["gru"]["render_mean"] == pytest.approx(0.05)


def test_best_classical_and_ratios():
    t = _table()
    best = best_classical(t)
    assert best["render_mean"] == "kalman" and best["render_mean"] in CLASSICAL
    assert best["horizon"] == {"0.5": "kalman", "1": "kalman"}
    assert set(best["horizon"].values()) <= set(CLASSICAL_PATHS)
    rt = ratios({"predictors": t})
    assert rt["render_mean_vs_best_classical"] == pytest.approx(1.0 / 1.5)
    assert rt["last_horizon_vs_cv"] == pytest.approx(0.5)
    assert rt["worst_horizon_vs_best_classical"] == pytest.approx(1.0 / 1.5)


def test_print_table_names_the_best_classical(capsys):
    print_table(_table(), "title")
    out = capsys.readouterr().out
    assert out.startswith("-- title")
    assert "best classical: render mean kalman" in out and "gru vs best classical" in out
