"""Tests for training.datasets: Track.truth_at, CSV/ETH-UCY loaders, the shipped data and
its lookup."""

from __future__ import annotations

import gzip
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from training import datasets as D
from training.datasets import (
    ETHUCY_SCENES,
    ETHUCY_TRAIN_ONLY,
    DatasetError,
    Track,
    data_file,
    ethucy_root,
    load_csv,
    load_ethucy,
    load_ethucy_scene_files,
    load_tracks,
)

REPO_DATA = Path(__file__).resolve().parents[1] / "training" / "data"  # shipped in the repo
SEED_CSV = REPO_DATA / "seed_example.csv"


@pytest.fixture
def shipped(monkeypatch):
    """The lookup as a fresh clone sees it: no AVATAR_ETHUCY / AVATAR_REALMOTION."""
    monkeypatch.delenv("AVATAR_ETHUCY", raising=False)
    monkeypatch.delenv("AVATAR_REALMOTION", raising=False)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def _epoch(s: str) -> float:
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


# --- Track.truth_at ---------------------------------------------------------


def test_truth_at_spline_through_samples():
    t = np.array([0.0, 1.0, 2.0, 3.0])
    p = np.stack([t**2, 2 * t, np.zeros_like(t)], axis=1)
    tr = Track("a", t, p)
    np.testing.assert_allclose(tr.truth_at(t), p, atol=1e-12)
    mid = tr.truth_at(np.array([1.5]))[0]
    np.testing.assert_allclose(mid[1], 3.0, atol=1e-9)  # linear component reproduced exactly
    assert 1.5 < mid[0] < 3.0
    out = tr.truth_at(np.array([-0.5, 3.5]))
    assert np.isnan(out).all()


