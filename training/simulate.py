"""Synthetic avatar motion in a virtual world, for training and evaluating path predictors.

All avatars are simulated together at a fixed base rate (vectorised over avatars per step) so
that followers can read their leader's state. Each avatar runs a small state machine of
behaviour segments (see `BEHAVIOURS`); position and velocity are continuous except at
teleports. Every behaviour drives one game-engine style character controller
(`_controller`, after Unreal Engine's ``UCharacterMovementComponent::CalcVelocity`` in walking
mode): an input direction with an analog magnitude accelerates the velocity at a constant
rate up to a speed cap, friction turns the velocity toward the input direction, and releasing
the input brakes it (friction plus a constant deceleration) to exactly zero. Inputs come from:

- *steering* (``poi``, ``run``, ``circle``, ``follow``): a heading turned toward a goal under a
  turn-rate limit (``min(max_turn_rate, max_lateral_accel / speed)``) and a requested speed
  (slowing in sharp turns and when arriving), like click-to-move / path following;
- *direct input* (``keyboard``, ``strafe``): camera-relative 8-way keys or an analog stick
  (speed scales with tilt), with the camera yaw turned by the mouse / right stick while moving,
  occasional 45° VR snap turns, key releases (stops) and a sprint key;
- ``idle``: no input (braking), plus a slow body sway of a few cm.

Each avatar then reports samples at its own client rate with timestamp jitter, drops and
optional position noise; the dense truth is kept in the returned `Track`. The engine defaults
each parameter is based on are listed in docs/simulator.md.

CLI: ``python -m training.simulate --avatars 50 --duration 120 --seed 1 --out sim.csv``.
"""

from __future__ import annotations

import argparse
import cmath
import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, overload

import numpy as np

from server import cli
from training.datasets import Track

BEHAVIOURS: tuple[str, ...] = (
    "idle",  # standing with slow sway of a few cm (also the pause after arriving)
    "poi",  # walk to a point of interest with smooth turns, decelerate on arrival
    "keyboard",  # camera-relative keys or analog stick, mouse-steered, with stops and sprints
    "run",  # run to a distant point of interest (wide turns at speed)
    "strafe",  # sideways/diagonal move with a fixed camera
    "circle",  # constant turn rate, radius 2–8 m
    "follow",  # steer toward a point behind a leader avatar
    "teleport",  # the truth step at which an instant 10–50 m jump lands
)
IDLE, POI, KEYBOARD, RUN, STRAFE, CIRCLE, FOLLOW, TELEPORT = range(len(BEHAVIOURS))
_CHOOSABLE = BEHAVIOURS[:TELEPORT]
_STEER = np.zeros(len(BEHAVIOURS), dtype=bool)
_STEER[[POI, RUN, CIRCLE, FOLLOW]] = True


def _default_mix() -> dict[str, float]:
    return {
        "idle": 0.12,
        "poi": 0.28,
        "keyboard": 0.22,
        "run": 0.10,
        "strafe": 0.08,
        "circle": 0.08,
        "follow": 0.12,
    }


