"""Synthetic avatar motion in a virtual world, for training and evaluating path predictors.

All avatars are simulated together at a fixed base rate (vectorised over avatars per step) so
that followers can read their leader's state. Each avatar runs a small state machine of
behaviour segments (see `BEHAVIOURS`); position and velocity are continuous except at
teleports. Two motion models are used:

- *steering* (``poi``, ``run``, ``circle``, ``follow``): a heading turned toward a goal under a
  turn-rate limit (``min(max_turn_rate, max_lateral_accel / speed)``) and a speed that
  approaches its target first-order (slowing in sharp turns and when arriving), so paths curve;
- *velocity target* (``idle``, ``keyboard``, ``strafe``): the velocity approaches a target
  velocity first-order, like a keyboard-driven game character with input smoothing.

Each avatar then reports samples at its own client rate with timestamp jitter, drops and
optional position noise; the dense truth is kept in the returned `Track`.

CLI: ``python -m training.simulate --avatars 50 --duration 120 --seed 1 --out sim.csv``.
"""

from __future__ import annotations

import argparse
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
    "keyboard",  # 8-direction camera-relative stop/start moves with short ramps
    "run",  # run to a distant point of interest (wide turns at speed)
    "strafe",  # sideways/diagonal constant-velocity move
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
    walk_speed: tuple[float, float] = (1.2, 1.8)  # per-avatar walking speed, m/s
    run_speed: tuple[float, float] = (3.5, 6.0)  # per-avatar running speed, m/s
    accel_ramp: tuple[float, float] = (
        0.15,
        0.4,
    )  # per-avatar time to reach ~95 % of a target velocity, s
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
        if self.jitter_std < 0 or self.noise_std < 0 or self.teleport_per_min < 0:
            raise ValueError("jitter_std, noise_std and teleport_per_min must be >= 0")
        if not 0 <= self.drop_prob < 1:
            raise ValueError(f"drop_prob must be in [0, 1); got {self.drop_prob}")
        for name in ("walk_speed", "run_speed", "accel_ramp", "arrive_decel", "key_hold"):
            a, b = getattr(self, name)
            if not 0 < a <= b:
                raise ValueError(f"{name} must satisfy 0 < low <= high; got {(a, b)}")


