"""Scoring the methods: every observer draws every other bot by each method at the same
instants, against the true positions; render errors kept per method in bounded memory.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from client_demo.players import Bot, Motion

METHODS = ("gru", "kalman", "cv", "interp", "hold")
CLASSICAL = METHODS[1:]  # drawn from the relay feed (every sample)
TELEPORT_SPEED = 20.0  # m/s: a faster true jump is a teleport (the server's reset rule)
SETTLE = 1.0  # seconds after a teleport left out of render_error (kept in render_error_all)


class ErrorStats:
    """Count, mean and quantiles of render errors in bounded memory (1 mm bins up to 20 m)."""

    BIN = 0.001
    BINS = 20_000

    def __init__(self) -> None:
        self.hist = np.zeros(self.BINS + 1, dtype=np.int64)  # the last bin: 20 m and beyond
        self.total = 0.0

    def add(self, err: np.ndarray) -> None:
        idx = np.minimum((err / self.BIN).astype(np.int64), self.BINS)
        if len(idx) > 1000:
            self.hist += np.bincount(idx, minlength=self.BINS + 1)
        else:  # a tick's draws: no pass over every bin
            np.add.at(self.hist, idx, 1)
        self.total += float(err.sum())

    @property
    def n(self) -> int:
        return int(self.hist.sum())

    def summary(self) -> dict[str, float | int | None]:
        n = self.n
        if not n:
            return {"mean": None, "p95": None, "n": 0}
        k = int(np.searchsorted(np.cumsum(self.hist), 0.95 * n))
        return {"mean": self.total / n, "p95": (k + 0.5) * self.BIN, "n": n}


class Meter:
    """Render errors per method: all scored ones, the last second's, and with teleports."""

    def __init__(self) -> None:
        self.errors = {m: ErrorStats() for m in METHODS}
        self.recent = {m: ErrorStats() for m in METHODS}
        self.everything = {m: ErrorStats() for m in METHODS}  # teleport windows included

    def add(self, method: str, err: np.ndarray, counted: np.ndarray) -> None:
        self.everything[method].add(err)
        self.errors[method].add(err[counted])
        self.recent[method].add(err[counted])

    def take_recent(self, method: str) -> dict:
        out = self.recent[method].summary()
        self.recent[method] = ErrorStats()
        return out


def score_draw(
    bots: list[Bot], index: dict[str, int], truth: np.ndarray, counted: np.ndarray, now: float,
    meter: Meter,
) -> int:  # fmt: skip
    """One draw: every observer draws every other bot by each method at the same instant
    (its clock's server time for `now`, local); each error is against `truth` (rows by
    `index`), counted in render_error where `counted` (teleport settle) is true. Only the
    pairs every method can draw are scored: one row of errors per pair, with every method.
    Returns the number of pairs scored."""
    errs: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    masks = []
    for b in bots:
        if not b.client.clock.ready:
            continue
        gru, others = b.reckoners["gru"], [b.reckoners[m] for m in CLASSICAL]
        keys = [
            key
            for key in gru.keys()  # noqa: SIM118 (not a dict)
            if key in index and all(key in r for r in others)
        ]
        if not keys:
            continue
        t_server = b.client.clock.to_server(now)  # one draw instant for every method
        rows = [index[key] for key in keys]
        masks.append(counted[rows])
        for m in METHODS:
            drawn = b.reckoners[m].positions_at(keys, t_server)
            errs[m].append(np.linalg.norm((drawn - truth[rows])[:, :2], axis=1))
    if not masks:
        return 0
    mask = np.concatenate(masks)
    for m in METHODS:
        meter.add(m, np.concatenate(errs[m]), mask)
    return len(mask)


async def measure(
    bots: list[Bot], motion: Motion, meter: Meter, t_from: float, stop: asyncio.Event
) -> None:
    """30 times a second until `stop` is set: `score_draw` against the true positions now,
    from local time `t_from` on; the second after a teleport is marked for every method."""
    index = {b.name: b.index for b in bots}
    loop = asyncio.get_running_loop()
    start, k = loop.time(), 0
    prev, prev_t = None, 0.0
    settle_until = np.zeros(len(bots))  # after a teleport, nobody can know where it went
    while not stop.is_set():
        k += 1
        await asyncio.sleep(max(0.0, start + k / 30 - loop.time()))
        now = time.monotonic()
        motion.prefetch(now)
        truth = motion.all_at(now)
        if prev is not None:
            speed = np.linalg.norm(truth - prev, axis=1) / max(now - prev_t, 1e-6)
            settle_until[speed > TELEPORT_SPEED] = now + SETTLE
        prev, prev_t = truth, now
        if now >= t_from:
            score_draw(bots, index, truth, settle_until <= now, now, meter)
