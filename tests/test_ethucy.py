import numpy as np
import pytest

from server.core.features import FeatureConfig
from server.core.model import ModelConfig, MotionGRU
from training import ethucy as P
from training.datasets import Track


def straight(n: int, gap_at: int | None = None) -> Track:
    t = np.arange(n) * 0.4
    if gap_at is not None:
        t[gap_at:] += 0.4  # one missing annotation
    p = np.stack([t * 1.2, t * 0.3, 0 * t], axis=1)
    return Track("a", t, p)


def test_protocol_windows_need_20_consecutive_annotations():
    assert len(P.protocol_windows([straight(19)])) == 0
    assert len(P.protocol_windows([straight(25)])) == 6
    assert len(P.protocol_windows([straight(30, gap_at=10)])) == 1  # only 10..29 is whole


def test_cv_and_untrained_gru_are_exact_on_straight_lines():
    wins = P.protocol_windows([straight(24)])
    model = MotionGRU(ModelConfig(hidden=8, head_hidden=8, n_horizons=12)).eval()
    res = P.score(model, FeatureConfig(horizons=P.HORIZONS), wins)
    assert res["windows"] == 5
    assert res["cv"]["ade"] == pytest.approx(0, abs=1e-6)
    assert res["gru"]["fde"] == pytest.approx(0, abs=1e-5)


def test_table_lists_published_rows_and_ours():
    results = {
        s: {"gru": {"ade": 0.5, "fde": 1.0}, "cv": {"ade": 0.6, "fde": 1.2}} for s in P.SCENES
    }
    text = P.table(results)
    assert "SingularTrajectory" in text and "avatar-stream GRU" in text
    assert "| 0.500/1.000 | 0.500/1.000 |" in text
