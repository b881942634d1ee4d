"""Wire protocol (server/core/protocol.py): round trips, sizes, every rejection, and fuzzing.

Pure and fast: no sockets, no torch.
"""

from __future__ import annotations

import importlib.util
import math
import time
import tracemalloc
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.core import protocol as P

ROOT = Path(__file__).resolve().parents[1]
CLIENT_TYPES = (P.Hello, P.Pos, P.Bye, P.View, P.Ping)
SERVER_TYPES = (P.Welcome, P.State, P.Join, P.Leave, P.Error, P.Pong)
H10 = tuple(round(0.1 * (k + 1), 1) for k in range(10))


def pk(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def rejects(data, code: str, **kw) -> P.ProtocolError:
    with pytest.raises(P.ProtocolError) as ei:
        P.decode_client(data, **kw)
    assert ei.value.code == code, (ei.value.code, str(ei.value))
    assert ei.value.close_code == P.ERROR_CODES[code]
    assert str(ei.value)  # a message for humans
    return ei.value


# -- client messages round-trip ------------------------------------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        P.Hello(room="lobby", avatar="alice"),
        P.Hello(room="lobby"),  # spectator, whole room
        P.Hello(room="lobby", region=(-10.0, -5.5, 10.0, 5.5)),  # spectator with a region
        P.Hello(room="lobby", avatar="alice", token="s3cret", resume="r-123"),
        P.Hello(room="a" * 64, avatar="Zoë the 🙂 avatar"),  # 64 characters, any printable text
        P.Pos(seq=17, t=12.345, p=(3.5, -1.25, 0.5)),
        P.Pos(seq=0, t=-1e12, p=(-1e6, 1e6, 0.0), yaw=-3.14),
        P.Pos(seq=P.MAX_SEQ, t=1e12, p=(0.0, 0.0, 0.0), yaw=1000.0),
        P.Bye(),
        P.View(region=(0.0, 0.0, 50.0, 25.0)),
        P.View(region=None),
        P.Ping(t=123.456),
    ],
)
def test_client_messages_round_trip(msg):
    data = P.encode_client(msg)
    assert P.decode_client(data) == msg
    assert P.decode_client(bytearray(data)) == msg
    assert P.decode_client(memoryview(data)) == msg


def test_client_optional_fields_are_omitted():
    d = msgpack.unpackb(P.encode_client(P.Hello(room="lobby")))
    assert d == {"type": "hello", "v": 2, "room": "lobby"}
    d = msgpack.unpackb(P.encode_client(P.Pos(seq=1, t=2.0, p=(1.0, 2.0, 3.0))))
    assert d == {"type": "pos", "seq": 1, "t": 2.0, "p": [1.0, 2.0, 3.0]}
    with pytest.raises(TypeError):
        P.encode_client(P.Pong(1.0, 2.0))


def test_pos_two_element_p_means_z_zero_and_ints_and_float32_are_numbers():
    m = P.decode_client(pk({"type": "pos", "seq": 3, "t": 1, "p": [1, 2]}))
    assert m == P.Pos(seq=3, t=1.0, p=(1.0, 2.0, 0.0))
    assert all(type(v) is float for v in (m.t, *m.p))
    f32 = msgpack.packb(
        {"type": "pos", "seq": 3, "t": 1.5, "p": [0.25, 2.5], "yaw": 0.5}, use_single_float=True
    )
    assert P.decode_client(f32) == P.Pos(seq=3, t=1.5, p=(0.25, 2.5, 0.0), yaw=0.5)


def test_unknown_keys_are_ignored_and_null_optionals_are_absent():
    m = P.decode_client(
        pk({"type": "hello", "v": 1, "room": "r", "avatar": None, "token": None, "x": [1]})
    )
    assert m == P.Hello(room="r", v=1)
    assert (
        P.decode_client(pk({"type": "pos", "seq": 1, "t": 0, "p": [0, 0], "yaw": None})).yaw is None
    )
    assert P.decode_client(pk({"type": "view"})) == P.View(None)
    assert P.decode_client(pk({"type": "bye", "reason": "done"})) == P.Bye()


# -- server messages round-trip ------------------------------------------------------------


