"""The simulated world: every avatar's behaviour state machine and character controller.

All avatars step together at the base rate (vectorised over avatars per step), so that
followers can read their leader's state. Each avatar runs behaviour segments (see
`training.sim_config.BEHAVIOURS`), each driving one game-engine style character controller
(`_controller`, after Unreal Engine's ``UCharacterMovementComponent::CalcVelocity`` in
walking mode). `training.simulate` records the dense truth and the client samples.
"""

from __future__ import annotations

import cmath
import math

import numpy as np

from training.sim_config import (
    BEHAVIOURS,
    CIRCLE,
    FOLLOW,
    IDLE,
    KEYBOARD,
    POI,
    RUN,
    STRAFE,
    SimConfig,
)

_STEER = np.zeros(len(BEHAVIOURS), dtype=bool)
_STEER[[POI, RUN, CIRCLE, FOLLOW]] = True


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


class World:
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
        """Advance every avatar by one base step (`dt`) from time `t`: steering or direct
        input, the controller, idle sway."""
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