def test_truth_at_dense_truth_interp_and_single_sample():
    tr = Track(
        "a",
        np.array([0.0, 2.0]),
        np.zeros((2, 3)),
        truth_t=np.array([0.0, 1.0, 2.0]),
        truth_p=np.array([[0.0, 0, 0], [2.0, 0, 0], [2.0, 4, 0]]),
    )
    np.testing.assert_allclose(tr.truth_at(np.array([0.5, 1.5])), [[1, 0, 0], [2, 2, 0]])
    assert np.isnan(tr.truth_at(np.array([2.1]))).all()
    one = Track("b", np.array([5.0]), np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(one.truth_at(np.array([5.0])), [[1, 2, 3]])
    assert np.isnan(one.truth_at(np.array([5.1]))).all()


# --- load_csv -----------------------------------------------------------------


def test_seed_example_loads():
    tracks = load_csv(SEED_CSV, max_gap=60)
    assert [tr.user for tr in tracks] == ["user1", "user2"]
    u1, u2 = tracks
    t0 = _epoch("2023-04-01 10:00:00")
    np.testing.assert_allclose(u1.t, [t0, t0 + 10, t0 + 20])
    np.testing.assert_allclose(u1.p, [[100, 200, 0], [105, 205, 0], [110, 210, 0]])
    np.testing.assert_allclose(u2.t, [t0, t0 + 10])
    assert u1.t.dtype == np.float64 and u1.p.shape == (3, 3)
    # default max_gap=1 s: every 10 s-apart sample is its own segment, all dropped (min_len=2)
    assert load_csv(SEED_CSV) == []
    assert len(load_csv(SEED_CSV, min_len=1)) == 5


def test_csv_datetime_fractional_seconds_and_order(tmp_path):
    f = _write(
        tmp_path,
        "d.csv",
        "user_id,timestamp,x,y\n"
        "bob, 2024-01-02 03:04:05.750, 3, 3\n"
        "bob, 2024-01-02 03:04:05.250 , 1, 1\n"
        "\n"
        "bob, 2024-01-02 03:04:05.500, 2, 2\n",
    )
    (tr,) = load_csv(f)
    base = _epoch("2024-01-02 03:04:05")
    np.testing.assert_allclose(tr.t - base, [0.25, 0.5, 0.75], atol=1e-6)
    np.testing.assert_allclose(tr.p[:, 0], [1, 2, 3])
    assert np.all(tr.p[:, 2] == 0)


def test_csv_no_header_seconds_and_five_columns(tmp_path):
    f = _write(tmp_path, "s.csv", "a,0.0,1,2,3\na,0.1,4,5,6\nb,7,0,0,1\nb,7.5,0,0,2\n")
    a, b = load_csv(f)
    assert (a.user, b.user) == ("a", "b")
    np.testing.assert_allclose(a.t, [0.0, 0.1])
    np.testing.assert_allclose(a.p, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_allclose(b.p[:, 2], [1, 2])
    # header with z column too
    g = _write(tmp_path, "h.csv", "USER_ID , time, x, y, z\na,0,1,2,3\na,1,1,2,4\n")
    (h,) = load_csv(g)
    np.testing.assert_allclose(h.p[:, 2], [3, 4])


def test_csv_out_of_order_interleaved_and_duplicates(tmp_path):
    f = _write(
        tmp_path,
        "o.csv",
        "b,2,20,0\na,0.5,5,0\nb,1,10,0\na,0,0,0\na,0.5,99,0\nb,1.5,15,0\n",
    )
    a, b = sorted(load_csv(f), key=lambda tr: tr.user)
    np.testing.assert_allclose(a.t, [0, 0.5])
    np.testing.assert_allclose(a.p[:, 0], [0, 99])  # duplicate timestamp: last row wins
    np.testing.assert_allclose(b.t, [1, 1.5, 2])
    np.testing.assert_allclose(b.p[:, 0], [10, 15, 20])


def test_csv_gap_splitting_and_naming(tmp_path):
    times = [0, 0.5, 1.0, 5, 5.5, 9, 20, 20.4, 20.8]  # 9 alone -> dropped
    f = _write(tmp_path, "g.csv", "".join(f"alice,{t},{t},0\n" for t in times))
    tracks = load_csv(f, max_gap=1.0, min_len=2)
    assert [tr.user for tr in tracks] == ["alice", "alice#1", "alice#2"]
    assert [len(tr) for tr in tracks] == [3, 2, 3]
    np.testing.assert_allclose(tracks[2].t, [20, 20.4, 20.8])
    assert [len(tr) for tr in load_csv(f, max_gap=1.0, min_len=1)] == [3, 2, 1, 3]
    assert [len(tr) for tr in load_csv(f, max_gap=100)] == [9]
    assert [tr.user for tr in load_csv(f, max_gap=1.0, min_len=3)] == ["alice", "alice#1"]


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ("u,1,abc,2", "bad x value 'abc'"),
        ("u,1,2,nan", "bad y value 'nan'"),
        ("u,inf,2,3", "timestamp"),
        ("u,1,2", "columns"),
        ("u,1,2,3,4,5", "columns"),
        ("u,2023-13-01 10:00:00,1,2", "timestamp"),
        ("u,2023-04-01T10:00,1,2", "timestamp"),
        ("u,1,2,3,", "columns"),  # 5 columns where the file has 4
        (",1,2,3", "user_id"),
    ],
)
def test_csv_bad_rows_name_file_and_line(tmp_path, row, needle):
    f = _write(tmp_path, "bad.csv", f"user_id,timestamp,x,y\nu,0,0,0\n\n{row}\nu,9,0,0\n")
    with pytest.raises(DatasetError) as ei:
        load_csv(f)
    msg = str(ei.value)
    assert "bad.csv:4:" in msg
    assert needle in msg
    assert isinstance(ei.value, ValueError)


def test_csv_bad_header_like_row_is_not_skipped(tmp_path):
    f = _write(tmp_path, "x.csv", "user_id,abc,1,2\n")  # x numeric -> data row, bad timestamp
    with pytest.raises(DatasetError, match=r"x\.csv:1: bad timestamp"):
        load_csv(f)


# --- load_ethucy -------------------------------------------------------------


