"""The `pos` message's decoders beside the general msgpack one, and its binary form.

- `fast_pos`: the common msgpack `pos` (float `t` and coordinates, an int `seq`, no
  `yaw`) checked in a few comparisons; anything else falls to `checked_pos`, the field by
  field checks, which it agrees with exactly (tests/test_pos_codec.py holds them to it).
- `pos_from_msgpack`: the same common `pos` read from the frame's bytes, without building
  the map, when it is laid out as this project's clients pack it (the keys type, seq, t,
  p in that order, float64 values); None for any other frame, which the general decoder
  then reads. It accepts only what `fast_pos` accepts, with the same result.
- The binary `pos`, for a player whose `hello` asked for it with ``"pos_encoding":
  "binary"`` (and whose `welcome` confirmed it): one fixed-layout little-endian frame of
  37 bytes, tag 0x70 (a msgpack positive fixint, never a map: no msgpack message starts
  with it), u32 `seq`, f64 `t`, f64 x, y, z (docs/protocol.md shows one byte by byte).
"""

from __future__ import annotations

import math
import struct
from typing import Any

from server.core import field_checks as C
from server.core.messages import MAX_COORD, MAX_SEQ, MAX_TIME, Pos, ProtocolError

POS_BINARY = struct.Struct("<BIdddd")
POS_BINARY_TAG = 0x70


def encode_pos_binary(pos: Pos) -> bytes:
    """A `pos` as the fixed-layout binary frame (for a hello with "pos_encoding": "binary";
    `yaw` is not carried). Raises struct.error for a `seq` outside 0 … 2**32 - 1."""
    x, y, *z = pos.p
    return POS_BINARY.pack(POS_BINARY_TAG, pos.seq, pos.t, x, y, z[0] if z else 0.0)


def decode_pos_binary(data: Any) -> Pos:
    """Decode and check one binary `pos` frame (`POS_BINARY`, 37 bytes, tag 0x70).

    Raises ProtocolError for anything else: a wrong length or tag (``bad_message``), a
    NaN or infinity (``non_finite``), a time or coordinate out of range (``out_of_range``).
    """
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) != POS_BINARY.size:
        raise ProtocolError(
            "bad_message", f"a binary pos is {POS_BINARY.size} bytes, tag {POS_BINARY_TAG:#x}"
        )
    tag, seq, t, x, y, z = POS_BINARY.unpack(data)
    if tag != POS_BINARY_TAG:
        raise ProtocolError("bad_message", f"a binary pos starts with {POS_BINARY_TAG:#x}")
    if -MAX_TIME <= t <= MAX_TIME and all(-MAX_COORD <= c <= MAX_COORD for c in (x, y, z)):
        return Pos(seq=seq, t=t, p=(x, y, z))
    if not all(math.isfinite(v) for v in (t, x, y, z)):
        raise ProtocolError("non_finite", '"t" and "p" must be finite')
    raise ProtocolError(
        "out_of_range", f'"t" must be within +-{MAX_TIME:g} s and "p" within +-{MAX_COORD:g} m'
    )


def checked_pos(d: dict) -> Pos:
    """A `pos` map's fields, each checked (its ProtocolError names the broken rule)."""
    p = C.vector(d, "p", (2, 3))
    yaw = None if d.get("yaw") is None else C.number(d, "yaw", bound=1e3)
    return Pos(
        seq=C.integer(d, "seq", 0, MAX_SEQ),
        t=C.number(d, "t", bound=MAX_TIME),
        p=(p[0], p[1], p[2] if len(p) == 3 else 0.0),
        yaw=yaw,
    )


def fast_pos(d: dict) -> Pos | None:
    """The common `pos` (float t and coordinates, an int seq, no yaw) in a few comparisons;
    None for anything else, which `checked_pos` then decodes or refuses. It accepts only
    what `checked_pos` accepts, and gives the same `Pos` (NaN fails every comparison)."""
    p, t, seq = d.get("p"), d.get("t"), d.get("seq")
    if type(p) is not list or type(t) is not float or type(seq) is not int or "yaw" in d:
        return None
    n = len(p)
    if n == 3:
        x, y, z = p
        if type(z) is not float or not -MAX_COORD <= z <= MAX_COORD:
            return None
    elif n == 2:
        x, y = p
        z = 0.0
    else:
        return None
    if (
        type(x) is float
        and type(y) is float
        and -MAX_COORD <= x <= MAX_COORD
        and -MAX_COORD <= y <= MAX_COORD
        and -MAX_TIME <= t <= MAX_TIME
        and 0 <= seq <= MAX_SEQ
    ):
        return Pos(seq=seq, t=t, p=(x, y, z))
    return None


_MSGPACK_POS_HEAD = b"\x84\xa4type\xa3pos\xa3seq"  # map of 4: "type": "pos", "seq":
# after the seq: "t": float64, "p": [float64 x 3] (or 2)
_MSGPACK_POS_TAIL3 = struct.Struct(">3sd4sdBdBd")
_MSGPACK_POS_TAIL2 = struct.Struct(">3sd4sdBd")
_T, _P3, _P2, _F64 = b"\xa1t\xcb", b"\xa1p\x93\xcb", b"\xa1p\x92\xcb", 0xCB
_MSGPACK_POS_MIN = len(_MSGPACK_POS_HEAD) + 1 + _MSGPACK_POS_TAIL2.size  # 2-D, fixint seq


def pos_from_msgpack(data: bytes) -> Pos | None:
    """The common msgpack `pos` straight from its bytes (see the module docstring); None
    for anything else. Call with the frame as bytes."""
    if len(data) < _MSGPACK_POS_MIN or not data.startswith(_MSGPACK_POS_HEAD):
        return None
    b = data[14]  # the seq: positive fixint, uint 8, 16, 32
    if b < 0x80:
        seq, at = b, 15
    elif b == 0xCC:
        seq, at = data[15], 16
    elif b == 0xCD:
        seq, at = int.from_bytes(data[15:17], "big"), 17
    elif b == 0xCE:
        seq, at = int.from_bytes(data[15:19], "big"), 19
    else:
        return None
    rest = len(data) - at
    if rest == _MSGPACK_POS_TAIL3.size:
        tk, t, pk, x, yk, y, zk, z = _MSGPACK_POS_TAIL3.unpack_from(data, at)
        if tk != _T or pk != _P3 or yk != _F64 or zk != _F64 or not -MAX_COORD <= z <= MAX_COORD:
            return None
    elif rest == _MSGPACK_POS_TAIL2.size:
        tk, t, pk, x, yk, y = _MSGPACK_POS_TAIL2.unpack_from(data, at)
        if tk != _T or pk != _P2 or yk != _F64:
            return None
        z = 0.0
    else:
        return None
    if (
        -MAX_COORD <= x <= MAX_COORD
        and -MAX_COORD <= y <= MAX_COORD
        and -MAX_TIME <= t <= MAX_TIME
        and seq <= MAX_SEQ
    ):
        return Pos(seq=seq, t=t, p=(x, y, z))
    return None
