"""Fan-out: each tick, every member's frames from the tick's predictions. No asyncio.

`FanOut.run(rooms, result, server_time)` reads the tick's `TickResult` (its `latest`
view: every slot's newest prediction) and fills each member's `Outbox`, room by room:

- the **visible set**: the players with a prediction;
- the **records**: one packed record per visible player, for v1 viewers its newest
  prediction, for v2 viewers the path the downlink rule last sent
  (`server.core.downlink.DownlinkReckoner`: a record is due when the newest prediction
  is off that path, on the heartbeat, or new);
- the **views**: each viewer's area of interest (`server.core.interest.InterestGrid`,
  optionally refreshed a k-th of the rows per tick), a spectator's region;
- the **frames**: join/leave control frames for who entered or left a view, then one
  state frame of the records in view (v2: the due ones and the newcomers; none when
  nothing is due, except one empty frame per heartbeat, a clock).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from server.core import protocol as P
from server.core import state_frames
from server.core.downlink import DownlinkReckoner
from server.core.interest import InterestGrid, in_region
from server.core.members import Member, Room
from server.core.state_frames import StateFrames
from server.core.tick_io import TickResult


class FanOut:
    """The tick's frames for every member; counts what it sends (see the module docstring)."""

    def __init__(
        self,
        downlink: DownlinkReckoner,
        grid: InterestGrid,
        aoi_refresh: int = 1,
        spectator_cap: int = 1024,
    ) -> None:
        self.downlink = downlink
        self.grid = grid
        self.aoi_refresh = aoi_refresh
        self.spectator_cap = spectator_cap
        self.records_sent: dict[int, int] = {}  # protocol version -> records in state frames
        self.frames_skipped = 0  # v2 members given no state frame on a tick
        self.dr_resends = 0  # records due by the downlink rule
        state_frames.warm_up()  # the frame builder compiled (or loaded from numba's cache) now

    def run(self, rooms: Iterable[Room], result: TickResult, server_time: float) -> list[Member]:
        """Fill every member's outbox for this tick; returns the members with output.

        v1 members get every avatar of their view with its newest prediction. v2 members
        get only the records that are due by the downlink rule (`DownlinkReckoner`: off
        the path last sent, heartbeat, first path), plus the path last sent of every avatar
        that enters their view (all of it after a dropped frame: `Member.resync`), and no
        state frame when nothing is due, except one empty frame per heartbeat (a clock).
        """
        latest = result.latest
        H = latest.off.shape[1]
        dr = self.downlink
        sent = self.records_sent
        out: list[Member] = []
        for room in rooms:
            players = [m for m in room.players.values() if m.slot >= 0]
            slots = np.fromiter((m.slot for m in players), dtype=np.int64, count=len(players))
            live = ~np.isnan(latest.t[slots])  # players with a prediction are visible
            vis = [m for m, ok in zip(players, live, strict=True) if ok]
            mark = np.zeros(len(vis), dtype=bool)  # scratch for the v2 rows that entered
            vslots = slots[live]
            pos, anchor = latest.pos[vslots], latest.clock[vslots]
            off, seq = latest.off[vslots], latest.seq[vslots]
            due = dr.due(vslots, anchor, pos, server_time, off)
            dr.commit(vslots[due], anchor[due], pos[due], off[due], seq[due], server_time)
            self.dr_resends += int(due.sum())
            sent_off = dr.off[vslots]
            dims = 3 if (np.abs(off[..., 2]) >= 5e-4).any() else 2
            if dims == 2 and (np.abs(sent_off[..., 2]) >= 5e-4).any():
                dims = 3
            handles = np.fromiter((m.handle for m in vis), dtype=np.int64, count=len(vis))
            versions = {m.version for m in players} | {m.version for m in room.spectators}
            rec1 = rec2 = None
            if 1 in versions:  # the newest prediction of everyone
                rec1 = P.pack_records(handles, server_time - anchor, seq, pos, off, dims)
            if 2 in versions:  # the path each viewer was last sent
                rec2 = P.pack_records(
                    handles,
                    server_time - dr.anchor[vslots],
                    dr.seq[vslots],
                    dr.pos[vslots],
                    sent_off,
                    dims,
                )
            framer = P.StateFramer(result.tick, server_time, H, dims)
            uids = np.fromiter((m.uid for m in vis), dtype=np.int64, count=len(vis))
            indptr, indices = self._views(room, pos, uids, result.tick)
            # One gather for every viewer of the room and every viewer's frame built from
            # it in one pass (`StateFrames`). v2: only the due rows.
            size = P.record_dtype(H, dims).itemsize
            bounds = indptr.tolist()
            if rec1 is not None:
                frames1 = StateFrames(framer, _rows(rec1, size)[indices], indptr)
            if rec2 is not None:
                due_flat = due[indices]
                cum_due = np.zeros(len(indices) + 1, dtype=np.int64)
                np.cumsum(due_flat, out=cum_due[1:])
                frames2 = StateFrames(framer, _rows(rec2, size)[indices[due_flat]], cum_due[indptr])
            view_uids = uids[indices]
            # A view that did not change since the last tick needs no join/leave diff: one
            # signature per viewer (a sum of hashed uids) tells which did.
            cum = np.zeros(len(indices) + 1, dtype=np.uint64)
            np.cumsum(_mix(view_uids), out=cum[1:])
            sigs = (cum[indptr[1:]] - cum[indptr[:-1]]).tolist()
            rows = (np.cumsum(live) - 1).tolist()  # each player's row of vis (where live)
            quiet = self.downlink.heartbeat - 1e-9  # a v2 viewer's longest wait for a frame
            extra: list[int] = []  # positions in `indices` a v2 viewer gets beyond the due
            later: list[tuple[Member, int]] = []  # v2 viewers whose frame takes them
            for m, ok, i in zip(players, live.tolist(), rows, strict=True):
                if m.detached_at is not None:  # no connection: visible to others only
                    continue
                box = m.outbox
                if not ok:  # no position yet: an empty view
                    if m.seen:
                        self._diff(m, [], [], vis)
                    m.view_sig = -1
                    self._frame(m, framer, 0, b"", server_time)
                else:
                    a, b = bounds[i], bounds[i + 1]
                    entered: list[int] = []
                    if sigs[i] != m.view_sig or b - a != len(m.seen):
                        entered = self._diff(m, view_uids[a:b].tolist(), indices[a:b].tolist(), vis)
                        m.view_sig = sigs[i]
                    if m.version == 1:
                        box.state = frames1.frame(i)
                        m.last_state = server_time
                        sent[1] = sent.get(1, 0) + b - a
                    elif entered or m.resync:  # + who entered its view (all, after a drop)
                        if m.resync:
                            m.resync = False
                            extra.extend(range(a, b))
                        else:
                            extra.extend([a + j for j in entered])
                        if b == a and server_time - m.last_state < quiet:
                            self.frames_skipped += 1
                        else:
                            later.append((m, i))
                            m.last_state = server_time
                            out.append(m)  # its frame comes below
                            continue
                    elif frames2.counts[i] or server_time - m.last_state >= quiet:
                        box.state = frames2.frame(i)
                        m.last_state = server_time
                        sent[2] = sent.get(2, 0) + frames2.counts[i]
                    else:
                        self.frames_skipped += 1
                if box.state is not None or box.controls:
                    out.append(m)
            if later:  # one more pass: the due rows and the extra ones
                pick = due_flat.copy()
                pick[extra] = True
                cum_pick = np.zeros(len(indices) + 1, dtype=np.int64)
                np.cumsum(pick, out=cum_pick[1:])
                frames3 = StateFrames(framer, _rows(rec2, size)[indices[pick]], cum_pick[indptr])
                for m, i in later:
                    m.outbox.state = frames3.frame(i)
                    sent[2] = sent.get(2, 0) + frames3.counts[i]
            for m in room.spectators:
                idx = in_region(pos, m.region, self.spectator_cap)
                in_view = idx.tolist()
                entered = [in_view[j] for j in self._diff(m, uids[idx].tolist(), in_view, vis)]
                if m.version == 1:
                    self._frame(m, framer, len(idx), rec1[idx].tobytes(), server_time)
                else:
                    rows = self._v2_rows(m, idx, due, entered, mark)
                    self._frame(m, framer, len(rows), rec2[rows].tobytes(), server_time)
                if m.outbox.state is not None or m.outbox.controls:
                    out.append(m)
        return out

    @staticmethod
    def _v2_rows(
        m: Member, view: np.ndarray, due: np.ndarray, entered: list[int], mark: np.ndarray
    ) -> np.ndarray:
        """The rows of `view` a v2 member gets: the due ones and those that just entered
        (every one after a dropped frame). `mark`: all False, one per visible row (left so)."""
        if m.resync:
            m.resync = False
            return view
        pick = due[view]
        if entered:
            mark[entered] = True
            pick |= mark[view]
            mark[entered] = False
        return view[pick]

    def _frame(
        self, m: Member, framer: P.StateFramer, n: int, records: bytes | memoryview, now: float
    ) -> None:
        """Queue the state frame of `n` records for `m`; for a v2 member an empty one only
        once per heartbeat (the rest are skipped, and counted)."""
        if n == 0 and m.version >= 2 and now - m.last_state < self.downlink.heartbeat - 1e-9:
            self.frames_skipped += 1
            return
        m.outbox.state = framer.frame(n, records)
        m.last_state = now
        self.records_sent[m.version] = self.records_sent.get(m.version, 0) + n

    def _views(
        self, room: Room, pos: np.ndarray, uids: np.ndarray, tick: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """CSR views of every visible player (rows of `pos`). With aoi_refresh k > 1 each
        view is recomputed every k-th tick, a k-th of the rows per tick (so no tick pays
        for all); a change in who is visible recomputes every row at once."""
        k, n = self.aoi_refresh, len(uids)
        key = uids.tobytes()
        if k == 1 or n == 0 or room.aoi_key != key:
            indptr, indices = self.grid.query(pos)
            if k > 1:  # kept padded, one row per viewer, so a share of them is replaced at once
                room.aoi_key = key
                room.aoi_views = np.full((n, self.grid.cap), -1, dtype=np.int64)
                room.aoi_lens = _fill(room.aoi_views, np.arange(n), indptr, indices)
            return indptr, indices
        views, lens = room.aoi_views, room.aoi_lens
        rows = np.arange(tick % k, n, k)
        if len(rows):
            sub_ptr, sub_idx = self.grid.query(pos, rows)
            views[rows] = -1
            lens[rows] = _fill(views, rows, sub_ptr, sub_idx)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        return indptr, views[np.arange(views.shape[1]) < lens[:, None]]

    @staticmethod
    def _diff(m: Member, now_uids: list[int], rows: list[int], vis: list[Member]) -> list[int]:
        """Queue leave / join frames so `m.seen` becomes `now_uids` (their rows of `vis`:
        `rows`); returns the positions in `now_uids` of those that joined."""
        seen = m.seen
        current = set(now_uids)
        entered: list[int] = []
        if current != seen.keys():
            gone = [u for u in seen if u not in current]
            if gone:
                m.outbox.controls.append(
                    P.encode_leave([seen[u][1] for u in gone], [seen[u][0] for u in gone])
                )
                for u in gone:
                    del seen[u]
            entered = [j for j, u in enumerate(now_uids) if u not in seen]
            if entered:
                new = [vis[rows[j]] for j in entered]
                for a in new:
                    seen[a.uid] = (a.handle, a.avatar)
                m.outbox.controls.append(
                    P.encode_join([a.avatar for a in new], [a.handle for a in new])
                )
        return entered


def _mix(uids: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each uid (splitmix64's finaliser), for order-free view signatures."""
    z = uids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _rows(records: np.ndarray, size: int) -> np.ndarray:
    """Packed records as (n, size) bytes, without copying (through a raw view: a byte view
    of the structured array itself has numpy check its fields on every call)."""
    return records.view(f"V{size}").view(np.uint8).reshape(-1, size)


def _fill(
    views: np.ndarray, rows: np.ndarray, indptr: np.ndarray, indices: np.ndarray
) -> np.ndarray:
    """Write CSR views (one per entry of `rows`) into the padded rows `rows` of `views`;
    returns their lengths."""
    lens = np.diff(indptr)
    at = np.arange(len(indices)) - np.repeat(indptr[:-1], lens)  # place within its row
    views[np.repeat(rows, lens), at] = indices
    return lens