def test_server_messages_round_trip():
    w = P.Welcome(
        avatar="alice",
        room="lobby",
        tick_hz=20.0,
        horizons=H10,
        model="gru-a2",
        server_time=1767225612.5,
        resume="tok",
        handle=3,
    )
    assert P.decode_server(P.encode_welcome(w)) == w
    spectator = P.Welcome(None, "lobby", 30.0, (0.1, 0.2), "cv", 5.0, "t2", handle=None)
    assert P.decode_server(P.encode_welcome(spectator)) == spectator
    assert P.decode_server(P.encode_join(["a", "b"], [1, 65535])) == P.Join(("a", "b"), (1, 65535))
    assert P.decode_server(P.encode_leave(["a"], [1])) == P.Leave(("a",), (1,))
    assert P.decode_server(P.encode_join([], [])) == P.Join((), ())
    assert P.decode_server(P.encode_error("too_slow", "read faster")) == P.Error(
        "too_slow", "read faster"
    )
    assert P.decode_server(P.encode_pong(12.5, 99.25)) == P.Pong(12.5, 99.25)


def _state(
    n: int, H: int = 10, dims: int = 2, seed: int = 0, tick: int = 7, server_time: float = 100.0
):
    rng = np.random.default_rng(seed)
    handle = rng.integers(0, 65536, n)
    age = rng.uniform(0, 0.2, n)
    seq = rng.integers(0, 2**32, n)
    pos = rng.uniform(-1e3, 1e3, (n, 3))
    off = rng.uniform(-30, 30, (n, H, 3))
    rec = P.pack_records(handle, age, seq, pos, off, dims)
    frame = P.encode_state(tick, server_time, rec, n, H, dims)
    return frame, dict(handle=handle, age=age, seq=seq, pos=pos, off=off)


@pytest.mark.parametrize("dims", [2, 3])
def test_state_round_trip(dims):
    frame, x = _state(40, dims=dims, tick=2**40, server_time=1767225612.123456)
    s = P.decode_server(frame)
    assert isinstance(s, P.State) and len(s) == 40
    assert s.tick == 2**40 and s.server_time == 1767225612.123456 and s.extra == {}
    assert s.handle.dtype == np.uint16 and np.array_equal(s.handle, x["handle"])
    assert s.seq.dtype == np.uint32 and np.array_equal(s.seq, x["seq"])
    np.testing.assert_array_equal(s.age, np.rint(x["age"] * 1000) / 1000)
    assert s.pos.dtype == np.float32
    np.testing.assert_array_equal(s.pos, x["pos"].astype(np.float32))
    assert s.offsets.shape == (40, 10, 3) and s.offsets.dtype == np.float32
    err = np.abs(s.offsets[..., :dims].astype(np.float64) - x["off"][..., :dims])
    assert err.max() <= 0.0005 + 1e-5  # rounded to the millimetre (plus float32)
    if dims == 2:
        assert not s.offsets[..., 2].any()  # dims 2: z offsets are zero, whatever came in
    else:
        assert np.abs(s.offsets[..., 2]).max() > 1


def test_state_quantisation_edges():
    ages = np.array([0.0, 0.0004, 0.0006, 0.1234, 65.535, 65.6, 1e9, -1.0])
    seqs = np.array([0, 2**32 - 1, 2**32, 2**32 + 5, 2**33 + 9, 1, 2, 3])
    off = np.zeros((8, 2, 3))
    off[:, 0, 0] = [40.0, -40.0, 32.767, -32.767, 0.0004, -0.0004, 0.0016, 1.2345]
    pos = np.full((8, 3), 0.1)
    rec = P.pack_records(np.arange(8) * 9000, ages, seqs, pos, off, 3)
    s = P.decode_server(P.encode_state(1, 0.0, rec, 8, 2, 3))
    np.testing.assert_array_equal(s.age, [0, 0, 0.001, 0.123, 65.535, 65.535, 65.535, 0])
    assert s.seq.tolist() == [0, 2**32 - 1, 0, 5, 9, 1, 2, 3]  # wraps at 2**32
    np.testing.assert_allclose(
        s.offsets[:, 0, 0], [32.767, -32.767, 32.767, -32.767, 0, 0, 0.002, 1.234], atol=1e-6
    )
    assert s.pos[0, 0] == np.float32(0.1)
    assert s.handle.tolist() == [i * 9000 for i in range(8)]


@pytest.mark.parametrize("dims", [2, 3])
def test_state_with_no_records(dims):
    empty = np.zeros(0, dtype=np.int64)
    rec = P.pack_records(empty, np.zeros(0), empty, np.zeros((0, 3)), np.zeros((0, 10, 3)), dims)
    s = P.decode_server(P.encode_state(5, 1.0, rec, 0, 10, dims))
    assert len(s) == 0 and s.offsets.shape == (0, 10, 3) and s.pos.shape == (0, 3)
    assert P.decode_server(P.encode_state(5, 1.0, b"", 0, 10, dims)).tick == 5


