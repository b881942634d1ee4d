"""Tests for training.track_ops: user-level splits, windows, corruption and mirroring."""

from __future__ import annotations

import numpy as np
import pytest

from training.datasets import Track
from training.track_ops import base_user, corrupt, mirror, split_by_user, windows


def _track(user: str, n: int = 3) -> Track:
    t = np.arange(n, dtype=np.float64)
    return Track(user, t, np.zeros((n, 3)))


# --- split_by_user / windows ---------------------------------------------------


def test_base_user():
    assert base_user("alice") == "alice"
    assert base_user("alice#12") == "alice"
    assert base_user("biwi_hotel:3#1") == "biwi_hotel:3"


def test_split_by_user_keeps_segments_together_and_is_deterministic():
    tracks = []
    for u in range(40):
        tracks += [_track(f"u{u}"), _track(f"u{u}#1"), _track(f"u{u}#2")]
    train, val, test = split_by_user(tracks, val_frac=0.2, test_frac=0.1, seed=3)
    assert len(train) + len(val) + len(test) == len(tracks)
    users = [{base_user(tr.user) for tr in s} for s in (train, val, test)]
    assert (len(users[0]), len(users[1]), len(users[2])) == (28, 8, 4)
    assert not (users[0] & users[1] or users[0] & users[2] or users[1] & users[2])
    for s in (train, val, test):
        assert len(s) == 3 * len({base_user(tr.user) for tr in s})
    again = split_by_user(list(reversed(tracks)), val_frac=0.2, test_frac=0.1, seed=3)
    assert [{base_user(tr.user) for tr in s} for s in again] == users
    other = split_by_user(tracks, val_frac=0.2, test_frac=0.1, seed=4)
    assert [{base_user(tr.user) for tr in s} for s in other] != users
    assert split_by_user([]) == ([], [], [])
    with pytest.raises(ValueError):
        split_by_user(tracks, val_frac=0.7, test_frac=0.5)


def test_windows():
    tr = _track("a", 10)
    assert windows(tr, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert windows(tr, 10, 1) == [(0, 10)]
    assert windows(tr, 11, 1) == []
    assert len(windows(tr, 1, 1)) == 10
    with pytest.raises(ValueError):
        windows(tr, 0, 1)
    with pytest.raises(ValueError):
        windows(tr, 2, 0)


def test_corrupt_changes_what_is_observed_not_the_truth():
    t = np.arange(50) * 0.1
    p = np.stack([t, np.sin(t), 0 * t], 1)
    tr = Track("a", t, p)
    rng = np.random.default_rng(0)
    assert corrupt(tr, rng=rng) is tr
    noisy = corrupt(tr, noise=0.05, jitter=0.02, rng=rng)
    np.testing.assert_array_equal(noisy.t, tr.t)
    assert not np.allclose(noisy.p, tr.p)
    assert np.all(noisy.p[:, 2] == 0)  # flat tracks stay flat
    tt = np.linspace(0.05, 4.85, 30)
    np.testing.assert_allclose(noisy.truth_at(tt), tr.truth_at(tt))
    with pytest.raises(ValueError):
        corrupt(tr, noise=-1.0, rng=rng)


def test_mirror_reflects_y_truth_included():
    t = np.arange(4.0)
    p = np.array([[0.0, 1.0, 2.0]] * 4)
    tr = Track("a", t, p, truth_t=t.copy(), truth_p=p.copy())
    m = mirror(tr)
    np.testing.assert_array_equal(m.p[:, 1], -p[:, 1])
    np.testing.assert_array_equal(m.truth_p[:, 1], -p[:, 1])
    np.testing.assert_array_equal(m.p[:, [0, 2]], p[:, [0, 2]])
