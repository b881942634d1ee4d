"""server.core.pos_codec: the msgpack pos shortcut agrees with the field checks; the binary pos."""

from __future__ import annotations

import math

import msgpack
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from server.core import field_checks as C
from server.core import pos_codec as PC
from server.core import protocol as P


def pk(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


_COORD = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-P.MAX_COORD * 1.01, P.MAX_COORD * 1.01),
    st.sampled_from(
        [P.MAX_COORD, -P.MAX_COORD, 0.0, -0.0, 1.5 * P.MAX_COORD, -1.5 * P.MAX_COORD]
        + [math.nextafter(P.MAX_COORD, math.inf), math.nextafter(-P.MAX_COORD, -math.inf)]
    ),
    st.integers(-(2**60), 2**60),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)


_EDGES = [
    0.0, -0.0, 1.0, P.MAX_COORD, -P.MAX_COORD, 1e12, -1e12, 1.5e12, -1.5e12,
    math.nextafter(P.MAX_COORD, math.inf), math.nextafter(-P.MAX_COORD, -math.inf),
    1.5 * P.MAX_COORD, -1.5 * P.MAX_COORD, math.inf, -math.inf, math.nan, 3, True, None, "1",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_COORD, min_size=0, max_size=4),
    st.one_of(
        st.floats(),
        st.sampled_from([1e12, -1e12, math.nextafter(1e12, 2e12), -1.5e12]),
        st.integers(-(2**62), 2**62),
        st.none(),
    ),
    st.one_of(st.integers(-5, 2**33), st.sampled_from([P.MAX_SEQ, P.MAX_SEQ + 1]), st.floats()),
    st.one_of(st.none(), st.floats(), st.just("absent")),
)
def test_the_fast_pos_path_accepts_and_decodes_exactly_what_the_checked_one_does(p, t, seq, yaw):
    # decode_client takes a shortcut for the common pos; every map, hostile ones included,
    # must come out as the field-by-field checks decide: the same Pos, or the same error
    d = {"type": "pos", "p": p, "t": t, "seq": seq}
    if yaw != "absent":
        d["yaw"] = yaw

    def outcome(decode):
        try:
            return decode()
        except P.ProtocolError as e:
            return ("error", e.code)

    fast = outcome(lambda: P.decode_client(pk(d)))
    checked = outcome(lambda: PC.checked_pos(C.unpack_map(pk(d), {})))
    assert fast == checked


def _outcome(d: dict):
    try:
        fast = P.decode_client(pk(d))
    except P.ProtocolError as e:
        fast = ("error", e.code)
    try:
        checked = PC.checked_pos(C.unpack_map(pk(d), {}))
    except P.ProtocolError as e:
        checked = ("error", e.code)
    return fast, checked


