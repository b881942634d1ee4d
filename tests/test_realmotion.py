from pathlib import Path

import numpy as np
import pytest

from training import realmotion as RM
from training.datasets import DatasetError, Track


def write(path, rows):
    path.write_text("user_id,timestamp,x,y\n" + "\n".join(rows) + "\n")
    return path


def track_rows(user, t0, n, dt):
    return [f"{user},{t0 + k * dt:.4f},{0.1 * k:.3f},{0.05 * k:.3f}" for k in range(n)]


def test_juelich_runs_are_recordings_with_the_documented_split(tmp_path):
    rows = []
    for run in ("uo-050-180-180", "uo-070-180-180", "uo-100-180-180"):
        for i in (1, 2):
            rows += track_rows(f"{run}_{i}", 1.0, 10, 1 / 16)
    f = write(tmp_path / "j.csv", rows)
    names = {s: [sc.name for sc in RM.load_scenes("juelich", s, path=f)] for s in RM.SPLITS}
    assert names == {
        "train": ["juelich/uo-050-180-180"],
        "val": ["juelich/uo-070-180-180"],
        "test": ["juelich/uo-100-180-180"],
    }
    (sc,) = RM.load_scenes("juelich", "test", path=f)
    assert sorted(tr.user for tr in sc.tracks) == ["uo-100-180-180_1", "uo-100-180-180_2"]
    assert len(RM.load_scenes("juelich", "all", path=f)) == 3


def test_sdd_scenes_and_soccer_minute_blocks(tmp_path):
    f = write(
        tmp_path / "s.csv",
        track_rows("bookstore_2_7", 0, 5, 0.4) + track_rows("coupa_3_1", 0, 5, 0.4),
    )
    assert [sc.name for sc in RM.load_scenes("sdd", "test", path=f)] == ["sdd/bookstore_2"]
    assert [sc.name for sc in RM.load_scenes("sdd", "train", path=f)] == ["sdd/coupa_3"]
    # one player over 5 minutes at 20 Hz: minute 3 is val, minute 4 test, the rest train
    g = write(tmp_path / "f.csv", track_rows("player2", 0.0, 20 * 300, 0.05))
    train = RM.load_scenes("soccer", "train", path=g)
    assert [sc.name for sc in train] == ["soccer/min00", "soccer/min01", "soccer/min02"]
    (val,) = RM.load_scenes("soccer", "val", path=g)
    (test,) = RM.load_scenes("soccer", "test", path=g)
    assert val.tracks[0].t.min() >= 180 and val.tracks[0].t.max() < 240
    assert test.tracks[0].t.min() >= 240
    ends = [tr.t[[0, -1]] for sc in train for tr in sc.tracks]
    assert all(b - a < 60 for a, b in ends)  # no track crosses a block boundary


def test_malformed_row_names_file_and_line(tmp_path):
    f = write(tmp_path / "bad.csv", [*track_rows("uo-050-180-180_1", 0, 3, 0.1), "x_1,zz,1,2"])
    with pytest.raises(DatasetError, match=r"bad\.csv:5: bad timestamp"):
        RM.load_scenes("juelich", "all", path=f)
    with pytest.raises(ValueError):
        RM.load_scenes("nope", "test", path=f)
    with pytest.raises(ValueError):
        RM.load_scenes("juelich", "holdout", path=f)


def test_thin_to_ticks_keeps_the_newest_sample_per_tick_and_the_truth():
    t = np.arange(0, 1, 1 / 60)
    p = np.c_[t, t**2, 0 * t]
    sc = RM.thin_to_ticks(RM.Scene("s", [Track("a", t, p)]), 0.05)
    tr = sc.tracks[0]
    k = np.floor(tr.t / 0.05 + 1e-9)
    assert len(np.unique(k)) == len(k) == 20
    assert np.all(np.isin(tr.t, t))
    mid = np.array([0.5 + 1 / 120])  # between two original samples: the full-rate spline
    np.testing.assert_allclose(tr.truth_at(mid)[0, :2], [mid[0], mid[0] ** 2], atol=1e-4)


def test_realmotion_root_defaults_to_the_copy_in_the_repository(monkeypatch):
    monkeypatch.delenv("AVATAR_REALMOTION", raising=False)
    repo_copy = Path(__file__).resolve().parents[1] / "training" / "data" / "realmotion"
    assert RM.realmotion_root() == repo_copy
    for name in RM.FILES.values():
        assert (repo_copy / f"{name}.gz").is_file()
    scenes = RM.load_scenes("soccer", "val")  # read from the .gz
    assert [sc.name for sc in scenes] == ["soccer/min03", "soccer/min13"]
    assert all(len(sc) >= 10 for sc in scenes)


def test_realmotion_env_overrides_with_a_plain_csv(tmp_path, monkeypatch):
    write(tmp_path / RM.FILES["juelich"], track_rows("uo-070-180-180_1", 0, 5, 1 / 16))
    monkeypatch.setenv("AVATAR_REALMOTION", str(tmp_path))
    assert RM.realmotion_root() == tmp_path
    assert [sc.name for sc in RM.load_scenes("juelich", "all")] == ["juelich/uo-070-180-180"]
    with pytest.raises(FileNotFoundError, match=r"sdd_train\.csv"):
        RM.load_scenes("sdd", "all")  # not the shipped copy
    monkeypatch.setenv("AVATAR_REALMOTION", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="AVATAR_REALMOTION"):
        RM.load_scenes("juelich", "all")
