"""TickEngine: every avatar's GRU state in one device tensor, one batched step per tick.

No asyncio, no sockets. The caller (the server's tick loop, a benchmark, a replay) does:

    slot = engine.join(avatar, room)   # a zeroed slot (`server.core.slots`)
    engine.submit(avatar, t, p, seq)   # checked; or `stage` for samples checked already
    result = engine.tick()             # one batched step for the avatars with new samples

Per tick the hot path is array code only: features for every pending slot at once (each
avatar's Kalman prior and, when the model takes them, its nearest neighbours in the same
room), the network's step on the device (`server.core.network_step`), then (by default)
the online blend of the network with the classical experts (`server.core.blend`: each
avatar is served whatever has been predicting it best). With no model (`model=None`) the
engine serves last-interval constant-velocity dead reckoning through the same path (the
"model off" comparison). A `TickResult` carries the tick's rows and a read-only view of
every slot's latest prediction (`server.core.tick_io`), which is what fan-out reads.

`swap_model` replaces the model between two ticks (hot reload), keeping avatars and, when
the state shape matches, their hidden states.

**Step worker.** `attach_worker` hands the compute (feature state, hidden states, model)
to a `server.serve.stepper.StepWorker`, a child process holding a copy of this engine;
this object keeps the membership, the pending samples and the last predictions, so
callers see no difference. `tick()` is `finish_tick(start_tick())`: `start_tick` takes the
batch (and ships it to a worker) and returns at once, `finish_tick` computes it or waits
for the worker's answer. Joins and leaves reach the worker as a journal with the next
request (both sides allocate slots the same way; the worker checks). A worker that dies
or fails is dropped (`finish_tick` raises); the engine then steps in-process again from
a reset state (hidden states zero, every avatar's next sample starts a new segment).
"""

from __future__ import annotations

import numpy as np
import torch

from server.core import blend as BL
from server.core import features as F
from server.core import neighbours as NB
from server.core.blend import BlendConfig, BlendState
from server.core.features import FeatureConfig, FeatureState
from server.core.model import LoadedModel, resolve_device
from server.core.network_step import NetworkStep, check_model, state_shape
from server.core.slots import HiddenStatePool, SlotTable
from server.core.tick_io import Predictions, StepBatch, TickResult