def test_state_extra_keys_are_kept():
    frame, _ = _state(1)
    d = msgpack.unpackb(frame)
    d["note"] = "x"
    assert P.decode_server(pk(d)).extra == {"note": "x"}


# -- sizes -------------------------------------------------------------------------------


def test_record_sizes():
    assert P.record_dtype(10, 2).itemsize == 60
    assert P.record_dtype(10, 3).itemsize == 80
    assert P.record_dtype(1, 2).itemsize == 24
    assert [P.record_dtype(10, 2).fields[k][1] for k in ("handle", "age", "seq", "pos", "off")] == [
        0,
        2,
        4,
        8,
        20,
    ]
    for bad in ((0, 2), (10, 1), (10, 4)):
        with pytest.raises(ValueError):
            P.record_dtype(*bad)


@pytest.mark.parametrize("dims", [2, 3])
def test_50_avatars_10_horizons_fit_in_4_kb(dims):
    # A long-running server: big tick, Unix-like server_time, large seqs and handles.
    frame, _ = _state(50, H=10, dims=dims, tick=2**31 + 5, server_time=1767225612.5)
    size = 60 if dims == 2 else 80
    assert len(frame) < 4096, len(frame)
    assert len(frame) - 50 * size < 80  # the frame's own overhead is small
    if dims == 2:  # a full area of interest (--aoi-cap 64) fits as well
        assert len(_state(64, tick=2**31)[0]) < 4096


def test_big_server_frames_decode():
    # A spectator's view is capped at 1024 avatars, not 64: its state and join frames are big.
    frame, x = _state(1024, dims=3)
    assert len(frame) > 65536 // 2
    s = P.decode_server(frame)
    assert len(s) == 1024 and np.array_equal(s.handle, x["handle"])
    names = [f"avatar-{i}" for i in range(1024)]
    assert P.decode_server(P.encode_join(names, list(range(1024)))).avatars == tuple(names)


# -- rejections --------------------------------------------------------------------------

POS = {"type": "pos", "seq": 17, "t": 12.345, "p": [1.0, 2.0, 0.5]}
HELLO = {"type": "hello", "v": 1, "avatar": "alice", "room": "lobby"}
SPECTATOR = {"type": "hello", "v": 1, "room": "lobby"}
NAN, INF = float("nan"), float("inf")


def test_text_frame():
    rejects('{"type":"hello"}', "text_frame")
    assert P.ERROR_CODES["text_frame"] == 1003
    with pytest.raises(P.ProtocolError) as ei:
        P.decode_server("x")
    assert ei.value.code == "text_frame"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never used
        b"\x82\xa4ty",  # truncated
        b"\xff\xfe\xfd",  # three values
        pk(POS) + b"\x00",  # trailing bytes after a valid value
        pk(POS) + pk(POS),  # two messages in one frame
        pk({1: "x"}),  # int keys
        b"\xd9\x02\xff\xfe",  # invalid UTF-8 in a str
        pk("x" * 5000),  # over the msgpack str limit
        pk({"type": "pos", "p": list(range(100))}),  # over the msgpack array limit
    ],
)
def test_bad_msgpack(data):
    e = rejects(data, "bad_msgpack")
    assert e.close_code == 1003


def test_not_bytes_at_all():
    for data in (None, 5, [1, 2], {"type": "bye"}):
        rejects(data, "bad_msgpack")
        rejects(data, "bad_msgpack", max_size=4096)


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2],
        5,
        "pos",
        None,
        1.5,
        {},
        {"seq": 1},
        {"type": 1},
        {"type": None},
        {"type": b"pos"},
        {b"type": "pos"},
    ],
)
def test_bad_message(obj):
    assert rejects(pk(obj), "bad_message").close_code == 1008


@pytest.mark.parametrize("kind", ["teleport", "", "POS", "welcome", "state", "pong", "x" * 500])
def test_unknown_type(kind):
    e = rejects(pk({"type": kind}), "unknown_type")
    assert e.close_code == 1008 and len(str(e)) < 100


