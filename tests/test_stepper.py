"""The step worker: a child process that steps a copy of the engine, bit for bit.

Real child processes (``python -m server.serve.stepper``), real sockets; every wait is bounded
(a reply timeout, a frame count); no sleeps. Each test stops its children and checks by
PID that none is left.
"""

from __future__ import annotations

import gc
import os
import signal

import numpy as np
import pytest
import torch

from server.core.engine import TickEngine
from server.core.model import load_checkpoint
from server.serve.stepper import StepWorker, StepWorkerGone
from tests.benches import load
from tests.test_engine import make_model

behind_busy_main_thread = load("gil.py").behind_busy_main_thread

START = 60.0  # seconds a child may take to import torch on a busy machine


def gone(pid: int) -> bool:
    """The process has exited and was reaped (no zombie left either)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def worker():
    w = StepWorker(threads=1)
    w.wait_ready(START)
    yield w
    w.close()
    assert gone(w.pid)


def feed(engines, k: int, n: int, rng) -> None:
    """Tick k's samples for avatars x0..x{n-1} that are joined (same for every engine)."""
    for i in range(n):
        key = f"x{i}"
        if key not in engines[0]:
            continue
        p = (i * 2.0 + 0.3 * k + rng.normal(0, 0.02), np.sin(0.2 * k + i), 0.0)
        if i == 3 and k == 12:
            p = (p[0] + 50.0, p[1], 0.0)  # a teleport: a reset row
        for e in engines:
            assert e.submit(key, k * 0.05 + i * 1e-3, p, seq=k)


def test_the_worker_steps_bit_for_bit_like_the_engine_in_process(worker, rng):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker's (StepWorker(threads=1)): the same kernels
    try:
        _worker_matches_in_process(worker, rng)
    finally:
        torch.set_num_threads(threads)


def _worker_matches_in_process(worker, rng):
    local = TickEngine(load_checkpoint(device="cpu"), device="cpu", capacity=2)
    remote = TickEngine(load_checkpoint(device="cpu"), device="cpu", capacity=2)
    assert local.cfg.neighbours > 0  # the shipped model: the neighbour path runs too
    for i in range(4):  # joined before the hand-over: their state travels with the copy
        for e in (local, remote):
            e.join(f"x{i}", "room-a")
    feed([local, remote], 0, 4, rng)
    local.tick(), remote.tick()
    remote.attach_worker(worker)
    with pytest.raises(RuntimeError):
        remote.attach_worker(worker)
    resets = 0
    for k in range(1, 30):
        for e in (local, remote):
            if k < 24:  # joins grow the engines 4 -> 32 slots (new shared segments)
                e.join(f"x{k + 3}", "room-a" if k % 2 else "room-b")
            if k in (9, 17):
                e.leave(f"x{k - 5}")  # freed slots are reused by later joins
        feed([local, remote], k, 27, rng)
        a, b = local.tick(), remote.tick()
        resets += int(b.reset.sum())
        assert a.slots.tolist() == b.slots.tolist() and a.avatars.tolist() == b.avatars.tolist()
        np.testing.assert_array_equal(a.offsets, b.offsets)
        np.testing.assert_array_equal(a.reset, b.reset)
        assert a.tick == b.tick
    assert remote.capacity == local.capacity == 32
    assert resets >= 20 + 1  # every join's first sample, and the teleport
    for key in ("x0", "x5", "x20"):
        torch.testing.assert_close(remote.hidden(key), local.hidden(key), rtol=0, atol=0)
    np.testing.assert_array_equal(remote.snapshot().offsets, local.snapshot().offsets)
    assert remote.nonfinite_resets == local.nonfinite_resets == 0
    assert remote.worker is worker and worker.alive


