"""server.serve.steps: where the step runs (inline, thread, worker), decided tick by tick."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from websockets.asyncio.client import connect

from server.core import protocol as P
from server.core.engine import TickEngine
from server.core.model import load_checkpoint
from server.serve import steps
from server.serve.app import build_engine
from server.serve.config import Config
from server.serve.stepper import StepWorkerGone
from server.serve.steps import StepRunner, step_cost
from tests.servers import running
from tests.test_engine import make_model
from tests.test_stepper import START, gone


def test_stepper_starts_at_min_batch_and_drops_a_worker_that_does_not_answer():
    eng = TickEngine(make_model(), device="cpu")
    stepper = StepRunner(eng, min_batch=2, timeout=0.5, cost=1.0)
    eng.join("a"), eng.join("b")
    stepper.between_ticks(1)
    assert stepper.worker is None  # under min_batch: nothing started
    stepper.between_ticks(2, off_loop=False)
    assert stepper.worker is None  # a step short enough for the loop: nothing started
    stepper.between_ticks(2)
    worker = stepper.worker
    assert worker is not None and not stepper.active
    worker.wait_ready(START)
    stepper.between_ticks(2)  # ready: the engine moves to it
    assert stepper.active and eng.worker is worker
    for k in range(3):
        eng.submit("a", k * 0.05, (0.1 * k, 0, 0)), eng.submit("b", k * 0.05, (0, 0.1 * k, 0))
        assert len(stepper.step_in_worker()) == 2
    os.kill(worker.pid, signal.SIGSTOP)  # alive but silent
    try:
        eng.submit("a", 0.2, (0.3, 0, 0))
        t0 = time.monotonic()
        with pytest.raises(StepWorkerGone):
            stepper.step_in_worker()
        assert time.monotonic() - t0 < 5.0  # the stepper's timeout (0.5 s)
    finally:
        if not gone(worker.pid):
            os.kill(worker.pid, signal.SIGKILL)
    assert stepper.failed and not stepper.active and gone(worker.pid)
    stepper.between_ticks(100)  # failed once: in-process for good
    assert stepper.worker is worker and eng.worker is None
    eng.submit("a", 0.25, (0.35, 0, 0))
    assert len(eng.tick()) == 1


async def test_served_predictions_from_the_worker_equal_the_engine_and_shutdown_stops_it(
    monkeypatch,
):
    # one client is enough to move the step out (every step leaves the loop at 0 ms)
    monkeypatch.setattr(steps, "MIN_BATCH", 1)
    ref = TickEngine(load_checkpoint(), device="cpu")
    ref.join("me")
    pids = []
    async with running(inline_step_ms=0.0) as srv, connect(srv.url) as ws:
        await ws.send(P.encode_client(P.Hello(room="r", avatar="me", v=1)))
        welcome = P.decode_server(await ws.recv())
        assert isinstance(welcome, P.Welcome)
        p, t = np.zeros(3), 0.0
        for k in range(400):  # lock-step, bounded: until the worker has served 10 ticks
            t += 0.05
            p = p + (0.06, 0.01 * np.sin(k), 0.0)
            await ws.send(P.encode_client(P.Pos(seq=k, t=t, p=tuple(p))))
            for _ in range(100):
                st = P.decode_server(await ws.recv())
                if isinstance(st, P.State) and len(st) and st.seq[0] == k:
                    break
            ref.submit("me", t, p, k)
            expect = ref.tick()
            np.testing.assert_allclose(st.offsets[0], expect.offsets[0], atol=5.1e-4)
            stepper = srv.steps
            if stepper.active:
                pids.append(stepper.worker.pid)
                if len(pids) == 10:
                    break
        assert len(pids) == 10 and len(set(pids)) == 1 and not gone(pids[0])
        assert srv.stats.tick_errors == 0
    assert gone(pids[0])  # the server's shutdown stopped it


async def test_a_server_whose_worker_dies_keeps_serving_in_process(monkeypatch):
    monkeypatch.setattr(steps, "MIN_BATCH", 1)
    async with running(inline_step_ms=0.0) as srv, connect(srv.url) as ws:
        await ws.send(P.encode_client(P.Hello(room="r", avatar="me", v=1)))
        assert isinstance(P.decode_server(await ws.recv()), P.Welcome)
        killed = None
        states_after = 0
        for k in range(600):  # bounded
            await ws.send(P.encode_client(P.Pos(seq=k, t=0.05 * k, p=(0.05 * k, 0.0, 0.0))))
            st = P.decode_server(await ws.recv())
            stepper = srv.steps
            if killed is None and stepper.active:
                killed = stepper.worker.pid
                os.kill(killed, signal.SIGKILL)
            elif killed is not None and stepper.failed and isinstance(st, P.State) and len(st):
                states_after += 1
                if states_after == 5 and st.seq[0] >= k - 2:
                    break
        assert killed is not None and gone(killed)
        assert stepper.failed and not stepper.active and states_after == 5
        assert srv.stats.tick_errors == 1


def test_step_cost_is_measured_and_leaves_the_engine_clean():
    eng = build_engine(Config(predictor="cv", threads=1))
    cost = step_cost(eng, n=64, repeats=2)
    assert 0 < cost < 0.01  # seconds per avatar: any machine is well under 10 ms
    assert len(eng) == 0 and eng.ticks == 0 and eng.pending == 0