@pytest.mark.parametrize(
    "obj",
    [
        {**POS, "seq": 17.0},
        {**POS, "seq": True},
        {**POS, "seq": "17"},
        {k: v for k, v in POS.items() if k != "seq"},
        {**POS, "p": [1.0]},
        {**POS, "p": [1.0, 2.0, 3.0, 4.0]},
        {**POS, "p": ["a", 1.0]},
        {**POS, "p": [True, 1.0]},
        {**POS, "p": "1,2,3"},
        {**POS, "p": {"x": 1}},
        {k: v for k, v in POS.items() if k != "p"},
        {**POS, "t": "12"},
        {**POS, "t": None},
        {**POS, "yaw": "north"},
        {**POS, "yaw": False},
        {k: v for k, v in HELLO.items() if k != "room"},
        {**HELLO, "room": 5},
        {**HELLO, "avatar": 7},
        {**HELLO, "avatar": b"alice"},
        {**HELLO, "v": "1"},
        {**HELLO, "v": True},
        {**HELLO, "v": 1.0},
        {k: v for k, v in HELLO.items() if k != "v"},
        {**HELLO, "token": 5},
        {**HELLO, "token": "x" * 1025},
        {**HELLO, "resume": ["x"]},
        {**SPECTATOR, "region": [0, 0, 1]},
        {**SPECTATOR, "region": "all"},
        {"type": "view", "region": [0, 0, 1, 1, 2]},
        {"type": "ping"},
        {"type": "ping", "t": "now"},
    ],
)
def test_bad_field(obj):
    assert rejects(pk(obj), "bad_field").close_code == 1008


@pytest.mark.parametrize(
    "obj",
    [
        {**POS, "t": NAN},
        {**POS, "t": INF},
        {**POS, "t": -INF},
        {**POS, "p": [NAN, 0.0]},
        {**POS, "p": [0.0, 0.0, INF]},
        {**POS, "p": [-INF, 0.0]},
        {**POS, "yaw": NAN},
        {**SPECTATOR, "region": [0.0, 0.0, INF, 1.0]},
        {"type": "view", "region": [NAN, 0, 1, 1]},
        {"type": "ping", "t": NAN},
    ],
)
def test_non_finite(obj):
    assert rejects(pk(obj), "non_finite").close_code == 1008


@pytest.mark.parametrize(
    "obj",
    [
        {**POS, "p": [1e6 + 1, 0.0]},
        {**POS, "p": [0.0, -1.5e6]},
        {**POS, "p": [0, 0, 10**7]},
        {**POS, "p": [0, 2**63]},
        {**POS, "p": [0, 1e300]},
        {**POS, "seq": -1},
        {**POS, "seq": 2**32},
        {**POS, "seq": 2**64 - 1},
        {**POS, "t": 1e13},
        {**POS, "t": 2**60},
        {**POS, "yaw": 1e4},
        {**HELLO, "avatar": ""},
        {**HELLO, "avatar": "a" * 65},
        {**HELLO, "room": ""},
        {**HELLO, "room": "r" * 65},
        {**HELLO, "avatar": "al\x00ice"},
        {**HELLO, "avatar": "al\nice"},
        {**HELLO, "room": "lobby\x7f"},
        {**HELLO, "room": "\u2028"},
        {**SPECTATOR, "region": [0, 0, 2e6, 1]},
        {"type": "view", "region": [0, 0, 1, -(10**7)]},
        {"type": "ping", "t": 2**54},
    ],
)
def test_out_of_range(obj):
    assert rejects(pk(obj), "out_of_range").close_code == 1008


def test_bounds_are_inclusive():
    m = P.decode_client(
        pk({**POS, "seq": 2**32 - 1, "t": 1e12, "p": [1e6, -1e6, 1e6], "yaw": -1e3})
    )
    assert m.seq == 2**32 - 1 and m.p == (1e6, -1e6, 1e6)
    assert P.decode_client(pk({**HELLO, "avatar": "a" * 64, "room": "b b"})).avatar == "a" * 64
    assert P.decode_client(pk({**HELLO, "token": "x" * 1024})).token == "x" * 1024


@pytest.mark.parametrize("v", [0, 3, -1, 2**40])
def test_bad_version(v):
    assert rejects(pk({**HELLO, "v": v}), "bad_version").close_code == 1008


def test_too_large():
    rejects(b"\x00" * 4097, "too_large", max_size=4096)
    rejects("x" * 4097, "too_large", max_size=4096)  # a big text frame: too big first
    assert P.ERROR_CODES["too_large"] == 1009
    # exactly at the limit is fine (the padding key is unknown, so ignored)
    frame = pk({**POS, "pad": "x" * (4096 - len(pk({**POS, "pad": "x" * 300})) + 300)})
    assert len(frame) == 4096
    assert P.decode_client(frame, max_size=4096) == P.decode_client(pk(POS))
    rejects(frame, "too_large", max_size=4095)


