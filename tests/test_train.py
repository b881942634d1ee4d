"""Tests for training.train: the data sources, the loop, seeding, source weights, mirroring."""

import numpy as np
import pytest
import torch

from server.core.engine import TickEngine
from server.core.features import FeatureConfig
from server.core.model import load_checkpoint
from training import train as T
from training.datasets import Track
from training.simulate import simulate
from training.train_config import TrainConfig, config_from_args
from training.windows import residuals


def test_mirror_batch_is_a_reflection():
    cfg = FeatureConfig()
    t = np.arange(20) * 0.05
    p = np.stack([np.sin(t), 0.3 * t**2, 0 * t], 1)
    base = residuals([Track("a", t, p)], cfg)[0]
    mir = residuals([Track("a", t, p * [1, -1, 1])], cfg)[0]
    x, y = T.mirror_batch(
        torch.from_numpy(base[0][None]),
        torch.from_numpy(np.nan_to_num(base[1])[None]).float(),
        torch.tensor([True]),
    )
    np.testing.assert_allclose(x[0, 3:].numpy(), mir[0][3:], atol=1e-5)
    np.testing.assert_allclose(y[0, 3:].numpy(), np.nan_to_num(mir[1])[3:], atol=1e-5)


def test_train_end_to_end_writes_loadable_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    cfg = config_from_args(
        [
            "--out",
            str(out),
            "--synthetic-avatars",
            "6",
            "--synthetic-val-avatars",
            "2",
            "--synthetic-duration",
            "12",
            "--no-ethucy",
            "--real",
            "none",
            "--neighbours",
            "2",
            "--epochs",
            "2",
            "--hidden",
            "16",
            "--head-hidden",
            "16",
            "--window",
            "32",
            "--burn-in",
            "8",
        ]
    )
    summary = T.train(cfg, progress=False)
    assert out.exists() and summary["best_epoch"] >= 1
    lm = load_checkpoint(out, "cpu")
    assert lm.model.cfg.hidden == 16 and lm.meta["train_config"]["epochs"] == 2
    assert lm.features.neighbours == 2 and lm.model.cfg.n_features == lm.features.n_features
    assert len(lm.features.out_scale) == 10
    eng = TickEngine(lm, device="cpu")
    tr = simulate(1, 3.0, seed=3)[0]
    eng.join("a")
    for k in range(len(tr)):
        eng.submit("a", tr.t[k], tr.p[k], k)
        res = eng.tick()
    assert np.isfinite(res.pred).all()


def test_training_is_seeded(tmp_path):
    args = ["--synthetic-avatars", "3", "--synthetic-val-avatars", "1", "--synthetic-duration", "8"]
    args += [
        "--no-ethucy",
        "--real",
        "none",
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--head-hidden",
        "8",
        "--window",
        "24",
    ]
    a = T.train(config_from_args([*args, "--out", str(tmp_path / "a.pt")]), progress=False)
    b = T.train(config_from_args([*args, "--out", str(tmp_path / "b.pt")]), progress=False)
    for (ka, va), (kb, vb) in zip(
        a["model"].state_dict().items(), b["model"].state_dict().items(), strict=True
    ):
        assert ka == kb
        torch.testing.assert_close(va, vb)


def test_source_weights_share_the_batches():
    w = T.source_weights("synthetic=2, sdd=0", ["synthetic", "ethucy", "sdd"])
    assert w == {"synthetic": 2 / 3, "ethucy": 1 / 3, "sdd": 0.0}
    assert T.source_weights("", ["a", "b"]) == {"a": 0.5, "b": 0.5}
    for bad in ("nope=1", "a=-1", "a=0,b=0", "a=x"):
        with pytest.raises(ValueError):
            T.source_weights(bad, ["a", "b"])


def test_synthetic_rooms_are_separate_worlds(monkeypatch):
    cfg = TrainConfig(
        synthetic_avatars=6,
        synthetic_rooms=3,
        synthetic_duration=4,
        synthetic_val_avatars=1,
        ethucy=False,
        real=[],
    )
    train, val = T.load_sources(cfg)
    assert [sc.name for sc in train["synthetic"]] == [f"synthetic/train{r}" for r in range(3)]
    assert [len(sc) for sc in train["synthetic"]] == [2, 2, 2]
    assert len(val["synthetic"]) == 1