@pytest.mark.parametrize("field", ["x", "y", "z", "t", "seq", "yaw"])
@pytest.mark.parametrize("value", [*_EDGES, P.MAX_SEQ, P.MAX_SEQ + 1, -1], ids=repr)
def test_the_fast_pos_path_at_every_edge_of_each_field(field, value):
    p = {"x": 1.0, "y": 2.0, "z": 3.0}
    d = {"type": "pos", "t": 5.0, "seq": 7}
    if field in p:
        p[field] = value
    else:
        d[field] = value
    d["p"] = [p["x"], p["y"], p["z"]]
    fast, checked = _outcome(d)
    assert fast == checked
    d["p"] = d["p"][:2]  # (x, y): z is 0
    fast, checked = _outcome(d)
    assert fast == checked


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=60))
def test_the_binary_decoder_raises_only_protocol_errors(data):
    for frame in (data, bytes([P.POS_BINARY_TAG]) + data):
        try:
            pos = P.decode_pos_binary(frame)
        except P.ProtocolError:
            continue
        assert len(frame) == P.POS_BINARY.size and P.encode_pos_binary(pos) == frame
        assert all(abs(c) <= P.MAX_COORD for c in pos.p) and abs(pos.t) <= 1e12


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, P.MAX_SEQ),
    st.floats(-1e12, 1e12),
    st.tuples(*[st.floats(-P.MAX_COORD, P.MAX_COORD)] * 3),
)
def test_binary_pos_round_trips_exactly(seq, t, p):
    frame = P.encode_pos_binary(P.Pos(seq=seq, t=t, p=p))
    assert len(frame) == 37 and frame[0] == P.POS_BINARY_TAG
    assert P.decode_pos_binary(frame) == P.Pos(seq=seq, t=t, p=p)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"", "bad_message"),
        (bytes(37), "bad_message"),  # the right length, the wrong tag
        (P.POS_BINARY.pack(P.POS_BINARY_TAG, 1, math.inf, 0, 0, 0), "non_finite"),
        (P.POS_BINARY.pack(P.POS_BINARY_TAG, 1, 0, 0, math.nan, 0), "non_finite"),
        (P.POS_BINARY.pack(P.POS_BINARY_TAG, 1, 0, 0, 0, -1.5e6), "out_of_range"),
        ("a str", "bad_message"),
    ],
)
def test_binary_pos_refusals(frame, code):
    with pytest.raises(P.ProtocolError) as e:
        P.decode_pos_binary(frame)
    assert e.value.code == code


def _general(frame: bytes):
    """What the general decoder makes of a frame: the map, then the pos shortcut or the
    field checks (the path `decode_client` takes when the byte reader declines)."""
    try:
        d = C.unpack_map(frame, {})
        if d["type"] != "pos":
            return ("other",)
        return PC.fast_pos(d) or PC.checked_pos(d)
    except P.ProtocolError as e:
        return ("error", e.code)


def _decoded(frame: bytes):
    try:
        msg = P.decode_client(frame)
    except P.ProtocolError as e:
        return ("error", e.code)
    return msg if isinstance(msg, P.Pos) else ("other",)


_VALUE = st.one_of(
    st.floats(), st.sampled_from(_EDGES[:-3]), st.integers(-(2**40), 2**40), st.none()
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(_VALUE, min_size=1, max_size=4),
    _VALUE,
    st.one_of(st.integers(-(2**33), 2**33), st.sampled_from([P.MAX_SEQ, P.MAX_SEQ + 1]), _VALUE),
    st.permutations(["type", "seq", "t", "p"]),
    st.booleans(),
)
def test_the_byte_reader_decodes_exactly_what_the_general_decoder_does(p, t, seq, keys, single):
    # the clients' layout (type, seq, t, p; float64) is read from the bytes; any other
    # order, width or value must come out as the general decoder has it
    values = {"type": "pos", "seq": seq, "t": t, "p": p}
    try:
        frame = msgpack.packb({k: values[k] for k in keys}, use_single_float=single)
    except OverflowError:  # beyond float32: no such frame
        assume(False)
    assert _decoded(frame) == _general(frame)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_mangled_client_pos_decodes_as_the_general_decoder_has_it(data):
    frame = bytearray(P.encode_client(P.Pos(seq=data.draw(st.integers(0, 2**32 - 1)),
                                             t=12.5, p=(1.0, -2.0, 3.0))))  # fmt: skip
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame) + 2))
    mangled = bytes(frame[:cut]) + b"\x00" * max(0, cut - len(frame))
    assert _decoded(mangled) == _general(mangled)


def test_the_byte_reader_takes_the_clients_frames():
    for seq in (0, 127, 128, 255, 256, 65535, 65536, P.MAX_SEQ):
        for p in ((1.5, -2.5, 3.5), (1.5, -2.5)):
            frame = P.encode_client(P.Pos(seq=seq, t=-7.25, p=(*p, 0.0)[:3]))
            if len(p) == 2:
                frame = msgpack.packb({"type": "pos", "seq": seq, "t": -7.25, "p": list(p)})
            pos = PC.pos_from_msgpack(frame)
            assert pos == _general(frame) and pos is not None and pos.seq == seq
