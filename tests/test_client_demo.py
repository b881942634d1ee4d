from client_demo.__main__ import main
from server.features import FeatureConfig
from server.model import ModelConfig, MotionGRU, save_checkpoint


def test_headless_demo_runs_and_scores_both_predictors(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, MotionGRU(ModelConfig(hidden=8, head_hidden=8)), FeatureConfig())
    out = main(
        ["--bots", "3", "--duration", "3", "--fast", "--model", str(ckpt), "--device", "cpu"]
    )
    assert out["ticks"] == 60
    e = out["error_by_horizon"]["1"]
    # an untrained model is exactly CV dead reckoning
    assert abs(e["gru"] - e["cv"]) < 1e-4
    assert "mean error at 1.0 s" in capsys.readouterr().out
