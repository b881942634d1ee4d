from server.core.engine import TickEngine
from server.core.features import FeatureConfig
from server.core.model import ModelConfig, MotionGRU, save_checkpoint
from tests.benches import load

_engine_bench = load("engine.py")
main, time_engine = _engine_bench.main, _engine_bench.time_engine


def test_time_engine_reports_per_avatar_cost():
    r = time_engine(TickEngine(None, features=FeatureConfig(), device="cpu"), 50, ticks=3)
    assert r["avatars"] == 50 and r["tick_ms_p99"] >= r["tick_ms_p50"] > 0
    assert r["us_per_avatar_p50"] == r["tick_ms_p50"] * 1e3 / 50


def test_bench_cli(tmp_path):
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, MotionGRU(ModelConfig(hidden=8, head_hidden=8)), FeatureConfig())
    rows = main(["--model", str(ckpt), "--avatars", "20,40", "--ticks", "2", "--device", "cpu"])
    assert [(r["avatars"], r["predictor"]) for r in rows] == [
        (n, name) for n in (20, 40) for name in ("gru", "gru-raw", "cv")
    ]  # gru: served (blended); gru-raw: the network alone