@dataclass
class SimConfig:
    """Simulator parameters. Ranges are ``(low, high)`` and drawn uniformly."""

    world_size: float = 60.0  # side of the square world [0, world_size]^2 (soft edge: ~1 m), metres
    n_pois: int = 12  # points of interest (placed 3 m or more from the edges)
    base_rate: float = 120.0  # simulation / dense-truth rate, Hz
    behaviour_mix: dict[str, float] = field(default_factory=_default_mix)  # segment choice weights
    walk_speed: tuple[float, float] = (1.2, 2.0)  # per-avatar walking speed (speed cap), m/s
    run_speed: tuple[float, float] = (3.5, 6.0)  # per-avatar running/sprint speed cap, m/s
    # per-avatar time from standing to walking speed at full input; sets the controller's
    # constant acceleration walk / accel_ramp (UE MaxAcceleration 20.48 m/s^2: 0.07 s), s
    accel_ramp: tuple[float, float] = (0.07, 0.2)
    ground_friction: tuple[float, float] = (4.0, 8.0)  # turns velocity to the input, 1/s (UE: 8)
    braking_friction: tuple[float, float] = (6.0, 16.0)  # speed-proportional braking, 1/s
    braking_decel: tuple[float, float] = (1.0, 20.48)  # constant braking with no input, m/s^2
    stick_prob: float = 0.35  # chance a keyboard segment uses an analog stick (gamepad / VR)
    stick_magnitude: tuple[float, float] = (0.25, 1.0)  # partial stick tilt (speed fraction)
    stick_full_prob: float = 0.4  # chance a stick move is at full tilt
    snap_turn_prob: float = 0.1  # chance a stick move starts with a VR snap turn
    snap_turn: float = 45.0  # snap-turn angle, degrees
    look_yaw_std: float = 0.8  # std of the mouse / right-stick camera yaw rate, rad/s
    look_yaw_time: float = 1.0  # correlation time of that yaw rate (Ornstein-Uhlenbeck), s
    # mouse flicks (an FPS player's quick look-around: the camera, and so the keys' direction,
    # swings by an angle in a fraction of a second and then holds): per keyboard segment a
    # Poisson rate drawn from `flick_rate`, each flick `flick_angle` rad over `flick_time` s
    flick_rate: tuple[float, float] = (0.0, 0.8)  # flicks per second while on the keys
    flick_angle: tuple[float, float] = (0.3, 2.4)  # rad (17°–137°), either way
    flick_time: tuple[float, float] = (0.06, 0.25)  # s
    max_turn_rate: float = 6.0  # heading-rate cap when nearly still, rad/s
    max_lateral_accel: float = 3.5  # caps the turn rate at speed v to this / v, m/s^2
    wander_std: float = 0.15  # std of a slow random heading offset while steering, rad
    wander_time: float = 2.0  # correlation time of that offset (Ornstein-Uhlenbeck), s
    arrive_decel: tuple[float, float] = (
        1.0,
        2.0,
    )  # per-avatar braking when arriving at a POI, m/s^2
    arrive_radius: float = 0.3  # a POI is reached within this distance, m
    pause: tuple[float, float] = (0.5, 4.0)  # idle pause after reaching a POI, s
    idle_duration: tuple[float, float] = (1.0, 6.0)  # idle segment length, s
    sway_amplitude: tuple[float, float] = (0.01, 0.05)  # idle sway per axis, m
    sway_freq: tuple[float, float] = (0.1, 0.4)  # idle sway frequency, Hz
    keyboard_duration: tuple[float, float] = (3.0, 12.0)  # keyboard segment length, s
    key_hold: tuple[float, float] = (0.5, 3.0)  # one key-combination held for, s
    key_stop: tuple[float, float] = (0.3, 1.5)  # all keys released for, s
    key_stop_prob: float = 0.25  # chance a key change is a full stop
    key_run_prob: float = 0.15  # chance a keyboard move is at run speed ("shift")
    run_duration: tuple[float, float] = (4.0, 12.0)  # max run segment length, s
    strafe_duration: tuple[float, float] = (1.0, 4.0)  # strafe segment length, s
    circle_duration: tuple[float, float] = (3.0, 8.0)  # circle segment length, s
    circle_radius: tuple[float, float] = (2.0, 8.0)  # circle radius, m
    follow_duration: tuple[float, float] = (5.0, 20.0)  # follow segment length, s
    follow_gap: tuple[float, float] = (1.0, 2.0)  # distance kept behind the leader, m
    follow_gain: tuple[float, float] = (0.6, 1.5)  # position-error gain, 1/s (lower = more lag)
    follow_radius: float = 15.0  # leaders are picked within this distance; farther = lost, m
    poi_timeout: float = 40.0  # give up on a POI (or follow) after this long, s
    teleport_per_min: float = 0.5  # teleports per avatar per minute (Poisson)
    teleport_distance: tuple[float, float] = (10.0, 50.0)  # jump length, m
    rate: tuple[float, float] = (10.0, 60.0)  # per-avatar client send rate, Hz
    jitter_std: float = 0.003  # std of true sample time around the reported (nominal) one, s
    drop_prob: float = 0.03  # chance each sample is lost
    noise_std: float = 0.0  # Gaussian noise on observed x, y (VR tracking: 0.01–0.02), m
    terrain_amplitude: float = 0.0  # z = A sin(2πx/λ) cos(2πy/λ); 0 = flat (z = 0), m
    terrain_wavelength: float = 30.0  # λ above, m

    def validate(self) -> None:
        """Raise ValueError if a field is out of range."""
        unknown = set(self.behaviour_mix) - set(_CHOOSABLE)
        if unknown:
            raise ValueError(f"unknown behaviours in behaviour_mix: {sorted(unknown)}")
        w = np.array(list(self.behaviour_mix.values()), dtype=float)
        if w.size == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError("behaviour_mix weights must be finite, >= 0 and not all 0")
        if self.world_size <= 10 or self.n_pois < 2 or self.base_rate <= 0:
            raise ValueError("need world_size > 10, n_pois >= 2 and base_rate > 0")
        lo, hi = self.rate
        if not 0 < lo <= hi <= self.base_rate:
            raise ValueError(f"rate must satisfy 0 < min <= max <= base_rate; got {self.rate}")
        if self.wander_std < 0 or self.wander_time <= 0:
            raise ValueError("need wander_std >= 0 and wander_time > 0")
        if self.look_yaw_std < 0 or self.look_yaw_time <= 0:
            raise ValueError("need look_yaw_std >= 0 and look_yaw_time > 0")
        if not 0 <= self.flick_rate[0] <= self.flick_rate[1]:
            raise ValueError(f"flick_rate must satisfy 0 <= low <= high; got {self.flick_rate}")
        for name in ("stick_prob", "stick_full_prob", "snap_turn_prob", "key_stop_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]; got {getattr(self, name)}")
        if self.jitter_std < 0 or self.noise_std < 0 or self.teleport_per_min < 0:
            raise ValueError("jitter_std, noise_std and teleport_per_min must be >= 0")
        if not 0 <= self.drop_prob < 1:
            raise ValueError(f"drop_prob must be in [0, 1); got {self.drop_prob}")
        for name in (
            "walk_speed",
            "run_speed",
            "accel_ramp",
            "ground_friction",
            "braking_friction",
            "braking_decel",
            "stick_magnitude",
            "arrive_decel",
            "key_hold",
            "flick_angle",
            "flick_time",
        ):
            a, b = getattr(self, name)
            if not 0 < a <= b:
                raise ValueError(f"{name} must satisfy 0 < low <= high; got {(a, b)}")
        if self.stick_magnitude[1] > 1:
            raise ValueError(f"stick_magnitude must be <= 1; got {self.stick_magnitude}")


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def _controller(
    vel: np.ndarray,
    speed: np.ndarray,
    in_dir: np.ndarray,
    mag: np.ndarray,
    cap: np.ndarray,
    accel: np.ndarray,
    turn_k: np.ndarray,
    brake_fric: np.ndarray,
    brake_dec: np.ndarray,
    dt: float,
) -> np.ndarray:
    """One walking step of a UE-style character controller, vectorised over avatars.

    2-D vectors are complex (x + iy). `vel` (n,) and its modulus `speed` (n,); `in_dir` (n,)
    unit input direction, `mag` (n,) input magnitude in [0, 1] (0 = no input), `cap` (n,) the
    speed cap at that magnitude; `turn_k` (n,) = ``min(ground_friction * dt, 1)``.
    Follows ``UCharacterMovementComponent::CalcVelocity``: with no input, or above the cap,
    brake (``dv/dt = -(brake_fric * v + brake_dec * v/|v|)``, stopping at exactly zero and,
    with input along the motion, not below the cap); otherwise friction turns the velocity
    toward the input (``v -= (v - in_dir |v|) * turn_k``, which never adds speed); then
    accelerate at ``mag * accel`` along the input and clamp to the cap (or to the speed left
    after braking if that is higher). So |v| never grows by more than ``accel * dt`` a step
    and never above ``max(cap, previous speed)``.
    """
    over = speed > cap
    s_b = np.maximum(speed - (brake_fric * speed + brake_dec) * dt, 0.0)
    along = (vel * in_dir.conj()).real > 0.0
    s_b = np.where(over & along & (mag > 0.0), np.maximum(s_b, cap), s_b)
    braked = vel * (s_b / np.maximum(speed, 1e-12))
    turned = vel - (vel - in_dir * speed) * turn_k
    v = np.where((mag <= 0.0) | over, braked, turned)
    s1 = np.abs(v)
    v = v + in_dir * (mag * accel * dt)
    s2 = np.abs(v)
    return v * np.minimum(1.0, np.maximum(s1, cap) / np.maximum(s2, 1e-12))


