import numpy as np
import pytest
import torch

from server.core.features import N_FEATURES, FeatureConfig
from server.core.model import (
    LoadedModel,
    ModelConfig,
    MotionGRU,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)


def randomised(cfg: ModelConfig) -> MotionGRU:
    m = MotionGRU(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m.eval()


@pytest.mark.parametrize("cell, state", [("gru", 64), ("lstm", 128)])
def test_untrained_model_is_exactly_the_prior(cell, state):
    m = MotionGRU(ModelConfig(cell=cell))
    y, h = m(torch.randn(3, 7, N_FEATURES))
    assert y.shape == (3, 7, 10, 3) and h.shape == (1, 3, state)
    assert torch.count_nonzero(y) == 0


def test_gate_only_moves_a_prediction_toward_the_prior():
    """Output = gate * residual with gate in (0, 1): per horizon, the gated prediction lies
    on the segment from the prior (zero residual) to the ungated one."""
    m = randomised(ModelConfig(hidden=16, n_horizons=5))
    x = torch.randn(4, 9, N_FEATURES)
    with torch.no_grad():
        y, _ = m(x)
        z, _ = m._run(x, None)
        r, g = m.parts(z, x)
    assert ((g >= 0) & (g <= 1)).all() and (g < 0.9).any() and (g > 0.1).any()
    torch.testing.assert_close(y, r * g[..., None])
    assert (y.norm(dim=-1) <= r.norm(dim=-1) + 1e-7).all()  # never farther from the prior
    cos = torch.nn.functional.cosine_similarity(y, r, dim=-1)
    assert (cos > 0.999).all()  # and in the residual's direction
    ungated = MotionGRU(ModelConfig(hidden=16, n_horizons=5, gate=False))
    assert ungated.head[-1].out_features == 15


@pytest.mark.parametrize("layers, cell", [(1, "gru"), (2, "gru"), (2, "lstm")])
def test_step_reproduces_forward(layers, cell):
    m = randomised(ModelConfig(hidden=16, layers=layers, n_horizons=4, cell=cell))
    x = torch.randn(5, 12, N_FEATURES)
    with torch.no_grad():
        y_seq, h_seq = m(x)
        h = m.init_hidden(5)
        for k in range(12):
            y, h = m.step(x[:, k], h)
            torch.testing.assert_close(y, y_seq[:, k], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(h, h_seq, atol=1e-5, rtol=1e-6)


def test_checkpoint_roundtrip(tmp_path):
    cfg = ModelConfig(hidden=8, n_horizons=3)
    m = randomised(cfg)
    feats = FeatureConfig(horizons=(0.2, 0.4, 0.6), out_scale=(0.1, 0.2, 0.3))
    path = tmp_path / "sub" / "m.pt"
    version = save_checkpoint(path, m, feats, name="test", meta={"epochs": 3})
    assert version.startswith("test-h8x1-")
    loaded = load_checkpoint(path, "cpu")
    assert isinstance(loaded, LoadedModel)
    assert loaded.version == version and loaded.features == feats
    assert loaded.meta == {"epochs": 3} and loaded.model.cfg == cfg
    x = torch.randn(2, 4, N_FEATURES)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)[0], m(x)[0])
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_corrupt_checkpoint_is_value_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError):
        load_checkpoint(bad, "cpu")
    torch.save({"format": 2, "model_args": {"hidden": 4}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "partial.pt", "cpu")


def test_older_checkpoint_format_says_what_to_do(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"format": 1, "version": "avatar-gru-h64x1-ebf727ba", "model_args": {}}, old)
    with pytest.raises(ValueError, match=r"format-1 .*retrain.*training\.train"):
        load_checkpoint(old, "cpu")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", "cpu")


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError):
            resolve_device("cuda")


def test_shipped_checkpoint_loads_and_is_small():
    from server.core.model import default_checkpoint_path

    path = default_checkpoint_path()
    if not path.exists():
        pytest.skip("no shipped checkpoint yet")
    assert path.stat().st_size < 2 * 1024 * 1024
    loaded = load_checkpoint(path, "cpu")
    assert loaded.features.horizons == tuple(round(0.1 * k, 1) for k in range(1, 11))
    with torch.no_grad():
        y, _ = loaded.model(torch.zeros(1, 3, loaded.features.n_features))
    assert np.isfinite(y.numpy()).all()
