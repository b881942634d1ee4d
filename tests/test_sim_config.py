"""Tests for the simulator's parameters (training/sim_config.py)."""

from __future__ import annotations

import pytest

from training.sim_config import BEHAVIOURS, CHOOSABLE, TELEPORT, SimConfig
from training.simulate import simulate


def test_default_config_is_valid_and_mixes_choosable_behaviours():
    cfg = SimConfig()
    cfg.validate()
    assert set(cfg.behaviour_mix) == set(CHOOSABLE)
    assert BEHAVIOURS[TELEPORT] == "teleport" and "teleport" not in CHOOSABLE


@pytest.mark.parametrize(
    "bad",
    [
        {"behaviour_mix": {"dance": 1.0}},
        {"rate": (30.0, 10.0)},
        {"drop_prob": 1.0},
    ],
)
def test_invalid_config_refused(bad):
    with pytest.raises(ValueError):
        SimConfig(**bad).validate()
    with pytest.raises(ValueError):
        simulate(2, 5.0, config=SimConfig(**bad))
