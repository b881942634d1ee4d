"""The wire protocol's vocabulary: versions, close and error codes, limits, the messages.

What each message holds, as frozen dataclasses, and `ProtocolError` with the close code
each error code closes with; no bytes here: `server.core.protocol` encodes, decodes and
validates them (and re-exports all of this, so clients import that one module).
``docs/protocol.md`` mirrors the tables. Pure: no asyncio, no sockets, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
MAX_TIME = 1e12  # seconds; a pos's t beyond is refused
POS_ENCODINGS = ("msgpack", "binary")  # hello "pos_encoding": how this player sends pos


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
    pos_encoding: str = "msgpack"  # "binary": this player will send fixed-layout pos frames


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
    pos_encoding: str = "msgpack"  # "binary": the server takes the hello's binary pos frames


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
