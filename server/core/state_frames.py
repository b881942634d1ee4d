"""The `state` frames of a whole room at once (numba): one buffer, one frame per viewer.

Fan-out gives every viewer of a room a slice of one gather of packed records (its view,
or for a v2 viewer its due records), in viewer order. `StateFrames(framer, records,
bounds)` writes each viewer's whole frame (the shared msgpack bytes of
`server.core.protocol.StateFramer`, the record count, the `bin` header, the records) into
one buffer in one compiled pass, so a viewer's frame is one slice of it: byte-identical
to `StateFramer.frame`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from server.core import protocol as P


class StateFrames:
    """One tick's state frames for the viewers of a room: `frame(r)` is row r's."""

    __slots__ = ("_buf", "_offsets", "counts")

    def __init__(self, framer: P.StateFramer, records: np.ndarray, bounds: np.ndarray) -> None:
        """`records` (m, size) uint8: packed records, viewer after viewer; viewer r's are
        rows bounds[r]:bounds[r + 1] (`bounds` (viewers + 1,) int64, non-decreasing)."""
        head = np.frombuffer(framer.head, np.uint8)
        tail = np.frombuffer(framer.tail, np.uint8)
        buf, offsets = _build(head, tail, records.reshape(-1), bounds, records.shape[1])
        self._buf = buf.tobytes()
        self._offsets = offsets.tolist()
        self.counts = np.diff(bounds).tolist()  # records in each viewer's frame

    def frame(self, r: int) -> bytes:
        """Viewer row r's frame."""
        return self._buf[self._offsets[r] : self._offsets[r + 1]]


@njit(cache=True, nogil=True)
def _size_len(n, fixint):
    """Bytes of msgpack's header for n: a positive fixint (where allowed), or a tag and
    8, 16 or 32 bits."""
    return 1 if fixint and n < 128 else 2 if n < 256 else 3 if n < 65536 else 5


@njit(cache=True, nogil=True)
def _put_size(buf, at, n, tag8, fixint):
    """Write that header for n at `at` (tags tag8, tag8 + 1, tag8 + 2 for 8, 16, 32 bits:
    uint 0xCC.., bin 0xC4..); returns the index after it."""
    if fixint and n < 128:
        buf[at] = n
        return at + 1
    width = 1 if n < 256 else 2 if n < 65536 else 4
    buf[at] = tag8 + (0 if width == 1 else 1 if width == 2 else 2)
    for q in range(width):  # big-endian
        buf[at + 1 + q] = (n >> (8 * (width - 1 - q))) & 0xFF
    return at + 1 + width


@njit(cache=True, nogil=True)
def _build(head, tail, records, bounds, size):
    """(buffer uint8, offsets (viewers + 1,) int64): frame r = head, msgpack uint of its
    record count, tail, msgpack bin header, its records."""
    m = len(bounds) - 1
    offsets = np.empty(m + 1, np.int64)
    offsets[0] = 0
    for r in range(m):
        n = bounds[r + 1] - bounds[r]
        nb = n * size
        offsets[r + 1] = (
            offsets[r] + len(head) + _size_len(n, True) + len(tail) + _size_len(nb, False) + nb
        )
    buf = np.empty(offsets[m], np.uint8)
    for r in range(m):
        at = offsets[r]
        buf[at : at + len(head)] = head
        n = bounds[r + 1] - bounds[r]
        at = _put_size(buf, at + len(head), n, 0xCC, True)  # the count: fixint or uint
        buf[at : at + len(tail)] = tail
        nb = n * size
        at = _put_size(buf, at + len(tail), nb, 0xC4, False)  # the records' bin header
        buf[at : at + nb] = records[bounds[r] * size : bounds[r + 1] * size]
    return buf, offsets


def warm_up() -> None:
    """Compile `_build` now (or load it from numba's cache: fast)."""
    framer = P.StateFramer(0, 0.0, 1, 2)
    StateFrames(framer, np.zeros((1, 4), np.uint8), np.array([0, 1], np.int64))
