"""What goes into one engine step and what comes out: `StepBatch`, `TickResult`, `Predictions`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Predictions:
    """Every slot's latest prediction, read-only views of the engine's arrays (rows by
    slot; a slot that has not been stepped since it joined has `t` NaN). Valid until the
    next `join`, `leave` or step of the engine that made it."""

    t: np.ndarray  # (capacity,) sample time (the client's clock) the prediction is anchored at
    clock: np.ndarray  # (capacity,) the same sample's time on the server clock
    pos: np.ndarray  # (capacity, 3) the sample's position
    off: np.ndarray  # (capacity, H, 3) float32 predicted position minus `pos` at t + horizons
    seq: np.ndarray  # (capacity,) int64 seq of the sample (-1: none)
    weights: np.ndarray  # (capacity, E) the blend's expert weights (horizon mean) at its step

    @classmethod
    def of(cls, **arrays: np.ndarray) -> Predictions:
        """Read-only views of `arrays` (the engine's own)."""
        views = {}
        for k, a in arrays.items():
            v = a.view()
            v.flags.writeable = False
            views[k] = v
        return cls(**views)


@dataclass
class TickResult:
    """Predictions made this tick, one row per avatar that had a new sample, and
    `latest`: every slot's latest prediction after it (what fan-out reads)."""

    tick: int
    slots: np.ndarray  # (n,) int64
    avatars: np.ndarray  # (n,) object: avatar ids
    t: np.ndarray  # (n,) sample time the predictions are anchored at
    pos: np.ndarray  # (n, 3) float64 the sample's position
    offsets: np.ndarray  # (n, H, 3) float32 predicted position minus `pos` at t + horizons
    seq: np.ndarray  # (n,) int64 seq of the sample
    reset: np.ndarray  # (n,) bool: the avatar's state was reset (join, gap, teleport)
    latest: Predictions | None = None

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def pred(self) -> np.ndarray:
        """Predicted absolute positions (n, H, 3) float64."""
        return self.pos[:, None, :] + self.offsets


@dataclass
class StepBatch:
    """One tick's input, taken by `TickEngine.start_tick` (rows in slot order)."""

    tick: int
    slots: np.ndarray  # (n,) int64, ascending
    t: np.ndarray  # (n,) the samples' times (the clients' clocks)
    p: np.ndarray  # (n, 3) float64 positions
    seq: np.ndarray  # (n,) int64
    clock: np.ndarray  # (n,) the samples' times on the shared clock (neighbours)
    owners: np.ndarray | None = None  # (n,) object: each slot's avatar when the batch was taken

    def __len__(self) -> int:
        return len(self.slots)
