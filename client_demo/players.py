"""The demo's simulated players: their true motion, their connections and what they send.

Each bot follows the training simulator's motion (`Motion`, sampled at 60 Hz locally) and
sends its positions by a send policy (`make_policy`); `Bot` holds its two connections and
the reckoners that draw the others for it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from client_demo.client import AvatarClient
from client_demo.kalman_paths import KalmanPaths
from client_demo.reckoning import DeadReckoner
from client_demo.send_policy import FixedRate, SendPolicy, ThresholdPolicy
from training.sim_config import SimConfig
from training.simulate import simulate

SEGMENT = 120.0  # seconds of simulated motion per batch; the next one is made in a thread


class Motion:
    """True positions of every bot at any local time, simulated in segments as time goes on.

    A segment boundary is a teleport for each bot (a jump the reckoners must handle anyway).
    """

    def __init__(
        self, n: int, seed: int, world: float, t0: float, segment: float = SEGMENT
    ) -> None:
        self.n, self.seed, self.world, self.t0, self.segment = n, seed, world, t0, segment
        self.segments: dict[int, list] = {0: self._make(0)}
        self._next: asyncio.Task | None = None

    def _make(self, k: int) -> list:
        cfg = SimConfig(world_size=self.world, teleport_per_min=0.2)
        return simulate(self.n, self.segment + 1.0, seed=self.seed + 7919 * k, config=cfg)

    def prefetch(self, now: float) -> None:
        """Start making the next segment in a thread once the current one is half used."""
        k = int((now - self.t0) // self.segment)
        half_used = (now - self.t0) % self.segment > self.segment / 2
        idle = self._next is None or self._next.done()
        if half_used and k + 1 not in self.segments and idle:
            self._next = asyncio.ensure_future(self._fill(k + 1))
        for old in [j for j in self.segments if j < k]:
            del self.segments[old]

    async def _fill(self, k: int) -> None:
        self.segments[k] = await asyncio.to_thread(self._make, k)

    def at(self, i: int, now: float) -> np.ndarray:
        k, tau = divmod(max(0.0, now - self.t0), self.segment)
        seg = self.segments.get(int(k)) or self.segments[max(self.segments)]  # late prefetch: stay
        p = seg[i].truth_at(np.array([tau]))[0]
        return np.nan_to_num(p)

    def all_at(self, now: float) -> np.ndarray:
        return np.stack([self.at(i, now) for i in range(self.n)])


@dataclass
class Bot:
    index: int
    name: str
    client: AvatarClient  # the bot's own connection: its avatar, and the gru feed
    policy: SendPolicy
    relay: AvatarClient | None = None  # a protocol 1 spectator: the relay feed
    reckoners: dict[str, DeadReckoner] = field(default_factory=dict)  # one a method
    kalman: KalmanPaths | None = None  # the Kalman filters behind reckoners["kalman"]
    seq: int = 0
    sent: int = 0
    relay_bytes: int = 0  # the state frames a plain relay would send this bot (its view)
    relay_records: int = 0
    view_bytes: int = 0  # the join/leave frames of its view (a relay sends them too)


def make_policy(args: argparse.Namespace, horizons: np.ndarray) -> SendPolicy:
    """A fresh send policy as the demo's flags say (``--send-policy`` and its settings);
    ``horizons``: the server's (``welcome.horizons``), for the threshold policy's own path."""
    if args.send_policy == "fixed":
        return FixedRate(args.send_rate)
    return ThresholdPolicy(
        threshold=args.threshold,
        heartbeat=args.heartbeat,
        min_interval=1.0 / args.max_rate,
        horizons=horizons,
    )


async def run_bot(bot: Bot, motion: Motion, t_end: float, stop: asyncio.Event) -> None:
    """Sample the bot's true motion at 60 Hz and send what its policy says, until `stop` is
    set or the loop's clock reaches `t_end` (0: no end)."""
    period = 1 / 60  # local sampling of the true motion; the policy decides what is sent
    loop = asyncio.get_running_loop()
    start, k = loop.time(), 0
    while not stop.is_set() and (t_end <= 0 or loop.time() < t_end):
        k += 1
        await asyncio.sleep(max(0.0, start + k * period - loop.time()))
        now = time.monotonic()
        p = motion.at(bot.index, now)
        if bot.policy.should_send(now, p):
            bot.seq += 1
            bot.client.send_pos(bot.seq, now, p)
            bot.policy.sent(now, p, bot.seq)
            bot.sent += 1