class _World:
    """All avatars' state; `step` advances everyone by dt, `_event` runs segment changes."""

    def __init__(self, n: int, cfg: SimConfig, rng: np.random.Generator):
        self.n, self.cfg, self.rng = n, cfg, rng
        self.dt = 1.0 / cfg.base_rate
        W = cfg.world_size
        u = rng.uniform
        # 2-D points and vectors are complex (x + iy)
        self.pois = u(3.0, W - 3.0, size=(cfg.n_pois, 2)) @ np.array([1.0, 1j])
        self.pos = u(2.0, W - 2.0, size=(n, 2)) @ np.array([1.0, 1j])
        self.vel = np.zeros(n, dtype=complex)
        self.heading = u(-np.pi, np.pi, n)
        self.speed = np.zeros(n)
        self.beh = np.full(n, IDLE, dtype=np.int8)
        self.walk = u(*cfg.walk_speed, n)
        self.run = u(*cfg.run_speed, n)
        self.accel = self.walk / u(*cfg.accel_ramp, n)
        self.turn_k = np.minimum(u(*cfg.ground_friction, n) * self.dt, 1.0)
        self.b_fric = u(*cfg.braking_friction, n)
        self.b_dec = u(*cfg.braking_decel, n)
        self.sway_v = np.zeros(n, dtype=complex)
        self.sway_k = 1.0 - math.exp(-self.dt / 0.1)
        self.req = np.zeros(n)  # steering: requested speed, low-passed over ~0.15 s
        self.req_k = 1.0 - math.exp(-self.dt / 0.15)
        self.decel = u(*cfg.arrive_decel, n)
        self.seg_end = np.zeros(n)
        self.sub_end = np.full(n, np.inf)
        self.next_tp = np.full(n, np.inf)
        self.next_evt = np.zeros(n)
        self.cruise = self.walk.copy()
        self.goal = self.pos.copy()
        self.poi_idx = np.full(n, -1)
        self.omega = np.zeros(n)
        self.leader = np.arange(n)
        self.gap = np.ones(n)
        self.gain = np.ones(n)
        self.sway_w = np.ones(n)  # idle sway velocity: c1 e^{iwt} + c2 e^{-iwt} (0 if not idle)
        self.sway_c1 = np.zeros(n, dtype=complex)
        self.sway_c2 = np.zeros(n, dtype=complex)
        self.key_off = np.zeros(n)  # input direction relative to the camera yaw, rad
        self.in_mag = np.zeros(n)  # input magnitude (0 = no input, 1 = key / full tilt)
        self.top = self.walk.copy()  # speed at full input for the current key / stick move
        self.stick = np.zeros(n, dtype=bool)
        self.cam = self.heading.copy()
        self.look = np.zeros(n)  # camera yaw rate (mouse / right stick), rad/s
        self.look_amt = np.zeros(n)  # per-segment share of that yaw rate applied
        # flicks draw from their own stream, so a config without them leaves the rest alone
        self.flick_rng = rng.spawn(1)[0]
        self.flick_rate = np.zeros(n)  # this keyboard segment's flicks per second
        self.flick_w = np.zeros(n)  # yaw rate of the flick under way, rad/s
        self.flick_left = np.zeros(n)  # its time left, s
        self.l_decay = math.exp(-self.dt / cfg.look_yaw_time)
        self.l_kick = cfg.look_yaw_std * math.sqrt(1.0 - self.l_decay**2)
        self.wander = rng.normal(0.0, cfg.wander_std, n)
        self.w_decay = math.exp(-self.dt / cfg.wander_time)
        self.w_kick = cfg.wander_std * math.sqrt(1.0 - self.w_decay**2)
        mix = cfg.behaviour_mix
        self.mix_names = [BEHAVIOURS.index(k) for k in mix]
        w = np.array(list(mix.values()), dtype=float)
        self.mix_p = w / w.sum()
        for i in range(n):
            self._schedule_teleport(i, 0.0)
            self._start(i, self._choose(i), 0.0)

    # ---- segment control (per avatar, rare) ----

    def _schedule_teleport(self, i: int, t: float) -> None:
        r = self.cfg.teleport_per_min
        self.next_tp[i] = t + self.rng.exponential(60.0 / r) if r > 0 else np.inf

    def _choose(self, i: int) -> int:
        return int(self.mix_names[self.rng.choice(len(self.mix_p), p=self.mix_p)])

    def _leader_for(self, i: int) -> int:
        d = np.abs(self.pos - self.pos[i])
        ok = (self.beh != FOLLOW) & (d < self.cfg.follow_radius) & (d > 0.5)
        ok[i] = False
        cand = np.flatnonzero(ok)
        return int(self.rng.choice(cand)) if cand.size else -1

    def _inward(self, i: int, a: float, d: float) -> float:
        """`a`, or the camera-relative 45° direction nearest the world centre if moving `d`
        metres along `a` would leave the world."""
        W = self.cfg.world_size
        end = self.pos[i] + d * cmath.exp(1j * a)
        if 2.0 < end.real < W - 2.0 and 2.0 < end.imag < W - 2.0:
            return a
        c = W / 2 * (1 + 1j) - self.pos[i]
        rel = math.atan2(c.imag, c.real) - self.cam[i]
        return self.cam[i] + round(rel / (np.pi / 4)) * (np.pi / 4)

    def _set_key(self, i: int, t: float) -> None:
        """Next input of a keyboard segment: a key release (stop) or a new key / stick move."""
        cfg, rng = self.cfg, self.rng
        if rng.random() < cfg.key_stop_prob and self.speed[i] > 0.3:
            self.in_mag[i] = 0.0
            self.sub_end[i] = t + rng.uniform(*cfg.key_stop)
            return
        stick = bool(self.stick[i])
        if self.speed[i] > 0.3:  # change relative to the current key direction
            turn = rng.choice([0, 1, -1, 2, -2, 4], p=[0.2, 0.175, 0.175, 0.15, 0.15, 0.15])
            self.key_off[i] += turn * np.pi / 4
        else:  # from a stop: any of the 8 camera-relative directions, mostly forward
            self.cam[i] += rng.normal(0.0, 0.3)
            k = rng.choice(8, p=[0.37] + [0.09] * 7)
            self.key_off[i] = k * np.pi / 4
        if stick:  # analog: any angle, any tilt, and sometimes a VR snap turn first
            self.key_off[i] += rng.normal(0.0, 0.25)
            if rng.random() < cfg.snap_turn_prob:
                self.cam[i] += rng.choice([-1.0, 1.0]) * math.radians(cfg.snap_turn)
        full = not stick or rng.random() < cfg.stick_full_prob
        self.in_mag[i] = 1.0 if full else rng.uniform(*cfg.stick_magnitude)
        hold = rng.uniform(*cfg.key_hold)
        self.top[i] = self.run[i] if rng.random() < cfg.key_run_prob else self.walk[i]
        a = self._inward(i, self.cam[i] + self.key_off[i], self.top[i] * self.in_mag[i] * hold)
        self.key_off[i] = a - self.cam[i]
        self.sub_end[i] = t + hold

    def _start(self, i: int, b: int, t: float) -> None:
        cfg, rng = self.cfg, self.rng
        self.sub_end[i] = np.inf
        if b == FOLLOW:
            lead = self._leader_for(i)
            if lead < 0:
                b = POI
            else:
                self.leader[i] = lead
                self.gap[i] = rng.uniform(*cfg.follow_gap)
                self.gain[i] = rng.uniform(*cfg.follow_gain)
                self.seg_end[i] = t + rng.uniform(*cfg.follow_duration)
        if b != FOLLOW:
            self.leader[i] = i
        self.look_amt[i] = 0.0
        self.flick_rate[i] = self.flick_left[i] = 0.0
        self.sway_c1[i] = self.sway_c2[i] = 0.0
        self.req[i] = self.speed[i]
        if b in (POI, RUN):
            d = np.abs(self.pois - self.pos[i])
            ok = d > (15.0 if b == RUN else 2.0)
            ok[self.poi_idx[i]] = False
            if not ok.any():
                ok = d > 2.0
            k = int(rng.choice(np.flatnonzero(ok)))
            self.poi_idx[i] = k
            self.goal[i] = self.pois[k]
            if b == POI:
                self.cruise[i] = self.walk[i] * rng.uniform(0.95, 1.05)
                self.seg_end[i] = t + cfg.poi_timeout
            else:
                self.cruise[i] = self.run[i]
                self.seg_end[i] = t + rng.uniform(*cfg.run_duration)
        elif b == IDLE:
            self.seg_end[i] = t + rng.uniform(*cfg.idle_duration)
            self.in_mag[i] = 0.0
            self._sway(i)
        elif b == KEYBOARD:
            self.seg_end[i] = t + rng.uniform(*cfg.keyboard_duration)
            self.stick[i] = rng.random() < cfg.stick_prob
            self.look_amt[i] = rng.random()  # how much this user turns the camera
            self.flick_rate[i] = self.flick_rng.uniform(*cfg.flick_rate)
            self.cam[i] = self.heading[i] + rng.normal(0.0, 0.3)
            self.key_off[i] = self.heading[i] - self.cam[i]
            self._set_key(i, t)
        elif b == STRAFE:
            dur = rng.uniform(*cfg.strafe_duration)
            self.seg_end[i] = t + dur
            self.top[i] = self.walk[i] * rng.uniform(0.7, 1.0)
            self.in_mag[i] = 1.0
            self.cam[i] = self.heading[i]
            a = self.heading[i] + rng.choice([2, -2, 1, -1, 3, -3]) * np.pi / 4
            self.key_off[i] = self._inward(i, a, self.top[i] * dur) - self.cam[i]
        elif b == CIRCLE:
            self.seg_end[i] = t + rng.uniform(*cfg.circle_duration)
            self.cruise[i] = self.walk[i] * rng.uniform(0.8, 1.0)
            self.omega[i] = (
                rng.choice([-1.0, 1.0]) * self.cruise[i] / rng.uniform(*cfg.circle_radius)
            )
        self.beh[i] = b
        self.next_evt[i] = min(self.seg_end[i], self.sub_end[i], self.next_tp[i])

    def _sway(self, i: int) -> None:
        """Idle sway: each axis ``amp * sin(w t + phase)`` (velocity ``amp w cos(...)``)."""
        cfg, rng = self.cfg, self.rng
        amp = rng.uniform(*cfg.sway_amplitude)
        w = self.sway_w[i] = 2 * np.pi * rng.uniform(*cfg.sway_freq)
        ex, ey = np.exp(1j * rng.uniform(0, 2 * np.pi, 2))
        self.sway_c1[i] = amp * w / 2 * (ex + 1j * ey)
        self.sway_c2[i] = amp * w / 2 * (ex.conjugate() + 1j * ey.conjugate())

    def _teleport(self, i: int, t: float) -> None:
        cfg, rng = self.cfg, self.rng
        W, p = cfg.world_size, self.pos[i]
        for _ in range(50):
            d, a = rng.uniform(*cfg.teleport_distance), rng.uniform(-np.pi, np.pi)
            q = p + d * cmath.exp(1j * a)
            if 2.0 < q.real < W - 2.0 and 2.0 < q.imag < W - 2.0:
                break
        else:
            while True:
                q = complex(*rng.uniform(2.0, W - 2.0, 2))
                if abs(q - p) >= cfg.teleport_distance[0]:
                    break
        self.pos[i] = q
        self.vel[i] = 0.0
        self.sway_v[i] = 0.0
        self.speed[i] = self.req[i] = 0.0
        self.in_mag[i] = 0.0
        self.look_amt[i] = 0.0
        self.heading[i] = rng.uniform(-np.pi, np.pi)
        self._schedule_teleport(i, t)
        self.beh[i] = IDLE
        self.seg_end[i] = t + rng.uniform(0.3, 2.0)
        self.sub_end[i] = np.inf
        self.leader[i] = i
        self._sway(i)
        self.next_evt[i] = min(self.seg_end[i], self.next_tp[i])

    def _event(self, i: int, t: float, arrived: bool, out: bool) -> bool:
        """Handle avatar i's due event; True if it teleported."""
        if t >= self.next_tp[i]:
            self._teleport(i, t)
            return True
        if arrived:
            self._start(i, IDLE, t)
            self.seg_end[i] = t + self.rng.uniform(*self.cfg.pause)
            self.next_evt[i] = min(self.seg_end[i], self.next_tp[i])
        elif out:  # left the world: walk back to a POI
            self._start(i, POI, t)
        elif self.sub_end[i] <= t < self.seg_end[i]:  # keyboard: next key combination
            self._set_key(i, t)
            self.next_evt[i] = min(self.seg_end[i], self.sub_end[i], self.next_tp[i])
        else:  # segment over, or leader lost
            self._start(i, self._choose(i), t)
        return False

    def events(self, t: float) -> np.ndarray:
        """Run due events at time t; return indices that teleported."""
        W, b = self.cfg.world_size, self.beh
        dist = np.abs(self.goal - self.pos)
        arrived = (dist < self.cfg.arrive_radius) & ((b == POI) | (b == RUN))
        x, y = self.pos.real, self.pos.imag
        out = (x < -1.0) | (x > W + 1.0) | (y < -1.0) | (y > W + 1.0)
        out &= (b == KEYBOARD) | (b == STRAFE) | (b == CIRCLE)
        lost = np.abs(self.pos[self.leader] - self.pos) > self.cfg.follow_radius
        due = (self.next_evt <= t) | arrived | out | lost
        if not due.any():
            return np.empty(0, dtype=np.intp)
        tele = [
            i for i in np.flatnonzero(due) if self._event(int(i), t, bool(arrived[i]), bool(out[i]))
        ]
        return np.asarray(tele, dtype=np.intp)

    # ---- dynamics (vectorised over avatars) ----

    def _flick(self, dt: float) -> None:
        """Mouse flicks: start some (rate 0 off keyboard), turn the camera of those under way."""
        cfg, frng = self.cfg, self.flick_rng
        start = (self.flick_left <= 0.0) & (frng.random(self.n) < self.flick_rate * dt)
        k = int(start.sum())
        if k:
            dur = frng.uniform(*cfg.flick_time, k)
            ang = frng.uniform(*cfg.flick_angle, k) * frng.choice([-1.0, 1.0], k)
            self.flick_w[start] = ang / dur
            self.flick_left[start] = dur
        on = self.flick_left > 0.0
        if on.any():
            self.cam = self.cam + np.where(on, self.flick_w * np.minimum(dt, self.flick_left), 0.0)
            self.flick_left = np.maximum(self.flick_left - dt, 0.0)

    def step(self, t: float) -> None:
        dt, cfg, b = self.dt, self.cfg, self.beh
        steer = _STEER[b]
        is_follow, is_circle = b == FOLLOW, b == CIRCLE
        # steering: heading toward the goal (or a point behind the leader), requested speed
        d = self.goal - self.pos
        L = self.leader
        lead_pt = self.pos[L] - self.gap * np.exp(1j * self.heading[L])
        dv = self.vel[L] + self.gain * (lead_pt - self.pos)
        aim = np.where(is_follow, dv, d)
        self.wander = self.wander * self.w_decay + self.w_kick * self.rng.standard_normal(self.n)
        des_h = np.angle(aim) + self.wander
        arrive_v = np.sqrt(2.0 * self.decel * np.maximum(np.abs(d) - 0.5 * cfg.arrive_radius, 0))
        des_s = np.where(
            is_follow, np.minimum(np.abs(dv), self.run), np.minimum(self.cruise, arrive_v)
        )
        err = _wrap(des_h - self.heading)
        lim = np.minimum(cfg.max_turn_rate, cfg.max_lateral_accel / np.maximum(self.speed, 1e-3))
        lim *= dt
        dh = np.where(is_circle, self.omega * dt, np.minimum(np.maximum(err, -lim), lim))
        des_s = np.where(is_circle, self.cruise, des_s * np.maximum(np.cos(err), 0.15))
        self.req += (des_s - self.req) * self.req_k  # a user's speed intent changes smoothly
        h_s = self.heading + dh
        # keyboard / stick: camera-relative input, the camera yawed by mouse / right stick
        self.look = self.look * self.l_decay + self.l_kick * self.rng.standard_normal(self.n)
        self.cam = self.cam + self.look * self.look_amt * dt  # look_amt is 0 off keyboard
        self._flick(dt)
        in_dir = np.exp(1j * np.where(steer, h_s, self.cam + self.key_off))
        mag = np.where(steer, 1.0, self.in_mag)
        cap = np.where(steer, self.req, self.top * self.in_mag)
        v = _controller(
            self.vel, self.speed, in_dir, mag, cap, self.accel, self.turn_k, self.b_fric,
            self.b_dec, dt,
        )  # fmt: skip
        sp = np.abs(v)
        self.heading = np.where(steer, h_s, np.where(sp > 0.3, np.angle(v), self.heading))
        self.vel, self.speed = v, sp
        # idle body sway (not controller motion), faded in and out over ~0.1 s
        e = np.exp(1j * self.sway_w * t)
        self.sway_v += (self.sway_c1 * e + self.sway_c2 * e.conj() - self.sway_v) * self.sway_k
        self.pos = self.pos + (v + self.sway_v) * dt


