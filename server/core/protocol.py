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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

VERSION = 2  # what this module's clients speak
VERSIONS = (1, 2)  # what the server accepts

# Close codes (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server shutdown
CLOSE_UNSUPPORTED = 1003  # text frame, bytes that are not msgpack
CLOSE_POLICY = 1008  # a valid frame with a wrong message, too slow, refused
CLOSE_TOO_BIG = 1009  # frame over the limit
CLOSE_INTERNAL = 1011  # a server bug while handling this connection
CLOSE_TRY_AGAIN = 1013  # server or room full
CLOSE_MOVED = 4001  # the room is served by another worker: look it up again and reconnect

# error code -> close code. The table in docs/protocol.md mirrors this one.
ERROR_CODES: dict[str, int] = {
    "text_frame": CLOSE_UNSUPPORTED,  # a text frame; v1 is binary only
    "bad_msgpack": CLOSE_UNSUPPORTED,  # not one well-formed msgpack value
    "bad_message": CLOSE_POLICY,  # not a map, or no string "type"
    "unknown_type": CLOSE_POLICY,  # a type this side does not accept
    "bad_field": CLOSE_POLICY,  # a fixed key missing or of the wrong type
    "non_finite": CLOSE_POLICY,  # NaN or infinity in a number
    "out_of_range": CLOSE_POLICY,  # a number or string outside its documented range
    "bad_version": CLOSE_POLICY,  # hello "v" is not 1 or 2
    "expected_hello": CLOSE_POLICY,  # first message was not hello, or a second hello
    "hello_timeout": CLOSE_POLICY,  # no hello in time
    "not_a_player": CLOSE_POLICY,  # a spectator sent pos
    "unauthorized": CLOSE_POLICY,  # hello token missing, invalid or expired (server.auth)
    "too_slow": CLOSE_POLICY,  # the client did not read its frames
    "rate_limited": CLOSE_POLICY,  # messages sent faster than the limit, sustained
    "idle_timeout": CLOSE_POLICY,  # no message or pong for too long
    "replaced": CLOSE_POLICY,  # another connection took over this avatar
    "internal_error": CLOSE_INTERNAL,  # a server bug while handling this connection
    "too_large": CLOSE_TOO_BIG,  # frame over the size limit
    "room_full": CLOSE_TRY_AGAIN,
    "server_full": CLOSE_TRY_AGAIN,
    "moved": CLOSE_MOVED,  # the room lives on another worker (url), or this one is draining
}

MAX_NAME = 64  # characters in an avatar id or room name
MAX_COORD = 1e6  # metres; the same bound as the engine's
MAX_SEQ = 2**32 - 1
_LIMITS = dict(max_str_len=4096, max_bin_len=4096, max_array_len=64, max_map_len=64, max_ext_len=64)


class ProtocolError(Exception):
    """A frame that breaks the protocol. ``code`` names the rule, ``close_code`` the close;
    ``url`` (``moved`` only) where the room is served."""

    def __init__(self, code: str, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.close_code = ERROR_CODES[code]
        self.url = url


# -- messages ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    room: str
    avatar: str | None = None  # None: a spectator
    v: int = VERSION
    token: str | None = None
    resume: str | None = None
    region: tuple[float, float, float, float] | None = None  # spectators: x0, y0, x1, y1


@dataclass(frozen=True, slots=True)
class Pos:
    seq: int
    t: float  # client clock, seconds
    p: tuple[float, float, float]  # metres, z up
    yaw: float | None = None


@dataclass(frozen=True, slots=True)
class Bye:
    pass


@dataclass(frozen=True, slots=True)
class View:
    """A spectator changes its region (None: the whole room)."""

    region: tuple[float, float, float, float] | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    t: float  # echoed back in pong


@dataclass(frozen=True, slots=True)
class Welcome:
    avatar: str | None
    room: str
    tick_hz: float
    horizons: tuple[float, ...]
    model: str
    server_time: float
    resume: str
    handle: int | None = None  # the client's own handle in `state` (None for spectators)
    v: int = VERSION
    # v2: the downlink dead-reckoning rule, {"threshold": m, "heartbeat": s} (None for v1)
    dr: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Join:
    avatars: tuple[str, ...]
    handles: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Leave:
    avatars: tuple[str, ...]
    handles: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Error:
    code: str
    message: str
    url: str | None = None  # `moved`: the WebSocket URL of the worker that serves the room


@dataclass(frozen=True, slots=True)
class Pong:
    t: float
    server_time: float


@dataclass(slots=True)
class State:
    """Decoded `state` frame: one row per avatar in view (arrays, not objects)."""

    tick: int
    server_time: float
    handle: np.ndarray  # (n,) uint16
    age: np.ndarray  # (n,) float64 seconds: server_time minus the sample's time (server clock)
    seq: np.ndarray  # (n,) uint32 seq of the sample the prediction came from
    pos: np.ndarray  # (n, 3) float32 the sample's position
    offsets: np.ndarray  # (n, H, 3) float32 metres, predicted position minus pos
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.handle)


