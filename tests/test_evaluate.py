"""Tests for training.evaluate: the GRU as a path predictor, `evaluate` and its CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from server.core.features import FeatureConfig
from server.core.model import ModelConfig, MotionGRU, load_checkpoint, save_checkpoint
from training import baselines as B
from training import evaluate as E
from training.eval_tables import CLASSICAL, ratios
from training.simulate import simulate


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    m = MotionGRU(ModelConfig(hidden=8, head_hidden=8))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    path = tmp_path / "m.pt"
    save_checkpoint(path, m, FeatureConfig(out_scale=(0.05,) * 10))
    return path


def test_gru_predictor_matches_engine_semantics_and_is_causal(ckpt):
    lm = load_checkpoint(ckpt, "cpu")
    tr = simulate(1, 6.0, seed=5)[0]
    h = np.asarray(lm.features.horizons)
    gru = E.GRUPredictor(lm)
    full = gru(tr.t, tr.p, h)
    assert full.shape == (len(tr), 10, 3)
    k = len(tr) // 2
    part = gru(tr.t[:k], tr.p[:k], h)
    np.testing.assert_allclose(part, full[:k], atol=1e-5)
    many = gru.many([(tr.t, tr.p), (tr.t[:k], tr.p[:k])], h)
    np.testing.assert_allclose(many[1], part, atol=1e-5)
    with pytest.raises(ValueError):
        gru(tr.t, tr.p, h[:3])


def test_untrained_gru_equals_the_kalman_prior(tmp_path):
    path = tmp_path / "prior.pt"
    fc = FeatureConfig(kalman_q=0.5, kalman_r=0.03)
    save_checkpoint(path, MotionGRU(ModelConfig(hidden=8, head_hidden=8)), fc)
    lm = load_checkpoint(path, "cpu")
    tr = simulate(1, 5.0, seed=6)[0]
    h = np.asarray(lm.features.horizons)
    np.testing.assert_allclose(
        E.GRUPredictor(lm)(tr.t, tr.p, h), B.KalmanCV(q=0.5, r=0.03)(tr.t, tr.p, h), atol=1e-5
    )


def test_real_slice_computes_per_recording_with_best_classical_named(ckpt, tmp_path):
    """`evaluate` on a small slice of real recordings (no accuracy asserted)."""
    from training import realmotion as RM

    csv = tmp_path / "juelich.csv"
    rows = ["user_id,timestamp,x,y"]
    rng = np.random.default_rng(1)
    for run in ("uo-070-180-180", "uo-100-180-180"):
        for i in range(4):
            x0, y0 = rng.uniform(0, 3, 2)
            rows += [f"{run}_{i},{k / 16:.4f},{x0 + 0.02 * np.sin(k):.4f},{y0 + 0.08 * k:.4f}"
                     for k in range(40)]  # fmt: skip
    csv.write_text("\n".join(rows) + "\n")
    scenes = RM.load_scenes("juelich", "all", path=csv)
    lm = load_checkpoint(ckpt, "cpu")
    seed = lambda t, p, h: B.hold(t, p, h)  # noqa: E731 - an extra named path predictor
    res = E.evaluate(scenes, lm, extra={"other": seed})
    assert set(res["recordings"]) == {"juelich/uo-070-180-180", "juelich/uo-100-180-180"}
    for table in [res["predictors"], *(r["predictors"] for r in res["recordings"].values())]:
        rt = ratios(table)
        assert rt["best_classical"]["render_mean"] in CLASSICAL
        assert len(rt["by_horizon_vs_best_classical"]) == 10
        assert np.isfinite(table["gru"]["render_mean"]) and "other" in table


def test_cli_on_small_generated_set_writes_json_and_plots(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    plots = tmp_path / "plots"
    res = E.main(
        ["--data", "synthetic:4:123:8", "--model", str(ckpt), "--noise", "0.02", "--jitter", "20"]
        + ["--json", str(out), "--plots", str(plots)]
    )
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(res))
    preds = data["predictors"]
    for k in ("hold", "cv", "cv_window", "kalman", "gru"):
        assert set(preds[k]) >= {"ade", "ade_by_horizon", "render_mean", "render_p95"}
        assert list(preds[k]["ade_by_horizon"]) == [
            f"{0.1 * i:.1f}".rstrip("0").rstrip(".") for i in range(1, 11)
        ]
    assert set(preds["interp"]) == {"render_mean", "render_p95"}
    assert preds["hold"]["ade"] > preds["cv_window"]["ade"]  # sanity: extrapolation helps
    assert sorted(p.name for p in plots.iterdir()) == [
        "error_vs_horizon.png",
        "example_tracks.png",
        "render_error_cdf.png",
    ]
    printed = capsys.readouterr().out
    assert "gru vs best classical" in printed and "best classical: render mean" in printed


def test_csv_input_and_training_seeds_refused(ckpt, tmp_path):
    from training.simulate import write_csv

    csv = tmp_path / "d.csv"
    write_csv(simulate(3, 6.0, seed=9), csv)
    res = E.main(["--data", str(csv), "--model", str(ckpt), "--max-tracks", "2"])
    assert res["tracks"] == 2
    with pytest.raises(SystemExit):  # the training users are refused on the command line too
        E.main(["--data", "synthetic:4:0", "--model", str(ckpt)])


def test_data_with_nothing_to_score_is_one_line_not_a_traceback(capsys):
    seed = Path(E.__file__).resolve().parent / "data" / "seed_example.csv"
    with pytest.raises(SystemExit) as e:
        E.main(["--data", str(seed)])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to score" in err[0]
