"""server.core.state_frames: a room's state frames built at once equal `StateFramer.frame`
byte for byte, at every msgpack size boundary of the count and the records."""

from __future__ import annotations

import numpy as np
import pytest

from server.core import protocol as P
from server.core.state_frames import StateFrames


@pytest.mark.parametrize("size", [1, 44, 300])
def test_each_viewers_frame_is_the_framers(size):
    rng = np.random.default_rng(size)
    # record counts around the uint and bin boundaries (127/128, 255/256, 65535/65536 bytes)
    counts = [0, 1, 2, 127, 128, 255, 256, 300, 0, 1500, 65535 // size, 65536 // size + 1]
    bounds = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=bounds[1:])
    records = rng.integers(0, 256, (int(bounds[-1]), size), dtype=np.uint8)
    framer = P.StateFramer(tick=70000, server_time=12.5, horizons=10, dims=3)
    frames = StateFrames(framer, records, bounds)
    assert frames.counts == counts
    for r, n in enumerate(counts):
        want = framer.frame(n, records[bounds[r] : bounds[r + 1]].tobytes())
        assert frames.frame(r) == want


def test_a_frame_decodes_as_a_state_frame():
    dt = P.record_dtype(2, 2)
    rec = P.pack_records(
        np.array([3, 4]), np.zeros(2), np.array([7, 8]), np.zeros((2, 3)), np.ones((2, 2, 3)), 2
    )
    rows = rec.view(f"V{dt.itemsize}").view(np.uint8).reshape(-1, dt.itemsize)
    frames = StateFrames(P.StateFramer(5, 1.0, 2, 2), rows, np.array([0, 2, 2]))
    st = P.decode_server(frames.frame(0))
    assert isinstance(st, P.State) and st.tick == 5 and st.seq.tolist() == [7, 8]
    assert len(P.decode_server(frames.frame(1))) == 0
