"""Tests for training.data_specs: the `--data` specs read into scenes and tracks."""

import pytest

from training.data_specs import load_data, load_scenes
from training.simulate import simulate, write_csv


def test_training_seeds_refused():
    with pytest.raises(ValueError):
        load_data("synthetic:4:0")
    with pytest.raises(ValueError):
        load_data("synthetic:4:10000")


def test_synthetic_and_csv_specs(tmp_path):
    (scene,) = load_scenes("synthetic:3:123:5")
    assert scene.name == "synthetic/123" and len(scene.tracks) == 3
    csv = tmp_path / "d.csv"
    write_csv(simulate(2, 4.0, seed=9), csv)
    (scene,) = load_scenes(str(csv))
    assert scene.name == "d" and len(scene.tracks) == 2
    assert [tr.user for tr in load_data(str(csv))] == [tr.user for tr in scene.tracks]


def test_unknown_ethucy_scene_refused():
    with pytest.raises(ValueError):
        load_scenes("ethucy:val:nowhere")