ETH_SMALL = (
    "0.0\t1.0\t1.0\t2.0\n"
    "0.0\t2.0\t5.0\t5.0\n"
    "10.0\t1.0\t1.5\t2.0\n"
    "20\t1\t2.0\t2.0\n"
    "10.0\t2.0\t5.0\t5.5\n"
    "\n"
    "60.0\t1.0\t9.0\t9.0\n"
    "70.0\t1.0\t9.0\t9.5\n"
)


def test_ethucy_small_file(tmp_path):
    f = _write(tmp_path, "scene_a.txt", ETH_SMALL)
    tracks = load_ethucy(f)
    assert [tr.user for tr in tracks] == ["scene_a:1", "scene_a:1#1", "scene_a:2"]
    a, a1, b = tracks
    np.testing.assert_allclose(a.t, [0, 0.4, 0.8])
    np.testing.assert_allclose(a.p, [[1, 2, 0], [1.5, 2, 0], [2, 2, 0]])
    np.testing.assert_allclose(a1.t, [2.4, 2.8])
    np.testing.assert_allclose(b.p[:, 1], [5, 5.5])
    # step rescales time; a large max_gap keeps ped 1 whole
    (w, _) = load_ethucy(f, step=1.0, max_gap=10)
    np.testing.assert_allclose(w.t, [0, 1, 2, 6, 7])


@pytest.mark.parametrize(
    ("row", "needle"),
    [("10.0\t3.0\tx\t1.0", "bad x value 'x'"), ("10.0\t3.0\t1.0", "4 fields"), ("1 2 nan 3", "x")],
)
def test_ethucy_bad_row_line_number(tmp_path, row, needle):
    f = _write(tmp_path, "bad.txt", f"0.0\t3.0\t1.0\t1.0\n\n{row}\n")
    with pytest.raises(DatasetError) as ei:
        load_ethucy(f)
    assert "bad.txt:3:" in str(ei.value) and needle in str(ei.value)


