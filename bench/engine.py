"""Time the TickEngine step: `python bench/engine.py [--avatars 1000,10000] [--device auto]`.

Every avatar submits a new sample every tick (the worst case), so each tick runs the
feature pipeline, one batched GRU step and the decode for all of them. Prints per
avatar count: tick p50/p99 in ms and µs per avatar (p50), for the model, for the same
network without neighbour inputs (`gru-nonb`, when the model takes neighbours: what the
neighbour search and inputs cost) and for the same engine with the model off (constant
velocity, `--predictor cv` in the server). Avatars are spread uniformly over 200 x 200 m
(0.25 per m², denser than most worlds), all in one room.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from server import cli
from server.core import model_cli
from server.core import neighbours as NB
from server.core.blend import BlendConfig
from server.core.engine import TickEngine
from server.core.model import LoadedModel, MotionGRU


def time_engine(engine: TickEngine, n: int, ticks: int, warmup: int = 5) -> dict:
    """Join `n` avatars, then time `ticks` ticks with a sample from every avatar."""
    rng = np.random.default_rng(0)
    ids = [f"a{i}" for i in range(n)]
    slots = np.array([engine.join(a) for a in ids])
    pos = rng.uniform(-100, 100, (n, 3))
    pos[:, 2] = 0
    vel = rng.normal(0, 1.2, (n, 3))
    vel[:, 2] = 0
    times = []
    for k in range(warmup + ticks):
        t = k * 0.05
        pos += vel * 0.05
        for s, p in zip(slots.tolist(), pos.tolist(), strict=True):
            engine.submit_slot(s, t, p, k)
        t0 = time.perf_counter()
        res = engine.tick()
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        assert len(res) == n
        if k >= warmup:
            times.append(dt)
    ms = np.array(times) * 1e3
    return {
        "avatars": n,
        "tick_ms_p50": float(np.percentile(ms, 50)),
        "tick_ms_p99": float(np.percentile(ms, 99)),
        "us_per_avatar_p50": float(np.percentile(ms, 50) * 1e3 / n),
    }


def without_neighbours(lm: LoadedModel) -> LoadedModel:
    """The same network shape without neighbour inputs (random weights: for timing only)."""
    feats = dataclasses.replace(lm.features, neighbours=0)
    cfg = dataclasses.replace(lm.model.cfg, n_features=feats.n_features)
    torch.manual_seed(0)
    return LoadedModel(MotionGRU(cfg).eval(), feats, lm.version + "-nonb", lm.device, {})


@cli.command("python bench/engine.py")
def main(argv: list[str] | None = None) -> list[dict]:
    """Time the engine (see ``--help``); returns the rows it printed."""
    ap = argparse.ArgumentParser(prog="python bench/engine.py", description=__doc__.split("\n")[0])
    ap.add_argument("--avatars", default="1000,10000", help="comma-separated avatar counts")
    ap.add_argument("--ticks", type=int, default=40, help="timed ticks per count")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch's and the neighbour search's threads, as the server's --threads (0: their "
        "defaults)",
    )
    ap.add_argument("--model", help="checkpoint (default: the shipped model)")
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args(argv)
    try:
        counts = [int(s) for s in args.avatars.split(",")]
    except ValueError:
        ap.error(f"--avatars {args.avatars!r}: expected comma-separated numbers, e.g. 1000,10000")
    if not counts or min(counts) < 1 or args.ticks < 1 or args.threads < 0:
        ap.error("need --avatars >= 1 each, --ticks >= 1 and --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
        NB.set_threads(args.threads)
    lm = model_cli.load_model(args.model, args.device)
    rows = []
    print(f"device {lm.device}, torch threads {torch.get_num_threads()}, model {lm.version}")
    print(f"{'avatars':>8} {'predictor':>9} {'p50 ms':>8} {'p99 ms':>8} {'us/avatar':>9}")
    served = BlendConfig()
    variants = [("gru", lm, served), ("gru-raw", lm, None)]  # served: blended; the network alone
    if lm.features.neighbours:
        variants.append(("gru-nonb", without_neighbours(lm), None))
    variants.append(("cv", None, None))
    for n in counts:
        for name, model, blend in variants:
            eng = TickEngine(
                model, features=lm.features, device=args.device, capacity=n, blend=blend
            )
            r = time_engine(eng, n, args.ticks) | {"predictor": name, "device": str(eng.device)}
            rows.append(r)
            print(
                f"{n:>8} {name:>9} {r['tick_ms_p50']:8.2f} {r['tick_ms_p99']:8.2f} "
                f"{r['us_per_avatar_p50']:9.3f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