def _wrap(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


class _World:
    """All avatars' state; `step` advances everyone by dt, `_event` runs segment changes."""

    def __init__(self, n: int, cfg: SimConfig, rng: np.random.Generator):
        self.n, self.cfg, self.rng = n, cfg, rng
        self.dt = 1.0 / cfg.base_rate
        W = cfg.world_size
        u = rng.uniform
        self.pois = u(3.0, W - 3.0, size=(cfg.n_pois, 2))
        self.pos = u(2.0, W - 2.0, size=(n, 2))
        self.vel = np.zeros((n, 2))
        self.heading = u(-np.pi, np.pi, n)
        self.speed = np.zeros(n)
        self.beh = np.full(n, IDLE, dtype=np.int8)
        self.walk = u(*cfg.walk_speed, n)
        self.run = u(*cfg.run_speed, n)
        self.alpha = 1.0 - np.exp(-self.dt * 3.0 / u(*cfg.accel_ramp, n))
        self.decel = u(*cfg.arrive_decel, n)
        self.seg_end = np.zeros(n)
        self.sub_end = np.full(n, np.inf)
        self.next_tp = np.full(n, np.inf)
        self.next_evt = np.zeros(n)
        self.cruise = self.walk.copy()
        self.goal = self.pos.copy()
        self.poi_idx = np.full(n, -1)
        self.v_tgt = np.zeros((n, 2))
        self.omega = np.zeros(n)
        self.leader = np.arange(n)
        self.gap = np.ones(n)
        self.gain = np.ones(n)
        self.sway_amp = np.zeros(n)
        self.sway_w = np.ones(n)
        self.sway_ph = np.zeros((n, 2))
        self.key_dir = np.zeros(n)
        self.cam = self.heading.copy()
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
        d = np.hypot(*(self.pos - self.pos[i]).T)
        ok = (self.beh != FOLLOW) & (d < self.cfg.follow_radius) & (d > 0.5)
        ok[i] = False
        cand = np.flatnonzero(ok)
        return int(self.rng.choice(cand)) if cand.size else -1

    def _inward(self, i: int, d: float) -> float:
        """Angle toward the world centre if moving `d` metres along key_dir leaves the world."""
        W, a = self.cfg.world_size, self.key_dir[i]
        end = self.pos[i] + d * np.array([math.cos(a), math.sin(a)])
        if np.all((end > 2.0) & (end < W - 2.0)):
            return a
        c = W / 2 - self.pos[i]
        rel = math.atan2(c[1], c[0]) - self.cam[i]
        return self.cam[i] + round(rel / (np.pi / 4)) * (np.pi / 4)

    def _set_key(self, i: int, t: float) -> None:
        cfg, rng = self.cfg, self.rng
        if rng.random() < cfg.key_stop_prob and self.speed[i] > 0.3:
            self.v_tgt[i] = 0.0
            self.sub_end[i] = t + rng.uniform(*cfg.key_stop)
            return
        if self.speed[i] > 0.3:  # change relative to the current key direction
            turn = rng.choice([0, 1, -1, 2, -2, 4], p=[0.2, 0.175, 0.175, 0.15, 0.15, 0.15])
            self.key_dir[i] += turn * np.pi / 4
        else:  # from a stop: any of the 8 camera-relative directions, mostly forward
            self.cam[i] += rng.normal(0.0, 0.3)
            k = rng.choice(8, p=[0.37] + [0.09] * 7)
            self.key_dir[i] = self.cam[i] + k * np.pi / 4
        hold = rng.uniform(*cfg.key_hold)
        spd = self.run[i] if rng.random() < cfg.key_run_prob else self.walk[i]
        self.key_dir[i] = self._inward(i, spd * hold)
        a = self.key_dir[i]
        self.v_tgt[i] = spd * np.array([math.cos(a), math.sin(a)])
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
        if b in (POI, RUN):
            d = np.hypot(*(self.pois - self.pos[i]).T)
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
            self._sway(i)
        elif b == KEYBOARD:
            self.seg_end[i] = t + rng.uniform(*cfg.keyboard_duration)
            self.cam[i] = self.heading[i] + rng.normal(0.0, 0.3)
            self.key_dir[i] = self.heading[i]
            self._set_key(i, t)
        elif b == STRAFE:
            dur = rng.uniform(*cfg.strafe_duration)
            self.seg_end[i] = t + dur
            spd = self.walk[i] * rng.uniform(0.7, 1.0)
            self.cam[i] = self.heading[i]
            self.key_dir[i] = self.heading[i] + rng.choice([2, -2, 1, -1, 3, -3]) * np.pi / 4
            self.key_dir[i] = self._inward(i, spd * dur)
            a = self.key_dir[i]
            self.v_tgt[i] = spd * np.array([math.cos(a), math.sin(a)])
        elif b == CIRCLE:
            self.seg_end[i] = t + rng.uniform(*cfg.circle_duration)
            self.cruise[i] = self.walk[i] * rng.uniform(0.8, 1.0)
            self.omega[i] = (
                rng.choice([-1.0, 1.0]) * self.cruise[i] / rng.uniform(*cfg.circle_radius)
            )
        self.beh[i] = b
        self.next_evt[i] = min(self.seg_end[i], self.sub_end[i], self.next_tp[i])

    def _sway(self, i: int) -> None:
        cfg, rng = self.cfg, self.rng
        self.sway_amp[i] = rng.uniform(*cfg.sway_amplitude)
        self.sway_w[i] = 2 * np.pi * rng.uniform(*cfg.sway_freq)
        self.sway_ph[i] = rng.uniform(0, 2 * np.pi, 2)

    def _teleport(self, i: int, t: float) -> None:
        cfg, rng = self.cfg, self.rng
        W, p = cfg.world_size, self.pos[i]
        for _ in range(50):
            d, a = rng.uniform(*cfg.teleport_distance), rng.uniform(-np.pi, np.pi)
            q = p + d * np.array([math.cos(a), math.sin(a)])
            if np.all((q > 2.0) & (q < W - 2.0)):
                break
        else:
            while True:
                q = rng.uniform(2.0, W - 2.0, 2)
                if np.hypot(*(q - p)) >= cfg.teleport_distance[0]:
                    break
        self.pos[i] = q
        self.vel[i] = 0.0
        self.speed[i] = 0.0
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
        dist = np.hypot(*(self.goal - self.pos).T)
        arrived = (dist < self.cfg.arrive_radius) & ((b == POI) | (b == RUN))
        out = ((self.pos < -1.0) | (self.pos > W + 1.0)).any(axis=1)
        out &= (b == KEYBOARD) | (b == STRAFE) | (b == CIRCLE)
        lost = np.hypot(*(self.pos[self.leader] - self.pos).T) > self.cfg.follow_radius
        due = (self.next_evt <= t) | arrived | out | lost
        if not due.any():
            return np.empty(0, dtype=np.intp)
        tele = [
            i for i in np.flatnonzero(due) if self._event(int(i), t, bool(arrived[i]), bool(out[i]))
        ]
        return np.asarray(tele, dtype=np.intp)

    # ---- dynamics (vectorised over avatars) ----

    def step(self, t: float) -> None:
        dt, cfg, b = self.dt, self.cfg, self.beh
        steer = _STEER[b]
        is_follow, is_circle = b == FOLLOW, b == CIRCLE
        d = self.goal - self.pos
        dist = np.hypot(d[:, 0], d[:, 1])
        L = self.leader
        lh = self.heading[L]
        lead_pt = self.pos[L] - self.gap[:, None] * np.stack([np.cos(lh), np.sin(lh)], axis=1)
        dv = self.vel[L] + self.gain[:, None] * (lead_pt - self.pos)
        aim = np.where(is_follow[:, None], dv, d)
        self.wander = self.wander * self.w_decay + self.w_kick * self.rng.standard_normal(self.n)
        des_h = np.arctan2(aim[:, 1], aim[:, 0]) + self.wander
        arrive_v = np.sqrt(2.0 * self.decel * np.maximum(dist - 0.5 * cfg.arrive_radius, 0.0))
        des_s = np.where(
            is_follow,
            np.minimum(np.hypot(dv[:, 0], dv[:, 1]), self.run),
            np.minimum(self.cruise, arrive_v),
        )
        err = _wrap(des_h - self.heading)
        lim = np.minimum(cfg.max_turn_rate, cfg.max_lateral_accel / np.maximum(self.speed, 1e-3))
        dh = np.where(is_circle, self.omega, np.clip(err / dt, -lim, lim)) * dt
        des_s = np.where(is_circle, self.cruise, des_s * np.clip(np.cos(err), 0.15, 1.0))
        sp_s = self.speed + (des_s - self.speed) * self.alpha
        h_s = self.heading + dh
        v_s = sp_s[:, None] * np.stack([np.cos(h_s), np.sin(h_s)], axis=1)
        sway = (self.sway_amp * self.sway_w)[:, None] * np.cos(
            self.sway_w[:, None] * t + self.sway_ph
        )
        v_t = np.where((b == IDLE)[:, None], sway, self.v_tgt)
        v_v = self.vel + (v_t - self.vel) * self.alpha[:, None]
        self.vel = np.where(steer[:, None], v_s, v_v)
        sp = np.hypot(self.vel[:, 0], self.vel[:, 1])
        h_v = np.where(sp > 0.3, np.arctan2(self.vel[:, 1], self.vel[:, 0]), self.heading)
        self.heading = np.where(steer, h_s, h_v)
        self.speed = np.where(steer, sp_s, sp)
        self.pos = self.pos + self.vel * dt


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
    xy = np.empty((S, n_avatars, 2))
    labels = np.empty((S, n_avatars), dtype=np.int8)
    for s in range(S):
        t = float(truth_t[s])
        tele = world.events(t)
        xy[s] = world.pos
        labels[s] = world.beh
        if tele.size:
            labels[s, tele] = TELEPORT
        world.step(t)
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
