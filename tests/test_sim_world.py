"""Tests for the simulated world (training/sim_world.py): the character controller and the
behaviours it drives (keyboard, stick, mouse, steering), seen through `simulate`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from training.datasets import Track
from training.sim_config import BEHAVIOURS, SimConfig
from training.sim_world import _controller
from training.simulate import simulate

KEYBOARD, IDLE = BEHAVIOURS.index("keyboard"), BEHAVIOURS.index("idle")
DT = 1 / 120


def _truth_speed(tr: Track) -> np.ndarray:
    return np.linalg.norm(np.diff(tr.truth_p, axis=0), axis=1) / np.diff(tr.truth_t)


def test_behaviour_mix_restricts_segments():
    cfg = SimConfig(behaviour_mix={"circle": 1.0}, teleport_per_min=0.0)
    tracks, labels = simulate(3, 10.0, seed=0, config=cfg, return_labels=True)
    # circles (or idle/poi after leaving the world) only
    seen = {BEHAVIOURS[k] for lab in labels.values() for k in np.unique(lab)}
    assert "circle" in seen and seen <= {"circle", "poi", "idle"}
    for tr in tracks:
        lab = labels[tr.user]
        v = np.diff(tr.truth_p[:, :2], axis=0)
        h = np.unwrap(np.arctan2(v[:, 1], v[:, 0]))
        rate = np.abs(np.diff(h)) * 120  # heading rate, rad/s
        sp = np.linalg.norm(v[1:], axis=1) * 120
        mid = (lab[1:-1] == lab[2:]) & (lab[1:-1] == BEHAVIOURS.index("circle")) & (sp > 1.0)
        if mid.sum() > 120:
            assert 1.7 <= np.median(sp[mid] / rate[mid]) <= 8.3  # radius 2–8 m


def test_single_avatar_cannot_follow():
    cfg = SimConfig(behaviour_mix={"follow": 1.0})
    tracks, labels = simulate(1, 5.0, seed=0, config=cfg, return_labels=True)
    assert len(tracks) == 1 and not (labels["sim0000"] == BEHAVIOURS.index("follow")).any()


def _run_controller(v0, in_dir, mag, cap, steps, accel=10.0, fric=8.0, bf=16.0, bd=20.48):
    """Speeds (steps + 1,) and final velocity of one avatar under constant input."""
    a = lambda x: np.array([x], dtype=float)  # noqa: E731
    vel, speeds = np.array([complex(v0)]), [abs(v0)]
    for _ in range(steps):
        vel = _controller(
            vel, np.abs(vel), np.array([complex(in_dir)]), a(mag), a(cap), a(accel),
            a(min(fric * DT, 1.0)), a(bf), a(bd), DT,
        )  # fmt: skip
        speeds.append(abs(vel[0]))
    return np.array(speeds), vel[0]


def test_controller_accelerates_linearly_to_the_cap():
    s, v = _run_controller(0, 1j, 1.0, 5.0, 120, accel=10.0)
    k = np.arange(s.size)
    np.testing.assert_allclose(s, np.minimum(10.0 * k * DT, 5.0), atol=1e-9)  # 0.5 s ramp
    assert abs(v - 5j) < 1e-9
    # analog stick at half tilt: half the acceleration and half the speed cap (UE, Unity)
    s, _ = _run_controller(0, 1, 0.5, 2.5, 120, accel=10.0)
    np.testing.assert_allclose(s, np.minimum(5.0 * k * DT, 2.5), atol=1e-9)


def test_controller_braking_stops_at_zero_in_bounded_time():
    # UE defaults: GroundFriction 8 x BrakingFrictionFactor 2, BrakingDecelerationWalking 20.48
    s, v = _run_controller(6.0, 1, 0.0, 0.0, 60, bf=16.0, bd=20.48)
    assert np.all(np.diff(s) <= 0) and v == 0 and s[-1] == 0.0
    t_stop = np.argmax(s == 0) * DT
    t_cont = np.log((6.0 + 20.48 / 16.0) / (20.48 / 16.0)) / 16.0  # dv/dt = -(16 v + 20.48)
    assert abs(t_stop - t_cont) <= 2 * DT and t_stop < 0.15
    # almost no constant part (Unity-like exponential stop) still ends at zero
    s, v = _run_controller(2.0, 1, 0.0, 0.0, 120, bf=10.0, bd=1.0)
    assert v == 0 and 0.2 < np.argmax(s == 0) * DT < 0.35


def test_controller_turns_without_gaining_speed_and_brakes_to_a_lower_cap():
    # input at 90° to the motion: friction turns the velocity, |v| stays <= the cap
    s, v = _run_controller(4.0, 1j, 1.0, 4.0, 60, fric=8.0)
    assert s.max() <= 4.0 + 1e-9 and abs(v - 4j) < 0.05
    # reversing: the speed dips, then rises again at no more than accel
    s, v = _run_controller(4.0, -1, 1.0, 4.0, 120, accel=10.0)
    assert s.min() < 1.0 and np.all(np.diff(s) <= 10.0 * DT + 1e-9) and abs(v + 4) < 1e-6
    # cap lowered under a moving avatar (sprint released): brake down to the cap, not below
    s, v = _run_controller(5.0, 1, 1.0, 1.5, 60, bf=16.0, bd=20.48)
    assert s.min() >= 1.5 - 1e-9 and abs(v - 1.5) < 1e-9
    assert np.all(np.diff(s) <= 1e-12)


# One fixed-parameter avatar type, so limits are exact: walk 1.5, run 5, accel 1.5 / 0.1 = 15,
# braking dv/dt = -(10 v + 10).
_FIXED = SimConfig(
    walk_speed=(1.5, 1.5),
    run_speed=(5.0, 5.0),
    accel_ramp=(0.1, 0.1),
    braking_friction=(10.0, 10.0),
    braking_decel=(10.0, 10.0),
    teleport_per_min=0.0,
)


def _kin(tr: Track, lab: np.ndarray):
    """Per step: speed s (S-1,), speed change rate ds (S-2,), and labels aligned with ds."""
    s = _truth_speed(tr)
    return s, np.diff(s) / DT, lab[1:-1]


@pytest.fixture(scope="module")
def keys():
    # One keyboard segment per avatar for the whole run (until it walks out of the world), so
    # that every stop is a key release: a new segment starting right after a stop would press
    # a key at once, with nothing in the labels to tell it from the same segment.
    cfg = replace(_FIXED, behaviour_mix={"keyboard": 1.0}, key_stop_prob=0.5, stick_prob=0.0,
                  keyboard_duration=(1e3, 1e3))  # fmt: skip
    return simulate(12, 60.0, seed=11, config=cfg, return_labels=True)


def test_keyboard_speed_caps_and_acceleration_limit(keys):
    tracks, labels = keys
    plateau = []
    for tr in tracks:
        s, ds, lab = _kin(tr, labels[tr.user])
        assert s.max() <= 5.0 + 0.15  # sprint cap (+ idle sway after a detour)
        kb = (lab == KEYBOARD) & (labels[tr.user][:-2] == KEYBOARD)
        assert ds[kb].max() <= 15.0 + 1.5  # never gains speed faster than MaxAcceleration
        steady = kb & (np.abs(ds) < 1e-3) & (s[1:] > 0.3)
        plateau.append(s[1:][steady])
    p = np.concatenate(plateau)
    on_cap = (np.abs(p - 1.5) < 0.02) | (np.abs(p - 5.0) < 0.02)
    assert p.size > 1000 and on_cap.mean() > 0.95  # keys: walk or sprint speed, no in-between


def test_keyboard_stops_reach_zero_in_bounded_time(keys):
    tracks, labels = keys
    bound = np.log((5.0 + 1.0) / 1.0) / 10.0 + 2 * DT  # from sprint speed; walk: 0.09 s
    # s is a difference of positions tens of metres from the origin over DT, so a held speed
    # wobbles by ~1e-12 m/s of rounding (different bits on every CPU), while each braking step
    # takes off at least 10 m/s^2 * DT = 0.083 m/s. Walk back to the release over real drops
    # only, not on into a chance run of falling rounding noise on the plateau before it.
    drop = 1e-6
    # At rest: braking ends at exactly zero, so the positions stop changing. A key reversed
    # passes through zero too, by ~0.1 m/s a step: a looser cut (say 1e-3) would take the
    # odd one that happens to land near zero for a stop.
    rest = 1e-9
    n = 0
    for tr in tracks:
        s, _, _ = _kin(tr, labels[tr.user])
        lab = labels[tr.user][:-1]
        for j in np.flatnonzero((s[:-1] > rest) & (s[1:] <= rest) & (lab[1:] == KEYBOARD)):
            k = j
            while k > 0 and s[k - 1] > s[k] + drop:
                k -= 1
            if s[k] >= 1.4:  # a release from walking or sprinting
                n += 1
                assert (j + 1 - k) * DT <= bound
                after = s[j + 1 : j + 4]  # the next key comes >= 0.3 s after the release
                assert np.all(after[lab[j + 1 : j + 4] == KEYBOARD] <= rest)  # stays put
    assert n >= 20


def test_thumbstick_speeds_vary_with_tilt():
    cfg = replace(_FIXED, behaviour_mix={"keyboard": 1.0}, key_stop_prob=0.0, key_run_prob=0.0)
    out = {}
    for prob in (0.0, 1.0):
        tracks, labels = simulate(6, 30.0, seed=5, config=replace(cfg, stick_prob=prob),
                                  return_labels=True)  # fmt: skip
        p = []
        for tr in tracks:
            s, ds, lab = _kin(tr, labels[tr.user])
            steady = (lab == KEYBOARD) & (np.abs(ds) < 1e-3) & (s[1:] > 0.1)
            p.append(s[1:][steady])
        out[prob] = np.concatenate(p)
    keys, stick = out[0.0], out[1.0]
    assert np.mean(keys < 1.45) < 0.02  # keys: full walking speed
    partial = stick < 1.45
    assert 0.2 < partial.mean() < 0.9  # stick: partial tilt is slower ...
    assert np.unique(np.round(stick[partial], 2)).size > 20  # ... at many speeds
    assert stick.min() >= 0.25 * 1.5 - 0.02 and stick.max() <= 1.5 + 1e-6


def _keyboard_turn_rates(cfg: SimConfig, seed: int) -> np.ndarray:
    """|heading rate| (rad/s) of the truth at every steady keyboard step of 6 avatars × 20 s
    (steady: speed above 1 m/s and not changing)."""
    tracks, labels = simulate(6, 20.0, seed=seed, config=cfg, return_labels=True)
    r = []
    for tr in tracks:
        v = np.diff(tr.truth_p[:, :2], axis=0)
        h = np.unwrap(np.arctan2(v[:, 1], v[:, 0]))
        s, ds, lab = _kin(tr, labels[tr.user])
        steady = (lab == KEYBOARD) & (np.abs(ds) < 1e-3) & (s[1:] > 1.0)
        r.append(np.abs(np.diff(h))[steady] / DT)
    return np.concatenate(r)


def test_mouse_steering_curves_keyboard_moves():
    cfg = replace(
        _FIXED,
        behaviour_mix={"keyboard": 1.0},
        key_stop_prob=0.0,
        stick_prob=0.0,
        flick_rate=(0.0, 0.0),
    )
    rates = {}
    for std in (0.0, 0.8):
        rates[std] = np.median(_keyboard_turn_rates(replace(cfg, look_yaw_std=std), seed=2))
    # key held, camera still: straight line. The median is not ~0 but falls between settled
    # steps (~1e-10 rad/s) and the exponential tails of friction turning the velocity onto a
    # new key's direction: over seeds 2-61 it ran 5e-12 to 9e-6 rad/s (over 1e-6 in 2), and a
    # CPU's last bits pick another such draw. 1e-3 rad/s (0.06 deg/s) is clear of those tails
    # (>= 65% of steps below it, for every seed) and 100x under a mouse-steered curve.
    assert rates[0.0] < 1e-3
    assert rates[0.8] > 0.05  # camera yawed by the mouse: the same key curves


def test_mouse_flicks_turn_fast_then_hold():
    """With flicks alone (no slow mouse yaw): keyboard motion is still straight a good part
    of the time (between flicks and key changes), and turns fast (> 2 rad/s: 17-137 degrees
    in 0.06-0.25 s, smoothed by ground friction) several times as often as with key changes
    alone (over seeds 2-4: 4-5 % of steps without flicks, 20-21 % at one flick a second)."""
    cfg = replace(
        _FIXED,
        behaviour_mix={"keyboard": 1.0},
        key_stop_prob=0.0,
        stick_prob=0.0,
        look_yaw_std=0.0,
    )
    fast = {}
    for rate in ((0.0, 0.0), (1.0, 1.0)):
        r = _keyboard_turn_rates(replace(cfg, flick_rate=rate), seed=3)
        assert np.quantile(r, 0.25) < 1e-2  # rad/s: straight between turns
        fast[rate] = np.mean(r > 2.0)  # rad/s: a flick (or a key change) under way
    assert fast[(1.0, 1.0)] > 2.0 * fast[(0.0, 0.0)] > 0.0


def test_steered_behaviours_respect_walk_and_run_caps():
    cfg = replace(_FIXED, behaviour_mix={"poi": 1, "circle": 1, "strafe": 1, "run": 1, "idle": 1})
    tracks, labels = simulate(8, 45.0, seed=4, config=cfg, return_labels=True)
    walk_only = [BEHAVIOURS.index(b) for b in ("poi", "circle", "strafe")]
    for tr in tracks:
        lab = labels[tr.user]
        s, ds, _ = _kin(tr, lab)
        assert s.max() <= 5.0 + 0.15
        # 1 s into a walking segment (after braking from a run) the walk cap holds
        seg_start = np.r_[0, np.flatnonzero(np.diff(lab) != 0) + 1]
        since = np.arange(lab.size) - np.maximum.accumulate(
            np.where(np.isin(np.arange(lab.size), seg_start), np.arange(lab.size), 0)
        )
        ok = np.isin(lab[:-1], walk_only) & (since[:-1] > 120)
        assert s[ok].max() <= 1.5 * 1.05 + 1e-6
        assert ds.max() <= 15.0 + 1.5  # no behaviour gains speed faster than MaxAcceleration