def test_a_swapped_model_reaches_the_worker(worker, rng):
    lm = make_model(hidden=16)
    local = TickEngine(lm, device="cpu")
    remote = TickEngine(make_model(hidden=16), device="cpu")
    remote.attach_worker(worker)
    for e in (local, remote):
        e.join("x0"), e.join("x1")
    swaps = [
        (lambda: make_model(hidden=16, seed=1, version="same-shape"), True),
        (lambda: make_model(hidden=8, seed=2, version="other-shape"), False),
        (lambda: None, False),  # constant velocity
        (lambda: make_model(hidden=8, seed=3, version="back"), False),
    ]
    for k in range(20):
        if k % 5 == 4:
            make, keep = swaps[k // 5]
            assert local.swap_model(make()) is keep
            assert remote.swap_model(make()) is keep
            assert remote.version == local.version
        feed([local, remote], k, 2, rng)
        a, b = local.tick(), remote.tick()
        np.testing.assert_array_equal(a.offsets, b.offsets)
    with pytest.raises(ValueError):  # refused by the same checks: both keep serving
        remote.swap_model(make_model(feats=local.cfg.__class__(horizons=(0.5, 1.0))))
    assert remote.version == "back" and remote.worker is worker


def test_a_killed_worker_is_dropped_and_the_engine_steps_in_process(worker):
    eng = TickEngine(load_checkpoint(device="cpu"), device="cpu")
    eng.attach_worker(worker)
    for i in range(3):
        eng.join(f"a{i}")
    for k in range(3):
        for i in range(3):
            eng.submit(f"a{i}", k * 0.05, (i + 0.1 * k, 0.0, 0.0))
        assert eng.tick().reset.tolist() == [k == 0] * 3
    os.kill(worker.pid, signal.SIGKILL)
    for i in range(3):
        eng.submit(f"a{i}", 0.15, (i + 0.3, 0.0, 0.0))
    with pytest.raises(StepWorkerGone):
        eng.tick()
    assert eng.worker is None and gone(worker.pid)
    for i in range(3):
        assert eng.submit(f"a{i}", 0.2, (i + 0.4, 0.0, 0.0))
    res = eng.tick()  # in-process, from a reset state: every row starts a new segment
    assert len(res) == 3 and res.reset.all() and np.isfinite(res.offsets).all()


def test_close_stops_the_child_and_a_forgotten_worker_is_killed():
    w = StepWorker()
    pid = w.pid
    w.close()  # before it even said it is ready: still stopped
    assert gone(pid) and not w.alive
    w.close()  # idempotent
    w2 = StepWorker()
    pid2 = w2.pid
    w2.wait_ready(START)
    del w2
    gc.collect()  # nobody closed it: its finalizer kills it by PID
    assert gone(pid2)


def step_with_busy_main_thread(step, reps: int = 5) -> float:
    """p50 seconds of `step()` while this (the main) thread runs Python, like a loop."""
    return float(np.median([behind_busy_main_thread(step) for _ in range(reps)]))


def test_the_worker_steps_like_the_engine_behind_a_busy_main_thread(worker):
    """The worker's point is speed behind a busy main thread (a step in a thread waits for
    the GIL at every numpy and torch call): that is a timing, measured by the benchmark
    (`python bench/gil.py`: x1.9 against x22 of the step alone at 1,000 avatars),
    not here, where other programs share the two cores. Here: the same predictions."""
    n = 500
    local = TickEngine(load_checkpoint(device="cpu"), device="cpu", capacity=n)
    remote = TickEngine(load_checkpoint(device="cpu"), device="cpu", capacity=n)
    remote.attach_worker(worker)
    rng = np.random.default_rng(0)
    pos = rng.uniform(-60, 60, (n, 3))
    pos[:, 2] = 0
    slots = np.array([[e.join(f"a{i}") for e in (local, remote)] for i in range(n)])[:, 0]
    ticks = {id(local): 0, id(remote): 0}  # each engine gets the same inputs in turn

    def step(e):
        ticks[id(e)] += 1
        k = ticks[id(e)]
        e.submit_many(slots, np.full(n, k * 0.05), pos + k * 0.05, np.full(n, k))
        return e.tick()

    step(local), step(remote)
    old = os.sys.getswitchinterval()
    os.sys.setswitchinterval(0.0005)  # the server's setting
    try:
        in_thread = step_with_busy_main_thread(lambda: step(local))
        in_worker = step_with_busy_main_thread(lambda: step(remote))
    finally:
        os.sys.setswitchinterval(old)
    assert in_worker > 0 and in_thread > 0
    np.testing.assert_allclose(remote.last_off[slots], local.last_off[slots], atol=1e-5)


def test_a_failure_in_the_child_comes_back_with_its_traceback_and_ends_the_worker(worker):
    from server.serve.stepper import StepWorkerError

    eng = TickEngine(make_model(), device="cpu")
    eng.join("a")
    eng.attach_worker(worker)
    eng.join("b")
    eng._journal[-1] = ("join", "b", None, 7)  # a journal that disagrees with the copy
    eng.submit("a", 0.0, (0.0, 0.0, 0.0))
    with pytest.raises(StepWorkerError, match="diverged"):
        eng.tick()
    assert eng.worker is None and gone(worker.pid)
    with pytest.raises(StepWorkerGone):
        worker.hidden([], 0)  # a dropped worker answers nothing more
