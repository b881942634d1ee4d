"""`bench/hostile_wire.py`: the bench's frames are what they say."""

import msgpack

from server.core import protocol as P
from tests.benches import load

load("hostile.py")  # puts bench/ on the path for its parts

import hostile_wire  # noqa: E402


def test_padded_is_a_well_formed_pos_of_exactly_its_size():
    for size in (60, 255, 256, 257, 1025, 4097):
        frame = hostile_wire.padded(size)
        assert len(frame) == size
        assert isinstance(P.decode_client(frame, max_size=size), P.Pos)
    assert len(hostile_wire.padded(65_537)) == 65_537  # over the hard limit: its size only


def test_frames_decode_as_sent():
    assert P.decode_client(hostile_wire.hello("a")) == P.Hello(room="lobby", avatar="a", v=1)
    msg = P.decode_client(hostile_wire.pos(3, (1.0, 2.0, 0.0), 1.5))
    assert (msg.seq, msg.t, msg.p) == (3, 1.5, (1.0, 2.0, 0.0))
    assert msgpack.unpackb(hostile_wire.raw_pos(seq=-1))["seq"] == -1
