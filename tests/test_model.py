import numpy as np
import pytest
import torch

from server.features import N_FEATURES, FeatureConfig
from server.model import (
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


def test_untrained_model_is_exact_cv():
    m = MotionGRU(ModelConfig())
    y, h = m(torch.randn(3, 7, N_FEATURES))
    assert y.shape == (3, 7, 10, 3) and h.shape == (1, 3, 64)
    assert torch.count_nonzero(y) == 0


@pytest.mark.parametrize("layers", [1, 2])
def test_step_reproduces_forward(layers):
    m = randomised(ModelConfig(hidden=16, layers=layers, n_horizons=4))
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
    torch.save({"format": 1, "model_args": {"hidden": 4}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError):
        load_checkpoint(tmp_path / "partial.pt", "cpu")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt", "cpu")


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError):
            resolve_device("cuda")


def test_shipped_checkpoint_loads_and_is_small():
    from server.model import default_checkpoint_path

    path = default_checkpoint_path()
    if not path.exists():
        pytest.skip("no shipped checkpoint yet")
    assert path.stat().st_size < 2 * 1024 * 1024
    loaded = load_checkpoint(path, "cpu")
    assert loaded.features.horizons == tuple(round(0.1 * k, 1) for k in range(1, 11))
    with torch.no_grad():
        y, _ = loaded.model(torch.zeros(1, 3, N_FEATURES))
    assert np.isfinite(y.numpy()).all()
