"""Headless live demo: simulated avatars -> TickEngine (shipped model) at the tick rate.

    python -m client_demo [--bots 16] [--duration 20] [--tick-hz 20] [--model CKPT]

Simulated avatars (the training simulator's motion, users never seen in training) stream
their samples at their own client rates; every tick, on absolute deadlines, the engine
runs one batched GRU step and, beside it, the same engine with the model off (constant
velocity). Once a second it prints the tick time and the prediction error of both,
scored against the avatars' true positions as time catches up with each horizon.
The WebSocket server and the networked demo arrive with the server and client issues;
this loop is the same engine and tick they will drive.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from server.engine import TickEngine
from server.model import load_checkpoint
from training.simulate import simulate


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m client_demo", description=__doc__.split("\n")[0])
    ap.add_argument("--bots", type=int, default=16, help="simulated avatars")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds to run")
    ap.add_argument("--tick-hz", type=float, default=20.0, help="engine ticks per second")
    ap.add_argument("--model", help="checkpoint (default: the shipped model)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--fast", action="store_true", help="do not wait for the wall clock")
    args = ap.parse_args(argv)

    lm = load_checkpoint(args.model, args.device)
    gru = TickEngine(lm, device=args.device, num_threads=1)
    cv = TickEngine(None, features=lm.features, device=args.device)
    tracks = simulate(args.bots, args.duration + 1.5, seed=args.seed)
    for tr in tracks:
        gru.join(tr.user)
        cv.join(tr.user)
    by_user = {tr.user: tr for tr in tracks}
    h = np.asarray(lm.features.horizons)
    cursor = dict.fromkeys(by_user, 0)
    errs: dict[str, list[np.ndarray]] = {"gru": [], "cv": []}
    tick_ms, overruns = [], 0
    period = 1.0 / args.tick_hz
    print(
        f"engine: device {gru.device}, model {lm.version}, {args.bots} avatars, {args.tick_hz:g} Hz"
    )
    print(
        f"{'time':>5} {'ticks':>6} {'tick p50 ms':>11} {'p99':>6} {'overruns':>8}  "
        f"{'error@0.5s gru/cv':>18}  {'error@1.0s gru/cv':>18}"
    )
    start = time.perf_counter()
    n_ticks = int(args.duration * args.tick_hz)
    for k in range(1, n_ticks + 1):
        now = k * period  # simulation time of this tick
        if not args.fast:  # absolute deadlines: no drift; a tick started a period late overran
            late = time.perf_counter() - (start + now)
            if late < 0:
                time.sleep(-late)
            elif late > period:
                overruns += 1
        for user, tr in by_user.items():  # samples that have "arrived" by now; newest wins
            i = cursor[user]
            j = int(np.searchsorted(tr.t, now, side="right"))
            if j > i:
                for eng in (gru, cv):
                    eng.submit(user, tr.t[j - 1], tr.p[j - 1], j - 1)
                cursor[user] = j
        t0 = time.perf_counter()
        res = {"gru": gru.tick(), "cv": cv.tick()}
        tick_ms.append((time.perf_counter() - t0) * 1e3)
        for name, r in res.items():
            for row, user in enumerate(r.avatars):
                truth = by_user[user].truth_at(r.t[row] + h)
                e = np.linalg.norm(r.pred[row] - truth, axis=-1)
                if np.isfinite(e).all() and e[-1] < 10:  # skip futures across a teleport
                    errs[name].append(e)
        if k % int(args.tick_hz) == 0:
            g, c = np.array(errs["gru"]), np.array(errs["cv"])
            i5 = int(np.argmin(np.abs(h - 0.5)))
            print(
                f"{now:5.0f} {k:6d} {np.percentile(tick_ms, 50):11.2f} "
                f"{np.percentile(tick_ms, 99):6.2f} {overruns:8d}  "
                f"{g[:, i5].mean():8.3f} / {c[:, i5].mean():7.3f}  "
                f"{g[:, -1].mean():8.3f} / {c[:, -1].mean():7.3f}",
                flush=True,
            )
    g, c = np.array(errs["gru"]), np.array(errs["cv"])
    summary = {
        "ticks": n_ticks,
        "overruns": overruns,
        "tick_ms_p50": float(np.percentile(tick_ms, 50)),
        "error_by_horizon": {
            f"{hh:g}": {"gru": float(a), "cv": float(b)}
            for hh, a, b in zip(h, g.mean(0), c.mean(0), strict=True)
        },
    }
    print(
        f"mean error at 1.0 s: GRU {g[:, -1].mean():.3f} m, CV {c[:, -1].mean():.3f} m "
        f"(GRU/CV x{g[:, -1].mean() / c[:, -1].mean():.2f})"
    )
    return summary


if __name__ == "__main__":
    main()
