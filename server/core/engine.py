"""TickEngine: every avatar's GRU state in one device tensor, one batched step per tick.

No asyncio, no sockets. The caller (the app's tick loop) does, per tick:

    engine.submit(avatar, t, p, seq)   # any number of times between ticks; latest wins
    result = engine.tick()             # one batched model step for avatars with new samples

Avatars get a slot in a pool of hidden states (`HiddenStatePool`); the pool grows by
doubling, a join gets a zeroed slot and a leave frees it. Per tick the hot path is
array code only: features for all pending slots at once (each avatar's Kalman prior and,
when the model takes them, its nearest neighbours in the same room from this tick's
state), one host->device copy in, `index_select` the states, one model step,
`index_copy_` them back, the decode (prior + gated residual) on the device, one
device->host copy out, then (by default) the online blend of the network with the
classical experts (`server.core.blend`, per slot, vectorised on the host: each avatar is
served whatever has been predicting it best). With no model (`model=None`) the engine
serves last-interval constant-velocity dead reckoning through the same path, which is
the "model off" comparison.

`swap_model` replaces the model between two ticks (hot reload), keeping avatars and, when
the state shape matches, their hidden states. A model step whose new hidden state or
prediction is not finite for some rows resets those rows (zero state, CV prediction) and
counts them in `nonfinite_resets`. On the CPU the hot path pays one finiteness check per
tick; on CUDA the repair always runs on the device, so a tick keeps its single host sync.

**Step worker.** `attach_worker` hands the compute (feature state, hidden states, model)
to a `server.serve.stepper.StepWorker`, a child process holding a copy of this engine; this
object keeps the membership, the pending samples and the last predictions, so callers
see no difference. `tick()` is `finish_tick(start_tick())`: `start_tick` ships the batch
and returns at once, `finish_tick` waits for the worker's answer (without the GIL); a
caller may do other work in between (the server does not: see `server.serve.stepper`). Joins
and leaves go to the worker as a journal with the next request (the slots come out the
same: both sides run the same allocation; the worker checks). A worker that dies or
fails is dropped (`finish_tick` raises); the engine then steps in-process again from a
reset state (hidden states zero, every avatar's next sample starts a new segment).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np
import torch

from server.core import blend as BL
from server.core import features as F
from server.core.blend import BlendConfig, BlendState
from server.core.features import FeatureConfig, FeatureState
from server.core.model import LoadedModel, resolve_device

MAX_COORD = 1e6  # metres; positions beyond are rejected as corrupt


def _state_shape(model: LoadedModel | None) -> tuple[int, int]:
    """(layers, state size) of a model's recurrent state; CV keeps a (1, 1) placeholder."""
    if model is None:
        return 1, 1
    return model.model.cfg.layers, model.model.cfg.state_size


def _check_model(model: LoadedModel) -> None:
    """Raise ValueError unless the network fits the feature pipeline it is served with."""
    cfg = model.model.cfg
    fc = model.features
    if cfg.n_features != fc.n_features or cfg.n_horizons != fc.n_horizons:
        raise ValueError(
            f"model {model.version!r}: {cfg.n_features} features / {cfg.n_horizons} horizons, "
            f"the pipeline has {fc.n_features} / {fc.n_horizons}"
        )


class HiddenStatePool:
    """Hidden states (layers, capacity, hidden) on the device, addressed by slot."""

    def __init__(self, layers: int, hidden: int, capacity: int, device: torch.device) -> None:
        self.layers, self.hidden, self.device = layers, hidden, device
        self.h = torch.zeros(layers, capacity, hidden, device=device)

    @property
    def capacity(self) -> int:
        return self.h.shape[1]

    def grow(self, capacity: int) -> None:
        if capacity <= self.capacity:
            return
        h = torch.zeros(self.layers, capacity, self.hidden, device=self.device)
        h[:, : self.capacity] = self.h
        self.h = h

    def zero(self, slot: int) -> None:
        self.h[:, slot] = 0.0

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        return self.h.index_select(1, idx)

    def scatter(self, idx: torch.Tensor, h: torch.Tensor) -> None:
        self.h.index_copy_(1, idx, h)