ClientMessage = Hello | Pos | Bye | View | Ping
ServerMessage = Welcome | State | Join | Leave | Error | Pong


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

    __slots__ = ("_head", "_tail")

    def __init__(self, tick: int, server_time: float, horizons: int, dims: int) -> None:
        p = msgpack.Packer(use_bin_type=True)
        self._head = (
            b"\x87" + p.pack("type") + p.pack("state") + p.pack("tick") + p.pack(tick)
            + p.pack("server_time") + p.pack(float(server_time)) + p.pack("n")
        )  # fmt: skip
        self._tail = p.pack("nh") + p.pack(horizons) + p.pack("dims") + p.pack(dims) + p.pack("rec")

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
        return b"".join((self._head, count, self._tail, bin_head, records))


_SMALL_INTS = [msgpack.packb(i) for i in range(1025)]


def encode_welcome(w: Welcome) -> bytes:
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
    return _pack(d)


def encode_join(avatars: list[str], handles: list[int]) -> bytes:
    return _pack({"type": "join", "avatars": list(avatars), "handles": list(handles)})


def encode_leave(avatars: list[str], handles: list[int]) -> bytes:
    return _pack({"type": "leave", "avatars": list(avatars), "handles": list(handles)})


def encode_error(code: str, message: str, url: str | None = None) -> bytes:
    d = {"type": "error", "code": code, "message": message}
    if url is not None:
        d["url"] = url
    return _pack(d)


def encode_pong(t: float, server_time: float) -> bytes:
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


def _unpack(data: Any, limits: dict[str, int]) -> dict:
    if isinstance(data, str):
        raise ProtocolError("text_frame", "text frames are not accepted; send binary msgpack")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("bad_msgpack", "frame is not bytes")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, **limits)
    except Exception as e:  # msgpack raises many kinds (ValueError, FormatError, StackError, ...)
        raise ProtocolError("bad_msgpack", f"not one msgpack value: {type(e).__name__}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", "a message is a msgpack map")
    if not isinstance(obj.get("type"), str):
        raise ProtocolError("bad_message", 'a message needs a string "type"')
    return obj


def _number(d: dict, key: str, *, bound: float | None = None) -> float:
    x = d.get(key)
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ProtocolError("bad_field", f'"{key}" must be a number')
    if isinstance(x, int) and abs(x) > 2**53:
        raise ProtocolError("out_of_range", f'"{key}" is too large')
    x = float(x)
    if not math.isfinite(x):
        raise ProtocolError("non_finite", f'"{key}" must be finite')
    if bound is not None and abs(x) > bound:
        raise ProtocolError("out_of_range", f'"{key}" must be within +-{bound:g}')
    return x


def _int(d: dict, key: str, lo: int, hi: int) -> int:
    x = d.get(key)
    if isinstance(x, bool) or not isinstance(x, int):
        raise ProtocolError("bad_field", f'"{key}" must be an integer')
    if not lo <= x <= hi:
        raise ProtocolError("out_of_range", f'"{key}" must be in [{lo}, {hi}]')
    return x