def test_every_error_code_round_trips_in_an_error_frame():
    for code in P.ERROR_CODES:
        assert P.decode_server(P.encode_error(code, "m")) == P.Error(code, "m")
    moved = P.encode_error("moved", "elsewhere", url="ws://10.0.0.2:8702/")
    assert P.decode_server(moved) == P.Error("moved", "elsewhere", "ws://10.0.0.2:8702/")


def test_bad_server_frames():
    def bad(obj, code="bad_field"):
        with pytest.raises(P.ProtocolError) as ei:
            P.decode_server(pk(obj))
        assert ei.value.code == code

    d = msgpack.unpackb(_state(2)[0])
    bad({**d, "rec": d["rec"][:-1]})
    bad({**d, "n": 3})
    bad({**d, "n": -1})
    bad({**d, "nh": 0})
    bad({**d, "dims": 4})
    bad({**d, "rec": "text"})
    bad({k: v for k, v in d.items() if k != "tick"})
    bad({**d, "tick": INF})
    bad({**d, "n": NAN})
    w = msgpack.unpackb(P.encode_welcome(P.Welcome("a", "r", 20, (0.1,), "m", 1.0, "t", 1)))
    bad({**w, "handle": INF})
    bad({**w, "v": -INF})
    bad({**w, "horizons": 5})
    bad({k: v for k, v in w.items() if k != "room"})
    bad({"type": "join", "avatars": ["a"], "handles": [1, 2]})
    bad({"type": "leave", "avatars": ["a"], "handles": [INF]})
    bad({"type": "pong", "t": "x", "server_time": 1})
    bad({"type": "hello", "v": 1, "room": "r"}, "unknown_type")
    bad([1], "bad_message")


# -- hostile input: nesting and declared lengths -------------------------------------------

HUGE_HEADERS = [
    b"\xdd\xff\xff\xff\xff",  # array32 of 4 G elements
    b"\xdc\xff\xff",  # array16
    b"\xdf\xff\xff\xff\xff",  # map32
    b"\xdb\xff\xff\xff\xff",  # str32
    b"\xc6\xff\xff\xff\xff",  # bin32
    b"\xc9\xff\xff\xff\xff\x01",  # ext32
    b"\x82\xa4type\xa3pos\xa1p\xdd\xff\xff\xff\xff",  # a pos whose "p" claims 4 G elements
    b"\x81\xa4type\xdb\x7f\xff\xff\xff",  # a "type" string of 2 GB
    b"\x87\xa4type\xa5state\xa3rec\xc6\xff\xff\xff\xf0",  # a state whose rec claims 4 GB
]
DEEP = [
    b"\x91" * 10_000 + b"\xc0",  # 10,000 nested arrays
    b"\x81\xa1a" * 10_000 + b"\xc0",  # 10,000 nested maps
    b"\xdd\x00\x00\x00\x01" * 10_000 + b"\xc0",
    b"\x91" * 200_000,  # nested and truncated
]


@pytest.mark.parametrize("data", HUGE_HEADERS + DEEP)
@pytest.mark.parametrize("decode", [P.decode_client, P.decode_server])
def test_hostile_frames_fail_fast_and_small(decode, data):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(P.ProtocolError) as ei:
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 0.5
    assert peak < 4 * len(data) + 1_000_000, peak
    assert ei.value.code in ("bad_msgpack", "bad_message")


# -- property tests ----------------------------------------------------------------------

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from([0, 1, 2, -1, 2**32 - 1, 2**32, 2**53 + 1, 10**6 + 1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(-2e6, 2e6)
    | st.text(max_size=70)
    | st.binary(max_size=70)
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=12,
)
CLIENT_KEYS = ["v", "avatar", "room", "token", "resume", "region", "seq", "t", "p", "yaw"]
SERVER_KEYS = [
    "v",
    "avatar",
    "room",
    "tick_hz",
    "horizons",
    "model",
    "server_time",
    "resume",
    "handle",
    "avatars",
    "handles",
    "code",
    "message",
    "t",
    "tick",
    "n",
    "nh",
    "dims",
    "rec",
]
NUMS = st.lists(st.floats() | st.integers(-(2**40), 2**40), min_size=0, max_size=5)


def messages(types: list[str], keys: list[str]):
    """Maps that look like messages, so that the field validators are reached."""
    return st.fixed_dictionaries(
        {"type": st.sampled_from(types) | st.text(max_size=10)},
        optional={k: values | NUMS | leaves for k in keys},
    ) | st.builds(
        lambda t, extra: {**extra, "type": t},
        st.sampled_from(types),
        st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), values, max_size=8),
    )