MAX_COORD = 1e6  # metres; positions beyond are rejected as corrupt


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
            check_model(model)
            self.device = resolve_device(device) if device != "auto" else model.device
            model.model.to(self.device).eval()
            model.device = self.device
            self.cfg = model.features
        else:
            self.device = resolve_device(device)
            self.cfg = features or FeatureConfig()
        self.model = model
        self.version = model.version if model is not None else "cv"
        layers, hidden = state_shape(model)
        self.horizons = np.asarray(self.cfg.horizons)
        H = len(self.horizons)
        capacity = max(1, int(capacity))
        self.pool = HiddenStatePool(layers, hidden, capacity, self.device)
        self.fstate = FeatureState(capacity)
        self.blend = blend
        if blend is not None and model is not None:
            BL.warm_up(self.horizons)  # compiled now, not in the first tick
        if model is not None and self.cfg.neighbours:
            NB.warm_up()
        bc = blend or BlendConfig()
        self.bstate = BlendState(capacity, self.horizons, bc.lane_dt, bc.max_lanes)
        # each slot's expert weights at its last step, averaged over the horizons (E,)
        self.last_weights = np.zeros((capacity, len(BL.EXPERTS)))
        self.table = SlotTable(capacity)  # who holds which slot, in which room
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
        self.last_clock = np.zeros(capacity)  # the last stepped sample's server-clock time
        self.ticks = 0
        self.last_features = np.zeros((0, self.cfg.n_features), np.float32)
        self.worker = None  # a server.stepper.StepWorker running the steps (attach_worker)
        self._journal: list[tuple] = []  # joins/leaves the worker has not been told of yet
        self.net = NetworkStep(self.device, self.horizons, self.cfg, capacity)

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
            check_model(model)
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
            and state_shape(model) == state_shape(self.model)
            and model.features == self.cfg
        ) or (model is None and self.model is None)
        self.model = model
        self.version = model.version if model is not None else "cv"
        self.bstate.clear(slice(None))  # what the old network earned is not the new one's
        self.bstate.clear_rooms(slice(None))
        if model is not None:
            self.cfg = model.features
            self.net.configure(self.cfg, self.capacity)
        if not keep:
            layers, hidden = state_shape(model)
            self.pool = HiddenStatePool(layers, hidden, self.capacity, self.device)
        return keep

    # -- membership -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.table.capacity

    def __len__(self) -> int:
        return len(self.table.slot_of)

    @property
    def pending(self) -> int:
        """Avatars with a new sample waiting for the next tick (the next step's batch size)."""
        return int(np.count_nonzero(self._pending))

    def live_slots(self) -> np.ndarray:
        """Slots of the joined avatars that have been stepped at least once."""
        return np.flatnonzero(self.table.live & ~np.isnan(self.last_t))

    def __contains__(self, avatar: str) -> bool:
        return avatar in self.table.slot_of

    def slot(self, avatar: str) -> int:
        """Slot of a joined avatar. Raises KeyError if it has not joined."""
        return self.table.slot_of[avatar]

    def join(self, avatar: str, group: object = None) -> int:
        """Give `avatar` a zeroed slot and return it. Raises KeyError if already joined.

        `group` (any hashable, e.g. the room name) scopes neighbours: an avatar's
        neighbours are the joined avatars of the same group.
        """
        if avatar in self.table.slot_of:
            raise KeyError(f"avatar {avatar!r} already joined")
        if self.table.full:
            self._grow(2 * self.capacity)
        slot, new_group = self.table.join(avatar, group)
        if new_group:  # a new room: its blend prior starts over
            self.bstate.clear_rooms(int(self.table.group[slot]))
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
        self.last_clock[slot] = 0.0
        return slot

    def leave(self, avatar: str) -> None:
        """Free `avatar`'s slot. Raises KeyError if it has not joined."""
        slot = self.table.leave(avatar)
        self._pending[slot] = False
        self.last_t[slot] = np.nan
        if self.worker is not None:
            self._journal.append(("leave", avatar))

    def _grow(self, capacity: int) -> None:
        old = self.capacity
        self.pool.grow(capacity)
        self.fstate.grow(capacity)
        self.bstate.grow(capacity)
        extra = capacity - old
        self.last_weights = np.concatenate([self.last_weights, np.zeros((extra, len(BL.EXPERTS)))])
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
        self.last_clock = np.concatenate([self.last_clock, np.zeros(extra)])
        self.table.grow(capacity)
        self.net.grow(capacity)

    # -- input --------------------------------------------------------------------------

    def submit(self, avatar: str, t: float, p, seq: int = 0) -> bool:
        """Queue a sample for the next tick; the newest per avatar wins.

        `p` is (x, y, z) or (x, y). Returns False (and keeps nothing) for a sample that
        is not finite, out of bounds, or not newer than the avatar's newest one.
        Raises KeyError if the avatar has not joined.
        """
        slot = self.table.slot_of[avatar]
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

    def stage(self, slot: int, t: float, p: tuple[float, ...], seq: int, clock: float) -> None:
        """Queue one sample the caller has checked: `t` and `p` ((x, y) or (x, y, z))
        finite, within +-MAX_COORD, `t` newer than the slot's newest (the server's path:
        the protocol checks the fields, `World` the order). The newest per slot wins.
        `clock`: its time on the server clock. May run while `finish_tick` runs in another
        thread (not `start_tick`)."""
        self._pending[slot] = True
        self._pt[slot] = t
        pp = self._pp[slot]
        pp[0], pp[1] = p[0], p[1]
        pp[2] = p[2] if len(p) > 2 else 0.0
        self._pseq[slot] = seq
        self._pclock[slot] = clock

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
            self._pclock[slots], self.table.ids[slots],
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
        slots, t, p, seq, clock = batch.slots, batch.t, batch.p, batch.seq, batch.clock
        if len(slots) == 0:
            H = len(self.horizons)
            return TickResult(
                batch.tick, slots, np.empty(0, dtype=object), np.empty(0), np.empty((0, 3)),
                np.empty((0, H, 3)), np.empty(0, dtype=np.int64), np.empty(0, dtype=bool),
                self.predictions(),
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
                live=self.table.live,
                group=self.table.group,
                clock=self._clock,
            )
            off = self.net.run(self.model, self.pool, slots, out)
            if self.blend is not None:
                groups = self.table.group[slots]
                off, w = BL.serve(self.bstate, self.blend, slots, t, p, out, off, groups)
                self.last_weights[slots] = w
            self.last_features, reset = out.x, out.reset  # model input of this tick's rows
        if batch.owners is not None and not (kept := self.table.ids[slots] == batch.owners).all():
            # left while the step ran (a thread's, a worker's): no prediction for a free
            # slot, nor the old avatar's for one given to a newcomer, whose state starts over
            if self.worker is None:
                for s in slots[~kept & np.not_equal(self.table.ids[slots], None)].tolist():
                    self.pool.zero(s), self.fstate.clear(s), self.bstate.clear(s)
            slots, t, p, seq, clock, off, reset = (
                a[kept] for a in (slots, t, p, seq, clock, off, reset)
            )
        self.last_t[slots] = t
        self.last_pos[slots] = p
        self.last_off[slots] = off
        self.last_seq[slots] = seq
        self.last_clock[slots] = clock
        return TickResult(
            batch.tick, slots, self.table.ids[slots], t, p, off, seq, reset, self.predictions()
        )

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
        self.net.nonfinite = worker.nonfinite  # its count so far (it started from ours)
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
        if not self.table.live[s].all() or self._pending[s].any():
            raise RuntimeError("a batch for slots that are not joined: the engines diverged")
        self._pending[s] = True
        self._pt[s], self._pp[s], self._pseq[s], self._pclock[s] = (
            batch.t, batch.p, batch.seq, batch.clock,
        )  # fmt: skip

    @property
    def nonfinite_resets(self) -> int:
        """Model-step rows reset because their hidden state or prediction was not finite."""
        if self.worker is not None:
            return self.worker.nonfinite  # as of its last step (it started from our count)
        return self.net.nonfinite

    # -- reading ------------------------------------------------------------------------

    def predictions(self) -> Predictions:
        """Every slot's latest prediction, read-only (see `Predictions`)."""
        return Predictions.of(
            t=self.last_t, clock=self.last_clock, pos=self.last_pos, off=self.last_off,
            seq=self.last_seq, weights=self.last_weights,
        )  # fmt: skip

    def snapshot(self) -> TickResult:
        """Latest prediction of every joined avatar that has one (for fan-out / resume)."""
        s = np.flatnonzero(~np.isnan(self.last_t))
        return TickResult(
            self.ticks, s, self.table.ids[s], self.last_t[s], self.last_pos[s],
            self.last_off[s], self.last_seq[s], np.zeros(len(s), dtype=bool), self.predictions(),
        )  # fmt: skip

    def hidden(self, avatar: str) -> torch.Tensor:
        """Copy of an avatar's hidden state (layers, hidden). Raises KeyError if unknown."""
        slot = self.table.slot_of[avatar]
        if self.worker is not None:  # asks the worker (between two ticks only)
            return self.worker.hidden(self._take_journal(), slot)
        return self.pool.h[:, slot].detach().cpu().clone()
