"""Where each tick's model step runs: on the event loop, in a thread, or in the step worker.

`StepRunner` owns the placement decision, tick by tick:

- **inline** on the loop when the step is predicted to take under `--inline-step-ms`
  (a thread would then wait for the GIL behind socket I/O for longer than the step);
- in a **thread** when it is longer (the loop keeps reading sockets meanwhile);
- in the **step worker** process (`server.serve.stepper.StepWorker`, an interpreter of its
  own, off the GIL the loop holds) once a CPU step of at least `MIN_BATCH` avatars is to
  leave the loop. The worker starts then, the engine moves to it between two ticks once
  it is ready (the thread serves meanwhile), every step runs there from then on, and a
  worker that fails or does not answer within `timeout` is dropped for good: the engine
  steps in-process again, from a reset state, and the failure is logged.

CUDA engines always step on the loop's thread or a thread (never the worker). The cost
per avatar is measured before the first client (`step_cost`) and kept true by the
inline steps of 64 avatars or more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from server.core import neighbours as NB
from server.core.engine import TickEngine
from server.core.tick_io import TickResult
from server.serve.stepper import StepWorker, StepWorkerGone

log = logging.getLogger("avatar_stream")

MIN_BATCH = 256  # avatars in one tick's batch before the server starts a step worker
START_TIMEOUT = 120.0  # seconds a starting worker may take (torch's import) before it is dropped


def step_cost(engine: TickEngine, n: int = 512, repeats: int = 3) -> float:
    """Seconds per avatar of one engine step, measured on `n` throw-away avatars.

    Call it before any client joins: it runs `repeats` ticks (the tick count is restored).
    """
    ticks = engine.ticks
    keys = [f"calibrate-{i}" for i in range(n)]
    for k in keys:
        engine.join(k)
    best = float("inf")
    for r in range(repeats):
        for i, k in enumerate(keys):
            engine.submit(k, float(r + 1), (float(i), 0.0, 0.0))
        t0 = time.perf_counter()
        engine.tick()
        best = min(best, time.perf_counter() - t0)
    for k in keys:
        engine.leave(k)
    engine.ticks = ticks
    return best / n


class StepRunner:
    """Runs the engine's step each tick where it costs the loop least; see the module docstring.

    `cost`: seconds per avatar of a step (None: measured now with `step_cost` on a CPU
    engine; a CUDA engine is never stepped inline). Call `close` when done.
    """

    def __init__(
        self,
        engine: TickEngine,
        *,
        inline_step_ms: float = 2.0,
        threads: int = 1,
        timeout: float = 10.0,
        min_batch: int | None = None,
        cost: float | None = None,
    ) -> None:
        self.engine = engine
        self.inline_step_ms = inline_step_ms
        self.threads = threads
        self.timeout = timeout  # seconds a step may take in the worker before it is dropped
        self.min_batch = MIN_BATCH if min_batch is None else min_batch
        cpu = engine.device.type == "cpu"
        self.cost = (step_cost(engine) if cpu else float("inf")) if cost is None else cost
        self.worker: StepWorker | None = None
        self.failed = False  # a worker failed: in-process for the rest of this runner's life
        self._started_at = 0.0
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix="avatar-step", initializer=NB.set_threads, initargs=(threads,)
        )

    @property
    def active(self) -> bool:
        """The engine steps in the worker."""
        return self.engine.worker is not None

    async def step(self) -> tuple[TickResult, float]:
        """Run this tick's step (loop thread) and return it with its duration (s). Raises
        what the step raised (a worker that failed is dropped first)."""
        n = self.engine.pending
        t0 = time.perf_counter()
        off_loop = n * self.cost * 1000.0 > self.inline_step_ms
        self.between_ticks(n, off_loop)  # starts the worker; hands the engine over
        if self.active:  # in the worker process; the loop waits, without the GIL
            result = self.step_in_worker()
            return result, time.perf_counter() - t0
        if not off_loop:  # short: never stalls the loop longer than inline_step_ms
            result = self.engine.tick()
            dt = time.perf_counter() - t0
            if n >= 64:  # keep the estimate true (a slower machine, a busier one)
                self.cost = 0.9 * self.cost + 0.1 * dt / n
            return result, dt
        # the batch is taken here, on the loop: samples staged meanwhile wait for the next
        batch = self.engine.start_tick()
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._executor, self.engine.finish_tick, batch)
        return result, time.perf_counter() - t0

    def between_ticks(self, pending: int, off_loop: bool = True) -> None:
        """Call before each tick's step (loop thread): starts the worker when a step of
        `pending` avatars is to leave the loop (`off_loop`: it would go to a thread) and
        `pending` reaches `min_batch`; hands the engine over once the worker is ready.
        Never blocks for long (a process start, a pickled engine); a failure is logged,
        not raised."""
        if self.failed or self.active or self.engine.device.type != "cpu":
            return
        try:
            if self.worker is None:
                if off_loop and pending >= self.min_batch:
                    self.worker = StepWorker(self.threads, reply_timeout=self.timeout)
                    self._started_at = time.monotonic()
                    log.info("step worker starting (pid %d)", self.worker.pid)
                return
            if not self.worker.ready():
                if time.monotonic() - self._started_at > START_TIMEOUT:
                    raise StepWorkerGone(f"the step worker did not start in {START_TIMEOUT:g} s")
                return
            self.engine.attach_worker(self.worker)
        except Exception as e:
            self._fail(e)
            return
        log.info("model step runs in the step worker (pid %d)", self.worker.pid)

    def step_in_worker(self) -> TickResult:
        """One tick's step in the worker (call only while `active`): blocks until it
        answers, at most `timeout` s. Raises what the step raised; a failed worker is
        dropped (the engine steps in-process from the next tick on)."""
        try:
            return self.engine.tick()  # start_tick + finish_tick: the answer is waited for
        except Exception as e:
            self._fail(e)
            raise

    def _fail(self, e: BaseException) -> None:
        self.failed = True
        if self.worker is not None:
            self.worker.discard()
        log.error("step worker dropped, the model step runs in-process from now on: %s", e)

    async def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and the worker (killed by PID after `timeout`); idempotent."""
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self.worker is not None:
            await asyncio.to_thread(self.worker.close, timeout)
