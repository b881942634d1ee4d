"""server/core/model_cli.py: a bad device or checkpoint is a UserError that names it."""

from __future__ import annotations

import pytest

from server import cli
from server.core import model_cli


@pytest.mark.parametrize("device", ["banana", "cuda:99"])
def test_a_device_that_is_not_there_is_a_user_error(device):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    with pytest.raises(cli.UserError) as e:
        model_cli.check_device(device)
    assert repr(device) in str(e.value) and e.value.hint == model_cli.DEVICE_HINT


def test_cpu_and_auto_are_there():
    model_cli.check_device("cpu")
    model_cli.check_device("auto")


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(cli.UserError) as e:
        model_cli.load_model(garbage, "cpu")
    assert str(garbage) in e.value.message and "not a checkpoint" in e.value.message
    assert e.value.hint == model_cli.CHECKPOINT_HINT


def test_a_missing_file_stays_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        model_cli.load_model(tmp_path / "nope.pt", "cpu")


def test_the_shipped_checkpoint_loads():
    assert model_cli.load_model(None, "cpu").features.n_horizons > 0
