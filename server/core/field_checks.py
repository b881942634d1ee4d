"""Checks of the fields of an untrusted msgpack map, for `server.core.protocol`'s decoders.

Each takes the decoded map and a key and returns the checked value, or raises
`ProtocolError` with the code that names the broken rule (``bad_field``, ``non_finite``,
``out_of_range``; ``text_frame``, ``bad_msgpack``, ``bad_message`` for the frame itself),
never another exception. Pure: no asyncio, no sockets, no torch.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack

from server.core.messages import MAX_COORD, MAX_NAME, ProtocolError


def unpack_map(data: Any, limits: dict[str, int]) -> dict:
    """One frame -> its msgpack map with a string ``"type"``, within msgpack's `limits`."""
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


def number(d: dict, key: str, *, bound: float | None = None) -> float:
    """``d[key]`` as a finite float (an int beyond 2**53 refused), within +-`bound`."""
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


def integer(d: dict, key: str, lo: int, hi: int) -> int:
    """``d[key]`` as an int (not a bool) in [lo, hi]."""
    x = d.get(key)
    if isinstance(x, bool) or not isinstance(x, int):
        raise ProtocolError("bad_field", f'"{key}" must be an integer')
    if not lo <= x <= hi:
        raise ProtocolError("out_of_range", f'"{key}" must be in [{lo}, {hi}]')
    return x


def name(d: dict, key: str, *, required: bool) -> str | None:
    """``d[key]`` as an avatar or room name: 1..MAX_NAME printable characters (None if absent
    and not `required`)."""
    x = d.get(key)
    if x is None and not required:
        return None
    if not isinstance(x, str):
        raise ProtocolError("bad_field", f'"{key}" must be a string')
    if not 1 <= len(x) <= MAX_NAME or not x.isprintable():
        raise ProtocolError("out_of_range", f'"{key}" must be 1..{MAX_NAME} printable characters')
    return x


def optional_str(d: dict, key: str) -> str | None:
    """``d[key]`` as a string of at most 1024 characters, or None if absent."""
    x = d.get(key)
    if x is None:
        return None
    if not isinstance(x, str) or len(x) > 1024:
        raise ProtocolError("bad_field", f'"{key}" must be a string of at most 1024 characters')
    return x


def vector(d: dict, key: str, sizes: tuple[int, ...]) -> tuple[float, ...]:
    """``d[key]`` as a tuple of finite coordinates within +-MAX_COORD, of one of `sizes`."""
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


def region(d: dict) -> tuple[float, float, float, float] | None:
    """``d["region"]`` as (x0, y0, x1, y1), or None if absent."""
    if d.get("region") is None:
        return None
    x0, y0, x1, y1 = vector(d, "region", (4,))
    return (x0, y0, x1, y1)