def test_ethucy_directory_and_missing(tmp_path):
    _write(tmp_path, "b.txt", ETH_SMALL)
    _write(tmp_path, "a.txt", ETH_SMALL)
    _write(tmp_path, "notes.md", "ignored")
    users = [tr.user for tr in load_ethucy(tmp_path)]
    assert users[:3] == ["a:1", "a:1#1", "a:2"] and len(users) == 6
    with pytest.raises(FileNotFoundError):
        load_ethucy(tmp_path / "nope.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        load_ethucy(tmp_path / "empty")


def test_ethucy_real_file(shipped):
    tracks = load_ethucy(data_file(ethucy_root() / "val" / "biwi_hotel_val.txt"))
    assert len(tracks) > 0
    assert all(tr.user.startswith("biwi_hotel_val:") for tr in tracks)
    for tr in tracks:
        assert len(tr) >= 2
        np.testing.assert_allclose(np.diff(tr.t), 0.4, atol=1e-9)
        assert np.all(tr.p[:, 2] == 0)


def test_ethucy_scene_files(shipped):
    assert set(ETHUCY_SCENES) == {"eth", "hotel", "univ", "zara1", "zara2"}
    assert ETHUCY_TRAIN_ONLY == ["crowds_zara03", "uni_examples"]
    val = load_ethucy_scene_files("val", ETHUCY_SCENES["hotel"])
    assert val and val[0].user.startswith("biwi_hotel_val:")
    allz = load_ethucy_scene_files("all", ETHUCY_SCENES["zara1"])
    assert allz and allz[0].user.startswith("crowds_zara01:")
    with pytest.raises(ValueError):
        load_ethucy_scene_files("test", ["biwi_eth"])
    with pytest.raises(FileNotFoundError):
        load_ethucy_scene_files("all", ["no_such_stem"])


def test_ethucy_root_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AVATAR_ETHUCY", str(tmp_path))
    assert ethucy_root() == tmp_path
    monkeypatch.setenv("AVATAR_ETHUCY", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="AVATAR_ETHUCY"):
        ethucy_root()


# --- the shipped data and its lookup -------------------------------------------


def test_ethucy_root_defaults_to_the_copy_in_the_repository(shipped):
    assert D.DATA_DIR == REPO_DATA
    assert ethucy_root() == REPO_DATA / "ethucy"
    stems = [s for v in ETHUCY_SCENES.values() for s in v] + ETHUCY_TRAIN_ONLY
    for split, sub, suffix in [("all", "all_data", ""), ("train", "train", "_train")]:
        for stem in stems:
            f = REPO_DATA / "ethucy" / sub / f"{stem}{suffix}.txt.gz"
            assert f.is_file(), f
        assert load_ethucy_scene_files(split, ["biwi_hotel"])


def test_ethucy_env_overrides_with_plain_files(tmp_path, monkeypatch):
    (tmp_path / "train").mkdir()
    _write(tmp_path / "train", "mine_train.txt", ETH_SMALL)
    monkeypatch.setenv("AVATAR_ETHUCY", str(tmp_path))
    tracks = load_ethucy_scene_files("train", ["mine"])
    assert [tr.user for tr in tracks] == ["mine_train:1", "mine_train:1#1", "mine_train:2"]
    with pytest.raises(FileNotFoundError, match=r"biwi_hotel_train\.txt"):
        load_ethucy_scene_files("train", ["biwi_hotel"])  # not the shipped copy


def test_missing_shipped_copy_names_the_variable(tmp_path, monkeypatch, shipped):
    monkeypatch.setattr(D, "DATA_DIR", tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="set AVATAR_ETHUCY") as ei:
        ethucy_root()
    assert str(tmp_path / "gone" / "ethucy") in str(ei.value)
    with pytest.raises(FileNotFoundError, match="set AVATAR_REALMOTION"):
        D.data_root("realmotion", "AVATAR_REALMOTION")


def test_shipped_files_are_the_upstream_bytes():
    """Every file of SHA256SUMS (the upstream, uncompressed files) is shipped, gzip-compressed
    but the seed example, and decompresses to the same bytes; nothing else is shipped."""
    sums = [ln.split() for ln in (REPO_DATA / "SHA256SUMS").read_text().splitlines() if ln]
    assert len(sums) == 28
    shipped_files = set()
    for digest, name in sums:
        plain, gz = REPO_DATA / name, REPO_DATA / f"{name}.gz"
        data = (
            plain.read_bytes() if name == "seed_example.csv" else gzip.decompress(gz.read_bytes())
        )
        assert hashlib.sha256(data).hexdigest() == digest, name
        shipped_files.add(plain if name == "seed_example.csv" else gz)
    data_files = {f for f in REPO_DATA.rglob("*") if f.suffix in (".gz", ".csv", ".txt")}
    assert data_files == shipped_files
    for d in (REPO_DATA, REPO_DATA / "ethucy", REPO_DATA / "realmotion"):
        assert (d / "README.md").is_file()
    assert "CC BY-NC-SA 3.0" in (REPO_DATA / "realmotion" / "README.md").read_text()


def _gzip(path: Path) -> Path:
    out = path.with_name(path.name + ".gz")
    out.write_bytes(gzip.compress(path.read_bytes()))
    return out


def _same_tracks(a: list[Track], b: list[Track]) -> bool:
    return [tr.user for tr in a] == [tr.user for tr in b] and all(
        np.array_equal(x.t, y.t) and np.array_equal(x.p, y.p) for x, y in zip(a, b, strict=True)
    )


def test_gz_and_plain_files_load_the_same(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    # a shipped ETH/UCY file, decompressed, and a slice of a shipped CSV, plain and re-gzipped
    eth_gz = REPO_DATA / "ethucy" / "val" / "biwi_hotel_val.txt.gz"
    eth = plain / "biwi_hotel_val.txt"
    eth.write_bytes(gzip.decompress(eth_gz.read_bytes()))
    text = gzip.decompress((REPO_DATA / "realmotion" / "sdd_train.csv.gz").read_bytes())
    csv = plain / "sdd.csv"
    csv.write_bytes(b"".join(text.splitlines(keepends=True)[:3000]))
    csv_gz = _gzip(csv)
    assert _same_tracks(load_ethucy(eth), load_ethucy(eth_gz))
    assert load_ethucy(eth_gz)[0].user.startswith("biwi_hotel_val:")  # the stem drops .txt.gz
    assert _same_tracks(load_csv(csv), load_csv(csv_gz))
    assert len(load_csv(csv_gz)) > 3
    assert _same_tracks(load_tracks(csv), load_tracks(csv_gz))
    assert _same_tracks(load_tracks(eth), load_tracks(eth_gz))
    # a BOM and Windows line ends read the same compressed
    bom = _write(tmp_path, "bom.csv", "\ufeffuser_id,timestamp,x,y\r\na,0,1,2\r\na,0.5,2,3\r\n")
    assert _same_tracks(load_csv(bom), load_csv(_gzip(bom)))
    # errors name the .gz file and its line
    bad = _write(tmp_path, "bad.csv", "a,0,1,2\na,x,1,2\n")
    with pytest.raises(DatasetError, match=r"bad\.csv\.gz:2: bad timestamp"):
        load_csv(_gzip(bad))


def test_directories_mix_gz_and_plain_files(tmp_path):
    eth = tmp_path / "eth"
    eth.mkdir()
    _gzip(_write(eth, "b.txt", ETH_SMALL)).rename(eth / "b.txt.gz")
    (eth / "b.txt").unlink()
    _write(eth, "a.txt", ETH_SMALL)
    _gzip(eth / "a.txt")  # a.txt and a.txt.gz: the plain one is read, once
    assert [tr.user for tr in load_ethucy(eth)] == ["a:1", "a:1#1", "a:2", "b:1", "b:1#1", "b:2"]
    csvs = tmp_path / "csvs"
    csvs.mkdir()
    _gzip(_write(csvs, "y.csv", "b,0,0,0\nb,1,1,0\n"))
    (csvs / "y.csv").unlink()
    _write(csvs, "x.csv", "a,0,0,0\na,0.5,1,0\n")
    assert [tr.user for tr in load_tracks(csvs)] == ["a", "b"]


def test_data_file_prefers_the_plain_file(tmp_path):
    f = _write(tmp_path, "x.csv", "a,0,0,0\n")
    assert data_file(f) == f
    gz = _gzip(f)
    f.unlink()
    assert data_file(f) == gz
    with pytest.raises(FileNotFoundError, match=r"y\.csv \(nor y\.csv\.gz\)"):
        data_file(tmp_path / "y.csv")


# --- load_tracks ---------------------------------------------------------------


def test_load_tracks_dispatch(tmp_path):
    c = _write(tmp_path, "x.csv", "a,0,0,0\na,0.5,1,0\n")
    t = _write(tmp_path, "s.txt", ETH_SMALL)
    assert [tr.user for tr in load_tracks(c)] == ["a"]
    assert [tr.user for tr in load_tracks(t)] == ["s:1", "s:1#1", "s:2"]
    assert len(load_tracks(t, max_gap=10)) == 2  # kwargs forwarded
    # directory with csv files -> all csv files; without -> ETH/UCY txt files
    _write(tmp_path, "y.csv", "b,0,0,0\nb,1,1,0\n")
    assert [tr.user for tr in load_tracks(tmp_path)] == ["a", "b"]
    eth = tmp_path / "eth"
    eth.mkdir()
    _write(eth, "s.txt", ETH_SMALL)
    assert len(load_tracks(eth)) == 3
    with pytest.raises(ValueError, match="unknown"):
        load_tracks(_write(tmp_path, "z.json", "{}"))
    with pytest.raises(ValueError, match="unknown"):
        load_tracks(_write(tmp_path, "z.json.gz", "{}"))
    with pytest.raises(FileNotFoundError):
        load_tracks(tmp_path / "missing.csv")