def _terrain(xy: np.ndarray, cfg: SimConfig) -> np.ndarray:
    if cfg.terrain_amplitude == 0:
        return np.zeros(xy.shape[:-1])
    k = 2 * np.pi / cfg.terrain_wavelength
    return cfg.terrain_amplitude * np.sin(k * xy[..., 0]) * np.cos(k * xy[..., 1])


def _observe(
    truth: np.ndarray,
    tele: np.ndarray,
    duration: float,
    cfg: SimConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Client samples of one avatar from its truth (S, 3); `tele` (S,) marks teleport landings."""
    S = truth.shape[0]
    rate = rng.uniform(*cfg.rate)
    t_nom = rng.uniform(0.0, 1.0 / rate) + np.arange(int(duration * rate) + 1) / rate
    t_nom = t_nom[t_nom <= duration]
    # Every draw is made whatever the config, so noise/jitter/drop settings leave the rest alone.
    t_true = np.clip(t_nom + cfg.jitter_std * rng.standard_normal(t_nom.size), 0.0, duration)
    keep = rng.random(t_nom.size) >= cfg.drop_prob
    if not keep.any():
        keep[0] = True
    x = t_true[keep] * cfg.base_rate
    k = np.minimum(np.floor(x).astype(np.intp), S - 2)
    f = x - k
    f = np.where(tele[k + 1], np.round(f), f)  # never sample mid-jump
    p = truth[k] * (1.0 - f)[:, None] + truth[k + 1] * f[:, None]
    noise = cfg.noise_std * rng.standard_normal((t_nom.size, 2))
    p[:, :2] += noise[keep]
    return t_nom[keep], p


@overload
def simulate(
    n_avatars: int,
    duration: float,
    *,
    seed: int = 0,
    config: SimConfig | None = None,
    return_labels: Literal[False] = False,
) -> list[Track]: ...
@overload
def simulate(
    n_avatars: int,
    duration: float,
    *,
    seed: int = 0,
    config: SimConfig | None = None,
    return_labels: Literal[True],
) -> tuple[list[Track], dict[str, np.ndarray]]: ...
def simulate(
    n_avatars: int,
    duration: float,
    *,
    seed: int = 0,
    config: SimConfig | None = None,
    return_labels: bool = False,
) -> list[Track] | tuple[list[Track], dict[str, np.ndarray]]:
    """Simulate `n_avatars` avatars for `duration` seconds; deterministic given `seed`.

    Returns one `Track` per avatar (user ``sim0000``, ``sim0001``, ...) with observed samples
    (`t` nominal client timestamps in [0, duration], strictly increasing; `p` positions at the
    jittered true times, plus noise) and dense truth (`truth_t` at `config.base_rate` over
    [0, duration], `truth_p`). Memory is ~24 bytes per avatar per truth step.
    With `return_labels=True` also returns ``{user: int8 array aligned with truth_t}`` of
    indices into `BEHAVIOURS` (``TELEPORT`` marks the step at which a jump lands).
    Raises ValueError if `n_avatars < 1`, `duration <= 0` or the config is invalid.
    """
    cfg = config or SimConfig()
    cfg.validate()
    if n_avatars < 1 or not duration > 0:
        raise ValueError(f"need n_avatars >= 1 and duration > 0; got {n_avatars}, {duration}")
    rng = np.random.default_rng(seed)
    world = _World(n_avatars, cfg, rng)
    S = max(math.floor(duration * cfg.base_rate + 1e-9) + 1, 2)
    truth_t = np.arange(S) / cfg.base_rate
    xy = np.empty((S, n_avatars), dtype=complex)
    labels = np.empty((S, n_avatars), dtype=np.int8)
    for s in range(S):
        t = float(truth_t[s])
        tele = world.events(t)
        xy[s] = world.pos
        labels[s] = world.beh
        if tele.size:
            labels[s, tele] = TELEPORT
        world.step(t)
    xy = np.stack([xy.real, xy.imag], axis=-1)
    z = _terrain(xy, cfg)
    tracks, labs = [], {}
    for i in range(n_avatars):
        user = f"sim{i:04d}"
        truth_p = np.column_stack([xy[:, i], z[:, i]])
        t, p = _observe(truth_p, labels[:, i] == TELEPORT, float(truth_t[-1]), cfg, rng)
        tracks.append(Track(user, t, p, truth_t.copy(), truth_p))
        labs[user] = labels[:, i].copy()
    return (tracks, labs) if return_labels else tracks


def write_csv(tracks: Sequence[Track], path: str | Path, *, with_z: bool = False) -> None:
    """Write observed samples in the seed CSV format ``user_id,timestamp,x,y[,z]``.

    One header row, then each track's samples in order; timestamps (s) and positions (m)
    with 4 decimals. Overwrites `path`; raises OSError if it cannot be written.
    """
    fmt = "{:.4f}"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "timestamp", "x", "y", *(["z"] if with_z else [])])
        for tr in tracks:
            cols = 4 if with_z else 3
            for ti, pi in zip(tr.t, tr.p, strict=True):
                w.writerow([tr.user, fmt.format(ti), *(fmt.format(v) for v in pi[: cols - 1])])


@cli.command("python -m training.simulate")
def main(argv: Sequence[str] | None = None) -> None:
    """CLI: simulate avatars and write their observed samples as CSV (see ``--help``)."""
    ap = argparse.ArgumentParser(
        prog="python -m training.simulate",
        description="Simulate metaverse avatar motion and write the client samples as CSV.",
    )
    ap.add_argument("--avatars", type=int, default=50, help="number of avatars (default 50)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds simulated (default 60)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--out", required=True, help="output CSV path")
    ap.add_argument(
        "--noise", type=float, default=0.0, help="position noise std, m (default 0; VR ~0.01)"
    )
    ap.add_argument(
        "--jitter-ms", type=float, default=3.0, help="timestamp jitter std, ms (default 3)"
    )
    ap.add_argument("--drop", type=float, default=0.03, help="sample drop probability (0.03)")
    ap.add_argument("--rate-min", type=float, default=10.0, help="min client rate, Hz (10)")
    ap.add_argument("--rate-max", type=float, default=60.0, help="max client rate, Hz (60)")
    ap.add_argument(
        "--teleports", type=float, default=0.5, help="teleports per avatar-minute (0.5)"
    )
    ap.add_argument("--with-z", action="store_true", help="write a z column")
    a = ap.parse_args(argv)
    cfg = SimConfig(
        noise_std=a.noise,
        jitter_std=a.jitter_ms / 1000.0,
        drop_prob=a.drop,
        rate=(a.rate_min, a.rate_max),
        teleport_per_min=a.teleports,
    )
    t0 = time.perf_counter()
    try:
        tracks = simulate(a.avatars, a.duration, seed=a.seed, config=cfg)
    except ValueError as e:
        ap.error(str(e))
    write_csv(tracks, a.out, with_z=a.with_z)
    n = sum(len(tr) for tr in tracks)
    print(
        f"wrote {n} samples of {len(tracks)} avatars to {a.out} ({time.perf_counter() - t0:.1f} s)"
    )


if __name__ == "__main__":
    main()
