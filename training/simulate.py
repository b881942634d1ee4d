"""Synthetic avatar motion in a virtual world, for training and evaluating path predictors.

All avatars are simulated together at a fixed base rate (vectorised over avatars per step) so
that followers can read their leader's state. Each avatar runs a small state machine of
behaviour segments (see `training.sim_config.BEHAVIOURS`); position and velocity are
continuous except at teleports. Every behaviour drives one game-engine style character
controller (`training.sim_world._controller`, after Unreal Engine's
``UCharacterMovementComponent::CalcVelocity`` in walking mode): an input direction with an
analog magnitude accelerates the velocity at a constant rate up to a speed cap, friction
turns the velocity toward the input direction, and releasing the input brakes it (friction
plus a constant deceleration) to exactly zero. Inputs come from:

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

Here: the recording (`simulate`: the world stepped, the truth kept, the clients' samples
drawn), the CSV writer and the CLI. The parameters are `training.sim_config`, the world
(behaviours, controller) `training.sim_world`.

CLI: ``python -m training.simulate --avatars 50 --duration 120 --seed 1 --out sim.csv``.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, overload

import numpy as np

from server import cli
from training.datasets import Track
from training.sim_config import TELEPORT, SimConfig
from training.sim_world import World


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
    world = World(n_avatars, cfg, rng)
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