@dataclass
class TickResult:
    """Predictions made this tick, one row per avatar that had a new sample."""

    tick: int
    slots: np.ndarray  # (n,) int64
    avatars: np.ndarray  # (n,) object: avatar ids
    t: np.ndarray  # (n,) sample time the predictions are anchored at
    pos: np.ndarray  # (n, 3) float64 the sample's position
    offsets: np.ndarray  # (n, H, 3) float32 predicted position minus `pos` at t + horizons
    seq: np.ndarray  # (n,) int64 seq of the sample
    reset: np.ndarray  # (n,) bool: the avatar's state was reset (join, gap, teleport)

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

    def __len__(self) -> int:
        return len(self.slots)


class TickEngine:
    """Batched stepped inference over all avatars; see the module docstring."""

    def __init__(
        self,
        model: LoadedModel | None,
        *,
        features: FeatureConfig | None = None,
        device: str = "auto",
        capacity: int = 64,
        num_threads: int | None = None,
        blend: BlendConfig | None = BlendConfig(),  # noqa: B008 (frozen)
    ) -> None:
        """`model=None` serves CV dead reckoning (then `features` sets the horizons).

        `blend`: the online weighting of the network with the classical experts
        (`server.core.blend`; None serves the network alone). It applies to a model only.

        The model's module is moved, in place, to the engine's device (`model.device` is
        updated). Raises ValueError for an unknown device, cuda without a GPU, or a
        network that does not fit its feature configuration.
        """
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        if model is not None:
            _check_model(model)
            self.device = resolve_device(device) if device != "auto" else model.device
            model.model.to(self.device).eval()
            model.device = self.device
            self.cfg = model.features
        else:
            self.device = resolve_device(device)
            self.cfg = features or FeatureConfig()
        self.model = model
        self.version = model.version if model is not None else "cv"
        # model-step rows whose hidden state / prediction was not finite (see nonfinite_resets)
        self._nonfinite = 0
        self._nonfinite_dev: torch.Tensor | None = None  # CUDA: counted on the device
        layers, hidden = _state_shape(model)
        self.horizons = np.asarray(self.cfg.horizons)
        H = len(self.horizons)
        capacity = max(1, int(capacity))
        self.pool = HiddenStatePool(layers, hidden, capacity, self.device)
        self.fstate = FeatureState(capacity)
        self.blend = blend
        if blend is not None and model is not None:
            BL.warm_up(self.horizons)  # compiled now, not in the first tick
        bc = blend or BlendConfig()
        self.bstate = BlendState(capacity, self.horizons, bc.lane_dt, bc.max_lanes)
        # each slot's expert weights at its last step, averaged over the horizons (E,)
        self.last_weights = np.zeros((capacity, len(BL.EXPERTS)))
        self._ids = np.empty(capacity, dtype=object)
        self._slot_of: dict[str, int] = {}
        self._live = np.zeros(capacity, dtype=bool)  # joined slots (neighbour candidates)
        self._group = np.zeros(capacity, dtype=np.int64)  # room of each slot, as an int
        self._group_ids: dict[object, int] = {}  # group -> id, while it has avatars
        self._group_size: dict[int, int] = {}
        self._free_groups: list[int] = []  # ids of emptied groups, reused (ids stay small)
        self._group_of_id: dict[int, object] = {}
        self._free = list(range(capacity))  # min-heap: lowest free slot first
        # Pending newest sample per slot (latest wins).
        self._pending = np.zeros(capacity, dtype=bool)
        self._pt = np.zeros(capacity)
        self._pp = np.zeros((capacity, 3))
        self._pseq = np.zeros(capacity, dtype=np.int64)
        self._pclock = np.zeros(capacity)
        self._clock = np.zeros(capacity)  # shared-clock time of each slot's newest sample
        # Last prediction per slot (kept for avatars without a new sample).
        self.last_t = np.full(capacity, np.nan)
        self.last_pos = np.zeros((capacity, 3))
        self.last_off = np.zeros((capacity, H, 3), dtype=np.float32)
        self.last_seq = np.full(capacity, -1, dtype=np.int64)
        self.ticks = 0
        self.last_features = np.zeros((0, self.cfg.n_features), np.float32)
        self._pinned = self.device.type == "cuda"
        self.worker = None  # a server.stepper.StepWorker running the steps (attach_worker)
        self._journal: list[tuple] = []  # joins/leaves the worker has not been told of yet
        self._h = torch.tensor(self.horizons, dtype=torch.float32, device=self.device)
        self._set_scale()
        self._alloc_host_buffers(capacity)

    def _set_scale(self) -> None:
        self._scale = torch.tensor(self.cfg.scales(), dtype=torch.float32, device=self.device)
        self._nf = self.cfg.n_features

    # -- model --------------------------------------------------------------------------

    def swap_model(self, model: LoadedModel | None) -> bool:
        """Serve `model` (None: constant-velocity dead reckoning) from the next `tick()` on.

        Avatars, slots, pending samples, feature state and last predictions stay. The
        hidden states are kept (returns True) when the old and the new model both exist
        and have the same (layers, hidden) and the same `FeatureConfig`; otherwise the
        pool is replaced by a zeroed one of the new shape (returns False) and every
        avatar's GRU state warms up again from its next sample. Swapping between a model
        and None returns False (None to None returns True: CV has no state). `version`
        becomes the new model's (or "cv"). With None the feature configuration stays the
        current one.

        The model's module is moved, in place, to the engine's device and put in eval
        mode (as the constructor does), and `model.device` is set to that device.

        The caller must call this between two ticks on the thread that drives the
        engine, never while `tick()` runs in another thread (the swap is not atomic
        against a running step).

        Raises ValueError, leaving the engine unchanged, if the new model's horizons
        differ from the engine's (clients are framed with a fixed horizon count) or its
        network does not fit its own feature configuration; the errors of moving the
        module to the device (e.g. a CUDA out-of-memory RuntimeError) also leave the
        engine unchanged.
        """
        if model is not None:
            _check_model(model)
            if tuple(model.features.horizons) != tuple(self.cfg.horizons):
                raise ValueError(
                    f"model {model.version!r} predicts horizons {model.features.horizons}, "
                    f"the engine serves {tuple(self.cfg.horizons)}"
                )
            model.model.to(self.device).eval()
            model.device = self.device
        if self.worker is not None:
            try:  # the worker swaps first: a refusal there leaves this engine unchanged
                self.worker.swap(self._take_journal(), model)
            except ConnectionError:  # the worker is gone (not a refusal): serve in-process
                self.drop_worker()
        keep = (
            model is not None
            and self.model is not None
            and _state_shape(model) == _state_shape(self.model)
            and model.features == self.cfg
        ) or (model is None and self.model is None)
        self.model = model
        self.version = model.version if model is not None else "cv"
        self.bstate.clear(slice(None))  # what the old network earned is not the new one's
        self.bstate.clear_rooms(slice(None))
        if model is not None:
            self.cfg = model.features
            self._set_scale()
            self._alloc_host_buffers(self.capacity)
        if not keep:
            layers, hidden = _state_shape(model)
            self.pool = HiddenStatePool(layers, hidden, self.capacity, self.device)
        return keep

    # -- membership -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return len(self._ids)

    def __len__(self) -> int:
        return len(self._slot_of)

    @property
    def pending(self) -> int:
        """Avatars with a new sample waiting for the next tick (the next step's batch size)."""
        return int(np.count_nonzero(self._pending))

    def live_slots(self) -> np.ndarray:
        """Slots of the joined avatars that have been stepped at least once."""
        return np.flatnonzero(self._live & ~np.isnan(self.last_t))

    def __contains__(self, avatar: str) -> bool:
        return avatar in self._slot_of

    def slot(self, avatar: str) -> int:
        """Slot of a joined avatar. Raises KeyError if it has not joined."""
        return self._slot_of[avatar]

    def join(self, avatar: str, group: object = None) -> int:
        """Give `avatar` a zeroed slot and return it. Raises KeyError if already joined.

        `group` (any hashable, e.g. the room name) scopes neighbours: an avatar's
        neighbours are the joined avatars of the same group.
        """
        if avatar in self._slot_of:
            raise KeyError(f"avatar {avatar!r} already joined")
        if not self._free:
            self._grow(2 * self.capacity)
        slot = heapq.heappop(self._free)
        self._slot_of[avatar] = slot
        self._ids[slot] = avatar
        self._live[slot] = True
        gid = self._group_ids.get(group)
        if gid is None:
            gid = self._free_groups.pop() if self._free_groups else len(self._group_ids)
            self._group_ids[group] = gid
            self._group_of_id[gid] = group
            self.bstate.clear_rooms(gid)  # a new room: its blend prior starts over
        self._group_size[gid] = self._group_size.get(gid, 0) + 1
        self._group[slot] = gid
        if self.worker is not None:
            self._journal.append(("join", avatar, group, slot))
        self.pool.zero(slot)
        self.fstate.clear(slot)
        self.bstate.clear(slot)
        self.last_weights[slot] = 0.0
        self._pending[slot] = False
        self.last_t[slot] = np.nan
        self.last_pos[slot] = 0.0
        self.last_off[slot] = 0.0
        self.last_seq[slot] = -1
        return slot

    def leave(self, avatar: str) -> None:
        """Free `avatar`'s slot. Raises KeyError if it has not joined."""
        slot = self._slot_of.pop(avatar)
        self._ids[slot] = None
        self._live[slot] = False
        gid = int(self._group[slot])
        self._group_size[gid] -= 1
        if not self._group_size[gid]:  # the group emptied: its id is free again
            del self._group_size[gid], self._group_ids[self._group_of_id.pop(gid)]
            self._free_groups.append(gid)
        self._pending[slot] = False
        self.last_t[slot] = np.nan
        heapq.heappush(self._free, slot)
        if self.worker is not None:
            self._journal.append(("leave", avatar))

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        self.pool.grow(capacity)
        self.fstate.grow(capacity)
        self.bstate.grow(capacity)
        extra = capacity - old
        self.last_weights = np.concatenate([self.last_weights, np.zeros((extra, len(BL.EXPERTS)))])
        self._ids = np.concatenate([self._ids, np.empty(extra, dtype=object)])
        self._live = np.concatenate([self._live, np.zeros(extra, dtype=bool)])
        self._group = np.concatenate([self._group, np.zeros(extra, dtype=np.int64)])
        self._pending = np.concatenate([self._pending, np.zeros(extra, dtype=bool)])
        self._pt = np.concatenate([self._pt, np.zeros(extra)])
        self._pp = np.concatenate([self._pp, np.zeros((extra, 3))])
        self._pseq = np.concatenate([self._pseq, np.zeros(extra, dtype=np.int64)])
        self._pclock = np.concatenate([self._pclock, np.zeros(extra)])
        self._clock = np.concatenate([self._clock, np.zeros(extra)])
        self.last_t = np.concatenate([self.last_t, np.full(extra, np.nan)])
        self.last_pos = np.concatenate([self.last_pos, np.zeros((extra, 3))])
        self.last_off = np.concatenate(
            [self.last_off, np.zeros((extra, *self.last_off.shape[1:]), dtype=np.float32)]
        )
        self.last_seq = np.concatenate([self.last_seq, np.full(extra, -1, dtype=np.int64)])
        for s in range(old, capacity):
            heapq.heappush(self._free, s)
        self._alloc_host_buffers(capacity)

    def _alloc_host_buffers(self, capacity: int) -> None:
        # Input: features | slot index | prior dp (3) | prior v (3) | heading (2), so a
        # tick needs exactly one host->device copy (slots < 2**24 are exact in float32).
        n_out = len(self.horizons) * 3
        self._xbuf = torch.zeros(capacity, self._nf + 9, pin_memory=self._pinned)
        self._ybuf = torch.zeros(capacity, n_out, pin_memory=self._pinned)

    # -- input --------------------------------------------------------------------------

    def submit(self, avatar: str, t: float, p, seq: int = 0) -> bool:
        """Queue a sample for the next tick; the newest per avatar wins.

        `p` is (x, y, z) or (x, y). Returns False (and keeps nothing) for a sample that
        is not finite, out of bounds, or not newer than the avatar's newest one.
        Raises KeyError if the avatar has not joined.
        """
        slot = self._slot_of[avatar]
        return self.submit_slot(slot, t, p, seq)

    def submit_slot(self, slot: int, t: float, p, seq: int = 0) -> bool:
        """`submit` by slot (the app keeps slots to skip the id lookup)."""
        z = float(p[2]) if len(p) > 2 else 0.0
        p3 = np.array([[float(p[0]), float(p[1]), z]])
        return bool(self.submit_many(np.array([slot]), np.array([float(t)]), p3, [seq])[0])

    def submit_many(self, slots, t, p, seq, clock=None) -> np.ndarray:
        """`submit_slot` for many slots at once (the tick's input flush, no Python loop).

        `slots` (n,) must be distinct joined slots; `t` (n,); `p` (n, 3) or (n, 2); `seq` (n,).
        `clock` (n,), optional: each sample's time on a clock shared by all avatars (the
        server clock; `t` is the client's own), which neighbours are compared on;
        default `t`. Returns the (n,) bool mask of the samples kept (the same rule as
        `submit`). Raises ValueError for a `p` of the wrong shape.
        """
        slots = np.asarray(slots, dtype=np.int64)
        t = np.asarray(t, dtype=np.float64)
        p = np.asarray(p, dtype=np.float64)
        if p.ndim != 2 or len(p) != len(slots) or p.shape[1] not in (2, 3):
            raise ValueError(f"p must have shape ({len(slots)}, 2 or 3), got {p.shape}")
        if p.shape[1] == 2:
            p = np.concatenate([p, np.zeros((len(p), 1))], axis=1)
        ok = np.isfinite(t) & np.isfinite(p).all(axis=1)
        ok &= np.abs(np.nan_to_num(p)).max(axis=1, initial=0.0) <= MAX_COORD
        # last_t is the newest stepped sample of a joined slot (NaN after a join), as in
        # the feature state, which is the worker's when one is attached
        newest = np.where(self._pending[slots], self._pt[slots], self.last_t[slots])
        ok &= np.isnan(newest) | (t > newest)
        kept = slots[ok]
        self._pending[kept] = True
        self._pt[kept] = t[ok]
        self._pp[kept] = p[ok]
        self._pseq[kept] = np.asarray(seq, dtype=np.int64)[ok]
        self._pclock[kept] = (t if clock is None else np.asarray(clock, dtype=np.float64))[ok]
        return ok

    # -- the tick -----------------------------------------------------------------------

    def tick(self) -> TickResult:
        """Run one batched step for every avatar with a new sample; return their predictions."""
        return self.finish_tick(self.start_tick())

    def start_tick(self) -> StepBatch:
        """The first half of `tick`: take the pending samples as this tick's batch.

        With a worker attached the batch is handed to it and this returns at once (the
        worker's socket, `worker.fileno()`, turns readable when the step is done); call
        `finish_tick` with the batch next, and nothing else of this engine's in between
        but `join`, `leave`, `submit*`, `pending` and the read-only attributes.
        """
        self.ticks += 1
        slots = np.flatnonzero(self._pending)
        self._pending[slots] = False
        batch = StepBatch(
            self.ticks, slots, self._pt[slots], self._pp[slots], self._pseq[slots],
            self._pclock[slots],
        )  # fmt: skip
        if self.worker is not None and len(slots):
            try:
                self.worker.start(batch, self._take_journal(), self.capacity)
            except BaseException:
                self.drop_worker()
                raise
        return batch

    def finish_tick(self, batch: StepBatch) -> TickResult:
        """The second half of `tick`: the batch's predictions (waits for the worker, if
        one runs the step). Raises what the step raised; a worker that failed is dropped
        first (the next tick steps in-process)."""
        slots, t, p, seq = batch.slots, batch.t, batch.p, batch.seq
        if len(slots) == 0:
            H = len(self.horizons)
            return TickResult(
                batch.tick, slots, np.empty(0, dtype=object), np.empty(0), np.empty((0, 3)),
                np.empty((0, H, 3)), np.empty(0, dtype=np.int64), np.empty(0, dtype=bool),
            )  # fmt: skip
        if self.worker is not None:
            try:
                off, reset, self.last_weights[slots] = self.worker.finish(batch)
            except BaseException:
                self.drop_worker()
                raise
        elif self.model is None:  # model off: constant velocity from the last interval
            out = F.step(self.fstate, slots, t, p, self.cfg)
            off = (out.v[:, None, :] * self.horizons[None, :, None]).astype(np.float32)
            self.last_features, reset = out.x, out.reset
        else:
            self._clock[slots] = batch.clock
            out = F.tick_features(
                self.fstate,
                slots,
                t,
                p,
                self.cfg,
                live=self._live,
                group=self._group,
                clock=self._clock,
            )
            off = self._model_step(slots, out)
            if self.blend is not None:
                off = self._blend(slots, t, p, out, off)
            self.last_features, reset = out.x, out.reset  # model input of this tick's rows
        self.last_t[slots] = t
        self.last_pos[slots] = p
        self.last_off[slots] = off
        self.last_seq[slots] = seq
        return TickResult(batch.tick, slots, self._ids[slots], t, p, off, seq, reset)

    # -- the step worker ----------------------------------------------------------------

    def attach_worker(self, worker) -> None:
        """Run the steps in `worker` (a started `server.serve.stepper.StepWorker`) from now on.

        Call between two ticks. The worker gets a copy of this engine (model, feature
        and hidden states, slots); from then on this engine's own feature and hidden
        states are not updated (`last_features` stays empty). Raises RuntimeError when
        a worker is attached already or the device is not the CPU, and what the worker
        raises when the copy cannot be sent (the engine is then unchanged).
        """
        if self.worker is not None:
            raise RuntimeError("a step worker is attached already")
        if self.device.type != "cpu":
            raise RuntimeError(f"a step worker runs CPU engines; this one is on {self.device}")
        worker.adopt(self)
        self.worker = worker
        self._journal = []
        self.last_features = np.zeros((0, self.cfg.n_features), np.float32)

    def _take_journal(self) -> list[tuple]:
        journal, self._journal = self._journal, []
        return journal

    def drop_worker(self) -> None:
        """Stop using the worker (it failed, or the caller gives up on it; between two
        ticks): the steps run in-process again, from a reset state (zero hidden states,
        every avatar's next sample starts a new segment). The worker is killed."""
        worker, self.worker = self.worker, None
        self._journal = []
        if worker is None:
            return
        self._nonfinite = worker.nonfinite  # its count so far (it started from ours)
        self.fstate.clear(slice(None))  # every avatar's next sample starts a new segment
        self.bstate.clear(slice(None))
        self.bstate.clear_rooms(slice(None))
        self.pool = HiddenStatePool(self.pool.layers, self.pool.hidden, self.capacity, self.device)
        worker.discard()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # what a worker gets: never the worker itself
        state["worker"], state["_journal"] = None, []
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.fstate._views()  # pickled views are copies: views of the unpickled data again

    def pend_batch(self, batch: StepBatch) -> None:
        """Queue `batch`, taken by `start_tick` of an engine this one is a copy of (a step
        worker's), as the next tick's samples. They were checked there, once."""
        s = batch.slots
        if not self._live[s].all() or self._pending[s].any():
            raise RuntimeError("a batch for slots that are not joined: the engines diverged")
        self._pending[s] = True
        self._pt[s], self._pp[s], self._pseq[s], self._pclock[s] = (
            batch.t, batch.p, batch.seq, batch.clock,
        )  # fmt: skip

    @torch.inference_mode()
    def _model_step(self, slots: np.ndarray, out: F.StepOutput) -> np.ndarray:
        n, nf = len(slots), self._nf
        xb = self._xbuf[:n]
        xn = xb.numpy()
        xn[:, :nf] = out.x
        xn[:, nf] = slots
        xn[:, nf + 1 : nf + 4] = out.prior_dp
        xn[:, nf + 4 : nf + 7] = out.prior_v
        xn[:, nf + 7 : nf + 9] = out.head
        xd = xb.to(self.device, non_blocking=self._pinned)  # the one host->device copy
        x = xd[:, :nf].contiguous()  # the GRU kernel is slower on a strided input
        idx = xd[:, nf].long()
        h = self.pool.gather(idx)  # (L, n, hidden)
        h = h * (1.0 - x[:, F.RESET])[None, :, None]  # reset rows start from a zero state
        y, h = self.model.model.step(x, h)  # y (n, H, 3) gated residual, heading frame
        # Decode on the device: the prior's path plus the residual rotated to the world.
        dp, v, hd = xd[:, nf + 1 : nf + 4], xd[:, nf + 4 : nf + 7], xd[:, nf + 7 : nf + 9]
        off = F.decode_offsets(y, dp, v, hd, self._h, self._scale)
        if self.device.type == "cpu":  # one check on the whole batch; rows only on failure
            if not bool(torch.isfinite(h).all() & torch.isfinite(off).all()):
                h, off = self._reset_nonfinite(h, off, dp, v)
        else:  # a check would be a second host sync per tick: repair on the device always
            h, off = self._reset_nonfinite(h, off, dp, v)
        self.pool.scatter(idx, h)  # never stores NaN/inf
        yb = self._ybuf[:n]
        if self._pinned:
            yb.copy_(off.reshape(n, -1), non_blocking=True)  # the one device->host copy
            torch.cuda.current_stream(self.device).synchronize()
        else:
            yb.copy_(off.reshape(n, -1))
        return yb.numpy().reshape(n, -1, 3).copy()

    def _blend(self, slots, t, p, out: F.StepOutput, net: np.ndarray) -> np.ndarray:
        """The served offsets: the network blended with the classical experts (float32)."""
        cfg = self.blend
        filt = BL.update_filters(
            self.bstate, slots, t, p, out.prior_v, out.reset, self.horizons, cfg
        )
        ex = BL.expert_offsets(net, out.v, out.prior_dp, out.prior_v, filt, self.horizons)
        off, w = BL.step(
            self.bstate, slots, t, p, out.reset, ex, self.horizons, cfg, self._group[slots]
        )
        self.last_weights[slots] = w.mean(axis=2)
        return off.astype(np.float32)

    def _reset_nonfinite(
        self, h: torch.Tensor, off: torch.Tensor, dp: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows with a NaN/inf hidden state or prediction: zero state, the prior's path.

        The model predicts a residual over the Kalman prior, so the honest fallback is
        the prior alone (a zero residual); the prior comes from finite, bounded samples,
        but a non-finite one falls back to zero offsets. Counts the rows in
        `nonfinite_resets`.
        """
        bad = ~(torch.isfinite(h).all(dim=2).all(dim=0) & torch.isfinite(off).flatten(1).all(1))
        h = h.masked_fill(bad[None, :, None], 0.0)
        prior = dp[:, None, :] + v[:, None, :] * self._h[None, :, None]  # (n, H, 3)
        prior = prior.masked_fill(~torch.isfinite(prior).flatten(1).all(1)[:, None, None], 0.0)
        off = torch.where(bad[:, None, None], prior, off)
        if self.device.type == "cpu":
            self._nonfinite += int(bad.sum())
        elif self._nonfinite_dev is None:
            self._nonfinite_dev = bad.sum()
        else:
            self._nonfinite_dev += bad.sum()  # read (one sync) only when asked
        return h, off

    @property
    def nonfinite_resets(self) -> int:
        """Model-step rows reset because their hidden state or prediction was not finite."""
        if self.worker is not None:
            return self.worker.nonfinite  # as of its last step (it started from our count)
        dev = 0 if self._nonfinite_dev is None else int(self._nonfinite_dev.item())
        return self._nonfinite + dev

    # -- reading ------------------------------------------------------------------------

    def snapshot(self) -> TickResult:
        """Latest prediction of every joined avatar that has one (for fan-out / resume)."""
        slots = np.flatnonzero(~np.isnan(self.last_t))
        return TickResult(
            self.ticks,
            slots,
            self._ids[slots],
            self.last_t[slots],
            self.last_pos[slots],
            self.last_off[slots],
            self.last_seq[slots],
            np.zeros(len(slots), dtype=bool),
        )

    def hidden(self, avatar: str) -> torch.Tensor:
        """Copy of an avatar's hidden state (layers, hidden). Raises KeyError if unknown."""
        slot = self._slot_of[avatar]
        if self.worker is not None:  # asks the worker (between two ticks only)
            return self.worker.hidden(self._take_journal(), slot)
        return self.pool.h[:, slot].detach().cpu().clone()
