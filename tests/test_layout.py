"""The feature layout (server/core/layout.py): the config's checks and the input's width."""

import pytest

from server.core import layout as L
from server.core.layout import FeatureConfig


def test_config_roundtrip_and_validation():
    cfg = FeatureConfig(out_scale=(1.0,) * 10)
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        FeatureConfig(horizons=(0.1, 0.2), out_scale=(1.0,))
    with pytest.raises(ValueError):
        FeatureConfig(horizons=(0.0,))
    with pytest.raises(ValueError):
        FeatureConfig(kalman_r=0.0)
    assert FeatureConfig(neighbours=3).n_features == L.N_FEATURES + 3 * L.NB_WIDTH