def _name(d: dict, key: str, *, required: bool) -> str | None:
    x = d.get(key)
    if x is None and not required:
        return None
    if not isinstance(x, str):
        raise ProtocolError("bad_field", f'"{key}" must be a string')
    if not 1 <= len(x) <= MAX_NAME or not x.isprintable():
        raise ProtocolError("out_of_range", f'"{key}" must be 1..{MAX_NAME} printable characters')
    return x


def _opt_str(d: dict, key: str) -> str | None:
    x = d.get(key)
    if x is None:
        return None
    if not isinstance(x, str) or len(x) > 1024:
        raise ProtocolError("bad_field", f'"{key}" must be a string of at most 1024 characters')
    return x


def _vector(d: dict, key: str, sizes: tuple[int, ...]) -> tuple[float, ...]:
    x = d.get(key)
    if not isinstance(x, list) or len(x) not in sizes:
        raise ProtocolError(
            "bad_field", f'"{key}" must be an array of {" or ".join(map(str, sizes))} numbers'
        )
    out = []
    for v in x:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ProtocolError("bad_field", f'"{key}" must hold numbers')
        if isinstance(v, int) and abs(v) > MAX_COORD:
            raise ProtocolError("out_of_range", f'"{key}" must be within +-{MAX_COORD:g} m')
        v = float(v)
        if not math.isfinite(v):
            raise ProtocolError("non_finite", f'"{key}" must be finite')
        if abs(v) > MAX_COORD:
            raise ProtocolError("out_of_range", f'"{key}" must be within +-{MAX_COORD:g} m')
        out.append(v)
    return tuple(out)


def _region(d: dict) -> tuple[float, float, float, float] | None:
    if d.get("region") is None:
        return None
    x0, y0, x1, y1 = _vector(d, "region", (4,))
    return (x0, y0, x1, y1)


def decode_client(data: Any, *, max_size: int | None = None) -> ClientMessage:
    """Decode and validate one client->server frame.

    `data` is what the WebSocket gave (bytes for a binary frame, str for a text one).
    Raises ProtocolError for anything but a valid v1/v2 client message, never another exception.
    """
    sized = isinstance(data, str | bytes | bytearray | memoryview)
    if max_size is not None and sized and len(data) > max_size:
        raise ProtocolError("too_large", f"frame of {len(data)} bytes; the limit is {max_size}")
    d = _unpack(data, _LIMITS)
    kind = d["type"]
    if kind == "pos":
        p = _vector(d, "p", (2, 3))
        yaw = None if d.get("yaw") is None else _number(d, "yaw", bound=1e3)
        return Pos(
            seq=_int(d, "seq", 0, MAX_SEQ),
            t=_number(d, "t", bound=1e12),
            p=(p[0], p[1], p[2] if len(p) == 3 else 0.0),
            yaw=yaw,
        )
    if kind == "hello":
        v = d.get("v")
        if isinstance(v, bool) or not isinstance(v, int):
            raise ProtocolError("bad_field", '"v" must be an integer')
        if v not in VERSIONS:
            raise ProtocolError("bad_version", f"protocol version {v} is not supported; use 1 or 2")
        return Hello(
            v=v,
            room=_name(d, "room", required=True),
            avatar=_name(d, "avatar", required=False),
            token=_opt_str(d, "token"),
            resume=_opt_str(d, "resume"),
            region=_region(d),
        )
    if kind == "bye":
        return Bye()
    if kind == "view":
        return View(region=_region(d))
    if kind == "ping":
        return Ping(t=_number(d, "t"))
    raise ProtocolError("unknown_type", f'unknown message type "{kind[:32]}"')


def decode_server(data: Any) -> ServerMessage:
    """Decode one server->client frame (for clients and tests).

    Raises ProtocolError for anything but a valid v1/v2 server message. Server frames may be
    larger than client ones (a spectator's state or join), so msgpack's own limits apply
    here: each is bounded by the frame's length.
    """
    d = _unpack(data, {})
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
