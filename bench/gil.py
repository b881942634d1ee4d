"""Where the model step can run while the event loop holds the GIL: `python bench/gil.py`.

    python bench/gil.py [--avatars 1000] [--steps 15] [--switch-intervals 5,0.5,0.1,0.02]
                              [--json OUT]

Times one engine step (the shipped model, one torch thread, every avatar with a new
sample, avatars uniform over 200 x 200 m as in `bench/engine.py`) while the main thread
runs Python in a tight loop (a stand-in for the event loop's callbacks), for each way of
running it: alone (main thread idle); in a thread, at several GIL switch intervals; in a
thread with the network traced by TorchScript (one call instead of the module's Python);
in the step worker process (`server.serve.stepper`). Prints p50 ms per row and its ratio to
the step alone. Every row is measured in the same run: compare ratios, not times across
runs (docs/performance.md, "Model step off the GIL").
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch

from server import cli
from server.core import model_cli
from server.core.engine import TickEngine
from server.serve.stepper import StepWorker

SWITCH_INTERVALS = (0.005, 0.0005, 0.0001, 0.00002)  # s; the server serves at 0.0005


class Workload:
    """One engine with `n` avatars and a fresh sample for each of them before every step."""

    def __init__(self, engine: TickEngine, n: int) -> None:
        rng = np.random.default_rng(0)
        self.engine, self.n, self.k = engine, n, 0
        self.slots = np.array([engine.join(f"a{i}") for i in range(n)])
        self.pos = rng.uniform(-100, 100, (n, 3))
        self.pos[:, 2] = 0
        self.vel = rng.normal(0, 1.2, (n, 3))
        self.vel[:, 2] = 0

    def feed(self) -> None:
        self.k += 1
        self.pos = self.pos + self.vel * 0.05
        ok = self.engine.submit_many(
            self.slots, np.full(self.n, self.k * 0.05), self.pos, np.full(self.n, self.k)
        )
        assert ok.all()

    def alone(self, steps: int) -> float:
        """p50 seconds of a step with the main thread idle."""
        times = []
        for _ in range(steps):
            self.feed()
            t0 = time.perf_counter()
            self.engine.tick()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    def busy(self, steps: int) -> float:
        """p50 seconds of a step run in a thread while this (main) thread runs Python."""
        times = []
        for _ in range(steps):
            self.feed()
            times.append(behind_busy_main_thread(self.engine.tick))
        return float(np.median(times))


def behind_busy_main_thread(step: Callable[[], object]) -> float:
    """Seconds `step()` takes in a thread while this (the main) thread runs Python in a
    tight loop, a stand-in for the event loop's callbacks."""
    done = threading.Event()
    took: list[float] = []

    def run() -> None:
        t0 = time.perf_counter()
        step()
        took.append(time.perf_counter() - t0)
        done.set()

    th = threading.Thread(target=run)
    th.start()
    x = 0
    while not done.is_set():
        for i in range(300):
            x += i
    th.join()
    return took[0]


def _traced(engine: TickEngine) -> None:
    """Replace the engine's network step by a frozen TorchScript trace of it."""
    net = engine.model.model

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x, h):
            return self.net.step(x, h)

    n = 256
    x = torch.zeros(n, engine.cfg.n_features)
    h = torch.zeros(net.cfg.layers, n, net.cfg.state_size)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates tracing: a measurement here
        traced = torch.jit.freeze(torch.jit.trace(Step().eval(), (x, h)))
    net.step = traced  # an instance attribute: the engine calls model.model.step(x, h)


def measure(
    n: int,
    steps: int,
    model: str | None = None,
    switch_intervals: tuple[float, ...] = SWITCH_INTERVALS,
) -> list[dict]:
    """The rows `main` prints: {"how", "p50_ms", "ratio"} (ratio to the step alone)."""
    torch.set_num_threads(1)
    old = sys.getswitchinterval()
    rows: list[tuple[str, float]] = []
    try:
        w = Workload(TickEngine(model_cli.load_model(model, "cpu"), device="cpu", capacity=n), n)
        for _ in range(3):
            w.feed()
            w.engine.tick()
        sys.setswitchinterval(0.0005)
        rows.append(("alone", w.alone(steps)))
        for s in switch_intervals:
            sys.setswitchinterval(s)
            rows.append((f"thread, switch interval {s * 1e3:g} ms", w.busy(steps)))
        sys.setswitchinterval(0.0005)
        t = Workload(TickEngine(model_cli.load_model(model, "cpu"), device="cpu", capacity=n), n)
        _traced(t.engine)
        for _ in range(3):
            t.feed()
            t.engine.tick()
        rows.append(("alone, network traced (TorchScript)", t.alone(steps)))
        rows.append(("thread, network traced, switch 0.5 ms", t.busy(steps)))
        worker = StepWorker(threads=1)
        try:
            worker.wait_ready(120.0)
            w.engine.attach_worker(worker)
            for _ in range(3):
                w.feed()
                w.engine.tick()
            rows.append(("worker process, main thread idle", w.alone(steps)))
            rows.append(("worker process", w.busy(steps)))
        finally:
            worker.close()
    finally:
        sys.setswitchinterval(old)
    base = rows[0][1]
    return [{"how": how, "p50_ms": s * 1e3, "ratio": s / base} for how, s in rows]


@cli.command("python bench/gil.py")
def main(argv: list[str] | None = None) -> list[dict]:
    """Run and print the rows (see ``--help``); returns them."""
    ap = argparse.ArgumentParser(prog="python bench/gil.py", description=__doc__.split("\n")[0])
    ap.add_argument("--avatars", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=15, help="timed steps per row (p50)")
    ap.add_argument(
        "--switch-intervals",
        default=",".join(f"{s * 1e3:g}" for s in SWITCH_INTERVALS),
        help="GIL switch intervals for the thread rows, ms, comma-separated",
    )
    ap.add_argument("--model", help="checkpoint (default: the shipped model)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    try:
        switch = tuple(float(x) / 1e3 for x in args.switch_intervals.split(","))
    except ValueError:
        ap.error(f"--switch-intervals {args.switch_intervals!r}: expected ms, e.g. 5,0.5")
    if args.avatars < 1 or args.steps < 1 or not all(1e-6 <= s <= 0.1 for s in switch):
        ap.error("need --avatars >= 1, --steps >= 1 and switch intervals in [0.001, 100] ms")
    rows = measure(args.avatars, args.steps, args.model, switch)
    print(f"{args.avatars} avatars, busy main thread unless said; p50 of {args.steps} steps")
    for r in rows:
        print(f"  {r['how']:<40} {r['p50_ms']:8.2f} ms  x{r['ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
