"""Tests for the synthetic avatar simulator (training/simulate.py)."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest

from training.datasets import Track
from training.sim_config import BEHAVIOURS, TELEPORT, SimConfig
from training.simulate import main, simulate, write_csv


@pytest.fixture(scope="module")
def run():
    """24 avatars × 45 s with frequent teleports, plus labels."""
    cfg = SimConfig(teleport_per_min=2.0)
    return simulate(24, 45.0, seed=7, config=cfg, return_labels=True)


def _truth_speed(tr: Track) -> np.ndarray:
    return np.linalg.norm(np.diff(tr.truth_p, axis=0), axis=1) / np.diff(tr.truth_t)


def test_deterministic_per_seed():
    a = simulate(4, 5.0, seed=3)
    b = simulate(4, 5.0, seed=3)
    c = simulate(4, 5.0, seed=4)
    for x, y in zip(a, b, strict=True):
        assert x.user == y.user
        np.testing.assert_array_equal(x.t, y.t)
        np.testing.assert_array_equal(x.p, y.p)
        np.testing.assert_array_equal(x.truth_p, y.truth_p)
    assert any(
        x.t.shape != z.t.shape or not np.array_equal(x.truth_p, z.truth_p)
        for x, z in zip(a, c, strict=True)
    )


def test_shapes_and_types(run):
    tracks, labels = run
    assert [tr.user for tr in tracks] == [f"sim{i:04d}" for i in range(24)]
    assert set(labels) == {tr.user for tr in tracks}
    for tr in tracks:
        assert isinstance(tr, Track)
        assert tr.t.dtype == np.float64 and tr.p.dtype == np.float64
        assert tr.t.ndim == 1 and tr.p.shape == (tr.t.size, 3)
        assert tr.truth_t.ndim == 1 and tr.truth_p.shape == (tr.truth_t.size, 3)
        assert labels[tr.user].shape == tr.truth_t.shape
        assert np.all(np.diff(tr.t) > 0)
        np.testing.assert_allclose(np.diff(tr.truth_t), 1 / 120)
        assert tr.truth_t[0] <= tr.t[0] and tr.t[-1] <= tr.truth_t[-1] <= 45.0
        assert np.isfinite(tr.p).all() and np.isfinite(tr.truth_p).all()
        assert np.all(tr.truth_p[:, 2] == 0.0)  # flat world by default


def test_sample_rates_within_client_range(run):
    tracks, _ = run
    med = np.array([np.median(np.diff(tr.t)) for tr in tracks])
    assert np.all(med >= 1 / 60 - 1e-6) and np.all(med <= 1 / 10 + 1e-6)
    assert med.max() - med.min() > 0.02  # rates differ between avatars
    fixed = simulate(3, 4.0, seed=1, config=SimConfig(rate=(20.0, 20.0), drop_prob=0.0))
    for tr in fixed:
        np.testing.assert_allclose(np.diff(tr.t), 0.05, atol=1e-9)


def test_speeds_plausible_except_teleports(run):
    tracks, labels = run
    for tr in tracks:
        jump = labels[tr.user][1:] == TELEPORT
        v = _truth_speed(tr)
        assert v[~jump].max() <= SimConfig().run_speed[1] + 0.15  # run cap + idle sway
        if jump.any():
            assert v[jump].min() >= 10.0 * 120 * 0.99  # ≥ 10 m in one step
        dv = np.linalg.norm(np.diff(np.diff(tr.truth_p, axis=0), axis=0), axis=1) * 120
        near = jump[1:] | jump[:-1]
        assert dv[~near].max() < 2.5  # velocity continuous (m/s per step) away from jumps


def test_teleports_occur_and_land_in_world(run):
    tracks, labels = run
    n = sum(int((labels[tr.user] == TELEPORT).sum()) for tr in tracks)
    assert 15 <= n <= 80  # 2 per avatar-minute × 18 avatar-minutes: 36 expected
    for tr in tracks:
        at = np.flatnonzero(labels[tr.user] == TELEPORT)
        if at.size:
            d = np.linalg.norm(tr.truth_p[at, :2] - tr.truth_p[at - 1, :2], axis=1)
            assert np.all((d >= 10.0 - 1e-6) & (d <= 50.0 + 1e-6))
        assert np.all(tr.truth_p[:, :2] > -5.0) and np.all(tr.truth_p[:, :2] < 65.0)
    none = simulate(5, 20.0, seed=2, config=SimConfig(teleport_per_min=0.0), return_labels=True)
    assert not any((lab == TELEPORT).any() for lab in none[1].values())


def test_all_behaviours_appear(run):
    _, labels = run
    seen = {BEHAVIOURS[k] for lab in labels.values() for k in np.unique(lab)}
    assert seen == set(BEHAVIOURS)


def test_samples_consistent_with_truth():
    clean = SimConfig(jitter_std=0.0, drop_prob=0.0, teleport_per_min=0.0)
    for tr in simulate(5, 10.0, seed=5, config=clean):
        np.testing.assert_allclose(tr.p, tr.truth_at(tr.t), atol=1e-9)
    jit = replace(clean, jitter_std=0.003)
    for tr in simulate(5, 10.0, seed=5, config=jit):
        err = np.linalg.norm(tr.p - tr.truth_at(tr.t), axis=1)
        assert err.max() < 8.0 * 0.003 * 6  # ≤ top speed × 6 sigma
        assert err.max() > 0


def test_noise_changes_observed_not_truth():
    base = SimConfig()
    a = simulate(5, 5.0, seed=9, config=base)
    b = simulate(5, 5.0, seed=9, config=replace(base, noise_std=0.02))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.truth_p, y.truth_p)
        np.testing.assert_array_equal(x.t, y.t)
        d = y.p - x.p
        assert np.all(d[:, 2] == 0)
        assert 0.01 < np.std(d[:, :2]) < 0.03


def test_drops_and_terrain():
    dense = simulate(3, 5.0, seed=1, config=SimConfig(drop_prob=0.0))
    sparse = simulate(3, 5.0, seed=1, config=SimConfig(drop_prob=0.5))
    assert sum(len(tr) for tr in sparse) < 0.7 * sum(len(tr) for tr in dense)
    hills = simulate(3, 5.0, seed=1, config=SimConfig(terrain_amplitude=0.5))
    z = np.concatenate([tr.truth_p[:, 2] for tr in hills])
    assert np.abs(z).max() <= 0.5 and np.abs(z).max() > 0.05


def test_invalid_arguments():
    with pytest.raises(ValueError):
        simulate(0, 5.0)
    with pytest.raises(ValueError):
        simulate(2, 0.0)


def _read(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


@pytest.mark.parametrize("with_z", [False, True])
def test_write_csv_round_trip(tmp_path, with_z):
    tracks = simulate(3, 3.0, seed=2, config=SimConfig(terrain_amplitude=0.3))
    path = tmp_path / "sim.csv"
    write_csv(tracks, path, with_z=with_z)
    header, rows = _read(path)
    assert header == ["user_id", "timestamp", "x", "y", *(["z"] if with_z else [])]
    assert len(rows) == sum(len(tr) for tr in tracks)
    assert all(len(r[1].split(".")[1]) == 4 and len(r[2].split(".")[1]) == 4 for r in rows)
    ncol = 3 if with_z else 2
    for tr in tracks:
        mine = [r for r in rows if r[0] == tr.user]
        t = np.array([float(r[1]) for r in mine])
        p = np.array([[float(v) for v in r[2:]] for r in mine])
        np.testing.assert_allclose(t, tr.t, atol=5.1e-5)
        np.testing.assert_allclose(p, tr.p[:, :ncol], atol=5.1e-5)


def test_cli_writes_file(tmp_path, capsys):
    out = tmp_path / "cli.csv"
    main(["--avatars", "3", "--duration", "2", "--seed", "1", "--out", str(out), "--noise", "0.01"])
    header, rows = _read(out)
    assert header == ["user_id", "timestamp", "x", "y"]
    assert {r[0] for r in rows} == {"sim0000", "sim0001", "sim0002"}
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--avatars", "--duration", "--seed", "--out", "--noise", "--jitter-ms", "--drop"):
        assert opt in text
    assert "--rate-min" in text and "--rate-max" in text
    with pytest.raises(SystemExit):
        main(["--avatars", "0", "--out", str(out)])


# ---- kinematics: the UE-style controller and what the behaviours do with it ----
