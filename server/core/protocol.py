"""Wire protocol v2 (and v1): encode, decode and validate every message. Pure: bytes in, objects out.

No asyncio, no sockets, no torch. Every frame is one msgpack map with a ``"type"`` key
(see ``docs/protocol.md`` for the byte-level layouts and a worked hex dump).

Decoding untrusted input never raises anything but `ProtocolError`, which carries a short
``code`` for the ``error`` message and the WebSocket ``close_code`` to close with:

    try:
        msg = decode_client(frame)          # Hello | Pos | Bye | View | Ping
    except ProtocolError as e:
        send(encode_error(e.code, str(e))); close(e.close_code)

The ``state`` frame packs one fixed-size little-endian record per avatar in view
(`record_dtype`): handle, age of the sample, seq, position (float32) and the predicted
offsets at every horizon as int16 millimetres — 20 + 2*H*dims bytes a record, 60 for
10 horizons in 2-D.

Versions: a client says which it speaks in ``hello.v``; ``welcome.v`` confirms it. A v1
client gets every avatar of its view in every tick's `state`. A v2 client gets downlink
dead reckoning: an avatar's record only when its path changed (``welcome.dr``), on a
heartbeat, or when it enters the view; between records it keeps drawing along the last
path, and a tick with nothing new may bring no `state` at all.

This module is the codec and the one module clients import: the vocabulary (versions,
codes, limits, message types, `ProtocolError`) is `server.core.messages`, re-exported
here; the checks of untrusted fields are `server.core.field_checks`.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from server.core import field_checks as C
from server.core.messages import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_MOVED,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN,
    CLOSE_UNSUPPORTED,
    ERROR_CODES,
    MAX_COORD,
    MAX_NAME,
    MAX_SEQ,
    POS_ENCODINGS,
    VERSION,
    VERSIONS,
    Bye,
    ClientMessage,
    Error,
    Hello,
    Join,
    Leave,
    Ping,
    Pong,
    Pos,
    ProtocolError,
    ServerMessage,
    State,
    View,
    Welcome,
)
from server.core.pos_codec import (
    POS_BINARY,
    POS_BINARY_TAG,
    checked_pos,
    decode_pos_binary,
    encode_pos_binary,
    fast_pos,
    pos_from_msgpack,
)

# The public face of the protocol: the vocabulary of `server.core.messages`, re-exported so
# that clients and the server import one module, and the codec defined here.
__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_MOVED",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN",
    "CLOSE_UNSUPPORTED",
    "ERROR_CODES",
    "MAX_COORD",
    "MAX_NAME",
    "MAX_SEQ",
    "POS_BINARY",
    "POS_BINARY_TAG",
    "POS_ENCODINGS",
    "VERSION",
    "VERSIONS",
    "Bye",
    "ClientMessage",
    "Error",
    "Hello",
    "Join",
    "Leave",
    "Ping",
    "Pong",
    "Pos",
    "ProtocolError",
    "ServerMessage",
    "State",
    "StateFramer",
    "View",
    "Welcome",
    "decode_client",
    "decode_pos_binary",
    "decode_server",
    "encode_client",
    "encode_error",
    "encode_join",
    "encode_leave",
    "encode_pong",
    "encode_pos_binary",
    "encode_state",
    "encode_welcome",
    "pack_records",
    "quantise_age",
    "quantise_offsets",
    "record_dtype",
]

_LIMITS = dict(max_str_len=4096, max_bin_len=4096, max_array_len=64, max_map_len=64, max_ext_len=64)


# -- the packed state record --------------------------------------------------------------


def record_dtype(horizons: int, dims: int) -> np.dtype:
    """numpy dtype of one `state` record: 20 + 2*horizons*dims bytes, little-endian, packed.

    Raises ValueError unless dims is 2 or 3 and horizons >= 1.
    """
    if dims not in (2, 3) or horizons < 1:
        raise ValueError(f"bad record shape: horizons={horizons} dims={dims}")
    return np.dtype(
        [
            ("handle", "<u2"),  # room-scoped avatar handle (see join/leave)
            ("age", "<u2"),  # ms from the sample's time to the frame's server_time, saturating
            ("seq", "<u4"),  # seq of the sample the prediction was made from
            ("pos", "<f4", (3,)),  # the sample's position, metres
            ("off", "<i2", (horizons, dims)),  # predicted minus pos at each horizon, mm
        ]
    )


def quantise_offsets(offsets: np.ndarray) -> np.ndarray:
    """Metres (float) -> int16 millimetres, rounded and clipped to +-32.767 m."""
    return np.clip(np.rint(offsets * 1000.0), -32767, 32767).astype("<i2")


def quantise_age(age_s: np.ndarray) -> np.ndarray:
    """Seconds -> uint16 milliseconds, clipped to [0, 65535]."""
    return np.clip(np.rint(np.asarray(age_s) * 1000.0), 0, 65535).astype("<u2")


def pack_records(
    handle: np.ndarray,
    age_s: np.ndarray,
    seq: np.ndarray,
    pos: np.ndarray,
    offsets: np.ndarray,
    dims: int,
) -> np.ndarray:
    """Build the (n,) record array; offsets (n, H, 3) metres, only the first `dims` kept."""
    n, H = offsets.shape[0], offsets.shape[1]
    rec = np.empty(n, dtype=record_dtype(H, dims))
    rec["handle"] = handle
    rec["age"] = quantise_age(age_s)
    rec["seq"] = np.asarray(seq) & MAX_SEQ
    rec["pos"] = pos
    rec["off"] = quantise_offsets(offsets[..., :dims])
    return rec


# -- encoding -----------------------------------------------------------------------------


def _pack(obj: dict) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_state(
    tick: int, server_time: float, records: bytes | np.ndarray, n: int, horizons: int, dims: int
) -> bytes:
    """A `state` frame around `n` already packed records (`pack_records(...)` or its bytes)."""
    if isinstance(records, np.ndarray):
        records = records.tobytes()
    return StateFramer(tick, server_time, horizons, dims).frame(n, records)


class StateFramer:
    """Builds the `state` frames of one tick: the msgpack bytes around the fields every
    viewer shares are packed once, so a frame costs one join. Byte-identical to packing
    the map {"type", "tick", "server_time", "n", "nh", "dims", "rec"} in that order."""

    __slots__ = ("head", "tail")

    def __init__(self, tick: int, server_time: float, horizons: int, dims: int) -> None:
        p = msgpack.Packer(use_bin_type=True)
        # a frame is head, msgpack(n), tail, the bin header, the records
        self.head = (
            b"\x87" + p.pack("type") + p.pack("state") + p.pack("tick") + p.pack(tick)
            + p.pack("server_time") + p.pack(float(server_time)) + p.pack("n")
        )  # fmt: skip
        self.tail = p.pack("nh") + p.pack(horizons) + p.pack("dims") + p.pack(dims) + p.pack("rec")

    def frame(self, n: int, records: bytes | memoryview) -> bytes:
        """The frame for `n` records given as their packed bytes (a view is not copied twice)."""
        size = len(records)
        if size < 256:
            bin_head = b"\xc4" + size.to_bytes(1, "big")
        elif size < 65536:
            bin_head = b"\xc5" + size.to_bytes(2, "big")
        else:
            bin_head = b"\xc6" + size.to_bytes(4, "big")
        count = _SMALL_INTS[n] if n < len(_SMALL_INTS) else msgpack.packb(n)
        return b"".join((self.head, count, self.tail, bin_head, records))


_SMALL_INTS = [msgpack.packb(i) for i in range(1025)]


def encode_welcome(w: Welcome) -> bytes:
    """The `welcome` frame (``dr`` only for a v2 client: `w.dr` not None)."""
    d = {
        "type": "welcome",
        "v": w.v,
        "avatar": w.avatar,
        "room": w.room,
        "tick_hz": w.tick_hz,
        "horizons": list(w.horizons),
        "model": w.model,
        "server_time": w.server_time,
        "resume": w.resume,
        "handle": w.handle,
    }
    if w.dr is not None:
        d["dr"] = dict(w.dr)
    if w.pos_encoding != "msgpack":
        d["pos_encoding"] = w.pos_encoding
    return _pack(d)


def encode_join(avatars: list[str], handles: list[int]) -> bytes:
    """The `join` frame: avatars that entered the view, with their handles (same length)."""
    return _pack({"type": "join", "avatars": list(avatars), "handles": list(handles)})


def encode_leave(avatars: list[str], handles: list[int]) -> bytes:
    """The `leave` frame: avatars that left the view, with their handles (same length)."""
    return _pack({"type": "leave", "avatars": list(avatars), "handles": list(handles)})


def encode_error(code: str, message: str, url: str | None = None) -> bytes:
    """The `error` frame; `code` one of `ERROR_CODES`, `url` only for ``moved``."""
    d = {"type": "error", "code": code, "message": message}
    if url is not None:
        d["url"] = url
    return _pack(d)


def encode_pong(t: float, server_time: float) -> bytes:
    """The `pong` frame: the ping's `t` echoed, with the server's clock."""
    return _pack({"type": "pong", "t": t, "server_time": server_time})


def encode_client(msg: ClientMessage) -> bytes:
    """Encode a client->server message (for clients and tests). Optional fields left None are omitted."""
    if isinstance(msg, Hello):
        d: dict[str, Any] = {"type": "hello", "v": msg.v, "room": msg.room}
        if msg.avatar is not None:
            d["avatar"] = msg.avatar
        for k in ("token", "resume"):
            if getattr(msg, k) is not None:
                d[k] = getattr(msg, k)
        if msg.region is not None:
            d["region"] = list(msg.region)
        if msg.pos_encoding != "msgpack":
            d["pos_encoding"] = msg.pos_encoding
        return _pack(d)
    if isinstance(msg, Pos):
        d = {"type": "pos", "seq": msg.seq, "t": msg.t, "p": list(msg.p)}
        if msg.yaw is not None:
            d["yaw"] = msg.yaw
        return _pack(d)
    if isinstance(msg, Bye):
        return _pack({"type": "bye"})
    if isinstance(msg, View):
        return _pack({"type": "view", "region": None if msg.region is None else list(msg.region)})
    if isinstance(msg, Ping):
        return _pack({"type": "ping", "t": msg.t})
    raise TypeError(f"not a client message: {msg!r}")


# -- decoding -----------------------------------------------------------------------------


def decode_client(data: Any, *, max_size: int | None = None) -> ClientMessage:
    """Decode and validate one client->server frame.

    `data` is what the WebSocket gave (bytes for a binary frame, str for a text one).
    Raises ProtocolError for anything but a valid v1/v2 client message, never another exception.
    """
    sized = isinstance(data, str | bytes | bytearray | memoryview)
    if max_size is not None and sized and len(data) > max_size:
        raise ProtocolError("too_large", f"frame of {len(data)} bytes; the limit is {max_size}")
    if type(data) is bytes and (pos := pos_from_msgpack(data)) is not None:
        return pos  # the common pos, read from its bytes
    d = C.unpack_map(data, _LIMITS)
    kind = d["type"]
    if kind == "pos":
        return fast_pos(d) or checked_pos(d)
    if kind == "hello":
        v = d.get("v")
        if isinstance(v, bool) or not isinstance(v, int):
            raise ProtocolError("bad_field", '"v" must be an integer')
        if v not in VERSIONS:
            raise ProtocolError("bad_version", f"protocol version {v} is not supported; use 1 or 2")
        return Hello(
            v=v,
            room=C.name(d, "room", required=True),
            avatar=C.name(d, "avatar", required=False),
            token=C.optional_str(d, "token"),
            resume=C.optional_str(d, "resume"),
            region=C.region(d),
            pos_encoding=_pos_encoding(d),
        )
    if kind == "bye":
        return Bye()
    if kind == "view":
        return View(region=C.region(d))
    if kind == "ping":
        return Ping(t=C.number(d, "t"))
    raise ProtocolError("unknown_type", f'unknown message type "{kind[:32]}"')


def _pos_encoding(d: dict) -> str:
    enc = d.get("pos_encoding", "msgpack")
    if enc is None:
        return "msgpack"
    if not isinstance(enc, str):
        raise ProtocolError("bad_field", '"pos_encoding" must be a string')
    if enc not in POS_ENCODINGS:
        raise ProtocolError(
            "out_of_range", f'"pos_encoding" must be one of {", ".join(POS_ENCODINGS)}'
        )
    return enc


def decode_server(data: Any) -> ServerMessage:
    """Decode one server->client frame (for clients and tests).

    Raises ProtocolError for anything but a valid v1/v2 server message. Server frames may be
    larger than client ones (a spectator's state or join), so msgpack's own limits apply
    here: each is bounded by the frame's length.
    """
    d = C.unpack_map(data, {})
    kind = d["type"]
    try:
        if kind == "state":
            return _decode_state(d)
        if kind == "welcome":
            handle = d.get("handle")
            dr = d.get("dr")
            return Welcome(
                avatar=d["avatar"],
                room=d["room"],
                tick_hz=float(d["tick_hz"]),
                horizons=tuple(float(h) for h in d["horizons"]),
                model=str(d["model"]),
                server_time=float(d["server_time"]),
                resume=str(d["resume"]),
                handle=None if handle is None else int(handle),
                v=int(d["v"]),
                dr=None if dr is None else {k: float(dr[k]) for k in ("threshold", "heartbeat")},
                pos_encoding=str(d.get("pos_encoding", "msgpack")),
            )
        if kind in ("join", "leave"):
            avatars = tuple(str(a) for a in d["avatars"])
            handles = tuple(int(h) for h in d["handles"])
            if len(avatars) != len(handles):
                raise ProtocolError("bad_field", "avatars and handles differ in length")
            return (Join if kind == "join" else Leave)(avatars, handles)
        if kind == "error":
            url = d.get("url")
            return Error(str(d["code"]), str(d["message"]), None if url is None else str(url))
        if kind == "pong":
            return Pong(float(d["t"]), float(d["server_time"]))
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise ProtocolError("bad_field", f"{kind}: {type(e).__name__}: {e}") from None
    raise ProtocolError("unknown_type", f'unknown message type "{kind[:32]}"')


def _decode_state(d: dict) -> State:
    n, H, dims, rec = int(d["n"]), int(d["nh"]), int(d["dims"]), d["rec"]
    if not isinstance(rec, bytes) or n < 0 or not 1 <= H <= 255 or dims not in (2, 3):
        raise ProtocolError("bad_field", "state: bad n, nh, dims or rec")
    dt = record_dtype(H, dims)
    if len(rec) != n * dt.itemsize:
        raise ProtocolError("bad_field", f"state: {len(rec)} bytes is not {n} records")
    r = np.frombuffer(rec, dtype=dt, count=n)
    off = np.zeros((n, H, 3), dtype=np.float32)
    off[..., :dims] = r["off"] / 1000.0
    extra = {
        k: v
        for k, v in d.items()
        if k not in ("type", "tick", "server_time", "n", "nh", "dims", "rec")
    }
    return State(
        tick=int(d["tick"]),
        server_time=float(d["server_time"]),
        handle=r["handle"].copy(),
        age=r["age"] / 1000.0,
        seq=r["seq"].copy(),
        pos=r["pos"].copy(),
        offsets=off,
        extra=extra,
    )
