"""The simulator's parameters: the behaviours (`BEHAVIOURS`) and `SimConfig`.

Each field of `SimConfig` is one knob of the motion model (`training.sim_world`) or of the
client that reports it (`training.simulate`); the engine defaults each is based on are
listed in docs/simulator.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

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
CHOOSABLE = BEHAVIOURS[:TELEPORT]  # the behaviours a segment can start with


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
        unknown = set(self.behaviour_mix) - set(CHOOSABLE)
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
