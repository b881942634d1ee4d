"""Which avatar holds which engine slot, each slot's group (room), and the hidden states.

A slot is a row of the engine's per-avatar arrays. `SlotTable` hands out the lowest free
slot at a join and takes it back at a leave; groups (any hashable, e.g. a room name) get
small int ids, reused once a group empties. `HiddenStatePool` holds every slot's
recurrent state on the device.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch


class SlotTable:
    """Slots and groups of the joined avatars (grown by the engine when full)."""

    def __init__(self, capacity: int) -> None:
        self.ids = np.empty(capacity, dtype=object)  # slot -> avatar id (None: free)
        self.slot_of: dict[str, int] = {}
        self.live = np.zeros(capacity, dtype=bool)  # joined slots (neighbour candidates)
        self.group = np.zeros(capacity, dtype=np.int64)  # group id of each slot
        self._group_ids: dict[object, int] = {}  # group -> id, while it has avatars
        self._group_size: dict[int, int] = {}
        self._free_groups: list[int] = []  # ids of emptied groups, reused (ids stay small)
        self._group_of_id: dict[int, object] = {}
        self._free = list(range(capacity))  # min-heap: lowest free slot first

    @property
    def capacity(self) -> int:
        return len(self.ids)

    @property
    def full(self) -> bool:
        """No free slot: grow before the next join."""
        return not self._free

    def join(self, avatar: str, group: object) -> tuple[int, bool]:
        """Give `avatar` the lowest free slot in `group`; returns (slot, whether the group
        is new). Raises KeyError if it holds a slot already, IndexError when `full`."""
        if avatar in self.slot_of:
            raise KeyError(f"avatar {avatar!r} already joined")
        slot = heapq.heappop(self._free)
        self.slot_of[avatar] = slot
        self.ids[slot] = avatar
        self.live[slot] = True
        gid = self._group_ids.get(group)
        new = gid is None
        if new:
            gid = self._free_groups.pop() if self._free_groups else len(self._group_ids)
            self._group_ids[group] = gid
            self._group_of_id[gid] = group
        self._group_size[gid] = self._group_size.get(gid, 0) + 1
        self.group[slot] = gid
        return slot, new

    def leave(self, avatar: str) -> int:
        """Free `avatar`'s slot and return it. Raises KeyError if it holds none."""
        slot = self.slot_of.pop(avatar)
        self.ids[slot] = None
        self.live[slot] = False
        gid = int(self.group[slot])
        self._group_size[gid] -= 1
        if not self._group_size[gid]:  # the group emptied: its id is free again
            del self._group_size[gid], self._group_ids[self._group_of_id.pop(gid)]
            self._free_groups.append(gid)
        heapq.heappush(self._free, slot)
        return slot

    def grow(self, capacity: int) -> None:
        """Add free slots up to `capacity`."""
        old = self.capacity
        extra = capacity - old
        self.ids = np.concatenate([self.ids, np.empty(extra, dtype=object)])
        self.live = np.concatenate([self.live, np.zeros(extra, dtype=bool)])
        self.group = np.concatenate([self.group, np.zeros(extra, dtype=np.int64)])
        for s in range(old, capacity):
            heapq.heappush(self._free, s)


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
