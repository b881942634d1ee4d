"""Tests for training.train_config: presets and flags."""

from training.train_config import config_from_args


def test_preset_and_flag_override(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("[train]\nhidden = 32\nepochs = 7\nhorizons = [0.2, 0.4]\n")
    cfg = config_from_args(["--preset", str(preset), "--epochs", "3"])
    assert cfg.hidden == 32 and cfg.epochs == 3 and cfg.horizons == (0.2, 0.4)
    shipped = config_from_args(["--preset", "shipped"])
    assert shipped.out.endswith("avatar_gru.pt")
