import numpy as np
import pytest
import torch

from server.core import features as F
from server.core.engine import TickEngine
from server.core.features import FeatureConfig
from server.core.model import load_checkpoint
from training import train as T
from training.datasets import Track
from training.simulate import simulate


def test_residual_targets_mask_teleports_and_decode_back():
    t = np.arange(30) * 0.1
    p = np.zeros((30, 3))
    p[:, 0] = t
    p[20:, 0] += 30.0  # teleport at sample 20
    tr = Track("a", t, p)
    cfg = FeatureConfig()
    ((x, y, reset),) = T.residuals([tr], cfg)
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
    w = T.make_windows([(x, y, reset)], np.ones(10), length=16, burn_in=4)
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


def test_mirror_batch_is_a_reflection():
    cfg = FeatureConfig()
    t = np.arange(20) * 0.05
    p = np.stack([np.sin(t), 0.3 * t**2, 0 * t], 1)
    base = T.residuals([Track("a", t, p)], cfg)[0]
    mir = T.residuals([Track("a", t, p * [1, -1, 1])], cfg)[0]
    x, y = T.mirror_batch(
        torch.from_numpy(base[0][None]),
        torch.from_numpy(np.nan_to_num(base[1])[None]).float(),
        torch.tensor([True]),
    )
    np.testing.assert_allclose(x[0, 3:].numpy(), mir[0][3:], atol=1e-5)
    np.testing.assert_allclose(y[0, 3:].numpy(), np.nan_to_num(mir[1])[3:], atol=1e-5)


def test_train_end_to_end_writes_loadable_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    cfg = T.config_from_args(
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
    a = T.train(T.config_from_args([*args, "--out", str(tmp_path / "a.pt")]), progress=False)
    b = T.train(T.config_from_args([*args, "--out", str(tmp_path / "b.pt")]), progress=False)
    for (ka, va), (kb, vb) in zip(
        a["model"].state_dict().items(), b["model"].state_dict().items(), strict=True
    ):
        assert ka == kb
        torch.testing.assert_close(va, vb)


def test_preset_and_flag_override(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("[train]\nhidden = 32\nepochs = 7\nhorizons = [0.2, 0.4]\n")
    cfg = T.config_from_args(["--preset", str(preset), "--epochs", "3"])
    assert cfg.hidden == 32 and cfg.epochs == 3 and cfg.horizons == (0.2, 0.4)
    shipped = T.config_from_args(["--preset", "shipped"])
    assert shipped.out.endswith("avatar_gru.pt")


def test_source_weights_share_the_batches():
    w = T.source_weights("synthetic=2, sdd=0", ["synthetic", "ethucy", "sdd"])
    assert w == {"synthetic": 2 / 3, "ethucy": 1 / 3, "sdd": 0.0}
    assert T.source_weights("", ["a", "b"]) == {"a": 0.5, "b": 0.5}
    for bad in ("nope=1", "a=-1", "a=0,b=0", "a=x"):
        with pytest.raises(ValueError):
            T.source_weights(bad, ["a", "b"])


def test_synthetic_rooms_are_separate_worlds(monkeypatch):
    cfg = T.TrainConfig(
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