@st.composite
def near_valid_states(draw):
    n = draw(st.integers(0, 5))
    nh = draw(st.integers(0, 12))
    dims = draw(st.sampled_from([1, 2, 3, 4]))
    size = n * (20 + 2 * nh * dims) + draw(st.sampled_from([0, 0, 0, -1, 1]))
    d = {
        "type": "state",
        "tick": draw(st.integers(0, 2**64 - 1) | st.floats()),
        "server_time": draw(st.floats() | st.integers(-(2**63), 2**63)),
        "n": n,
        "nh": nh,
        "dims": dims,
        "rec": draw(st.binary(min_size=max(size, 0), max_size=max(size, 0))),
    }
    for k in draw(st.lists(st.sampled_from(sorted(d)), max_size=2)):
        d[k] = draw(values)
    return d


def check_client(data) -> None:
    try:
        m = P.decode_client(data, max_size=4096)
    except P.ProtocolError as e:
        assert P.ERROR_CODES[e.code] == e.close_code
        return
    assert isinstance(m, CLIENT_TYPES)
    if isinstance(m, P.Pos):
        assert 0 <= m.seq <= P.MAX_SEQ and math.isfinite(m.t) and abs(m.t) <= 1e12
        assert all(math.isfinite(v) and abs(v) <= P.MAX_COORD for v in m.p) and len(m.p) == 3
    if isinstance(m, P.Hello):
        assert m.v == 1
        for name in (m.room, m.avatar):
            assert name is None or (1 <= len(name) <= 64 and name.isprintable())
    if isinstance(m, P.Hello | P.View) and m.region is not None:
        assert len(m.region) == 4 and all(math.isfinite(v) for v in m.region)


def check_server(data) -> None:
    try:
        m = P.decode_server(data)
    except P.ProtocolError as e:
        assert P.ERROR_CODES[e.code] == e.close_code
        return
    assert isinstance(m, SERVER_TYPES)


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=200))
def test_fuzz_bytes(data):
    check_client(data)
    check_server(data)


@FAST
@given(values)
def test_fuzz_values(obj):
    data = pk(obj)
    check_client(data)
    check_server(data)


@FAST
@given(messages(["hello", "pos", "bye", "view", "ping"], CLIENT_KEYS))
def test_fuzz_client_messages(obj):
    check_client(pk(obj))


@FAST
@given(
    messages(["welcome", "state", "join", "leave", "error", "pong"], SERVER_KEYS)
    | near_valid_states()
)
def test_fuzz_server_messages(obj):
    check_server(pk(obj))


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(0, 8))
def test_fuzz_mutated_frames(junk, at):
    # Valid frames with bytes replaced or cut: the decoders still only raise ProtocolError.
    for frame in (
        pk(POS),
        pk(HELLO),
        _state(2)[0],
        P.encode_welcome(P.Welcome("a", "r", 20, H10, "m", 1.0, "t")),
    ):
        i = min(at * len(frame) // 8, len(frame) - 1)
        for data in (frame[:i] + junk + frame[i + len(junk) :], frame[:i], frame[:i] + junk):
            check_client(data)
            check_server(data)


# -- the document ------------------------------------------------------------------------


def test_docs_protocol_md_is_up_to_date():
    spec = importlib.util.spec_from_file_location(
        "protocol_examples", ROOT / "docs" / "protocol_examples.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert mod.stale_blocks(doc) == [], "run: python docs/protocol_examples.py --update"
    for code in P.ERROR_CODES:
        assert f"`{code}`" in doc


@given(
    st.integers(0, 1100),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, 1, 200, 300, 70000]),
    st.sampled_from([2, 3]),
)
def test_state_framer_is_byte_identical_to_packing_the_map(n, tick, t, size, dims):
    recs = bytes(range(256)) * (size // 256 + 1)
    recs = recs[:size]
    ref = msgpack.packb(
        {"type": "state", "tick": tick, "server_time": t, "n": n, "nh": 10, "dims": dims,
         "rec": recs},
        use_bin_type=True,
    )  # fmt: skip
    framer = P.StateFramer(tick, t, 10, dims)
    assert framer.frame(n, recs) == ref
    assert framer.frame(n, memoryview(recs)) == ref
    assert P.encode_state(tick, t, recs, n, 10, dims) == ref
