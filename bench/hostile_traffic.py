"""Hostile connections, one bad thing each (garbage, text, not a map, unknown type, pos
before hello, NaN/inf/1e300, frames over each size limit, a pos flood, silence, aborts,
pipelined hello+close, ...), and the window that starts them at a rate and checks each got
its documented answer. Part of `bench/hostile.py`."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter

import msgpack
from hostile_wire import hello, open_ws, padded, pos, raw_pos, recv, refusal
from websockets.exceptions import ConnectionClosed

from server.core import protocol as P
from server.serve.config import Config

NAN, INF = float("nan"), float("inf")


def hostile_kinds(cfg: Config) -> dict[str, tuple[bool, object, tuple]]:
    """kind -> (after hello?, frame, documented (error code, close code)) for the server's
    limits; a None frame: done by `hostile` itself."""
    max_frame, max_hello, max_hard = cfg.max_frame, cfg.max_hello_frame, cfg.max_frame_hard
    return {
        "garbage": (False, b"\xc1\xff\x00garbage", ("bad_msgpack", 1003)),
        "trailing_bytes": (True, pos(1, (0, 0, 0), 1.0) + b"\x00", ("bad_msgpack", 1003)),
        "deep_nesting": (False, b"\x91" * 2000 + b"\xc0", ("bad_msgpack", 1003)),
        "text_frame": (False, "hello", ("text_frame", 1003)),
        "not_a_map": (False, msgpack.packb([1, 2, 3]), ("bad_message", 1008)),
        "no_type": (True, msgpack.packb({"seq": 1}), ("bad_message", 1008)),
        "unknown_type": (True, msgpack.packb({"type": "teleport"}), ("unknown_type", 1008)),
        "pos_before_hello": (False, pos(1, (0, 0, 0), 1.0), ("expected_hello", 1008)),
        "second_hello": (True, hello("x"), ("expected_hello", 1008)),
        "nan": (True, raw_pos(p=[NAN, 0.0, 0.0]), ("non_finite", 1008)),
        "inf": (True, raw_pos(p=[0.0, -INF]), ("non_finite", 1008)),
        "huge": (True, raw_pos(p=[1e300, 0.0]), ("out_of_range", 1008)),
        "bad_seq": (True, raw_pos(seq=-1), ("out_of_range", 1008)),
        "over_max_frame": (True, padded(max_frame + 1), ("too_large", 1009)),
        "over_hello_frame": (False, padded(max_hello + 1), ("too_large", 1009)),
        "over_hard_limit": (False, padded(max_hard + 1), (None, 1009)),
        "pipelined_close": (True, None, (None, 1000)),  # hello + close frame in one write
        "pipelined_oversize": (True, None, (None, 1009)),  # hello + a frame over the hard limit
        "flood": (True, None, ("rate_limited", 1008)),
        "teleporter": (True, None, (None, 1000)),  # valid, extreme samples, then bye
        "silent": (False, None, ("hello_timeout", 1008)),
        "abort_after_hello": (True, None, ("aborted", None)),
        "abort_mid_stream": (True, None, ("aborted", None)),
    }


async def hostile(url: str, kind: str, i: int, kinds: dict, limits: Config) -> tuple:
    """One hostile connection doing `kind` (of `kinds`, `hostile_kinds(limits)`); what it
    got back: (error code or None, close code or None)."""
    after_hello, frame, _ = kinds[kind]
    ws = await open_ws(url)
    name = f"h-{kind}-{i}"
    if kind in ("pipelined_close", "pipelined_oversize"):
        ws.protocol.send_binary(hello(name))
        if kind == "pipelined_close":
            ws.protocol.send_close(1000, "done")
        else:
            ws.protocol.send_binary(padded(limits.max_frame_hard + 1))
        ws.transport.writelines(ws.protocol.data_to_send())
        return await refusal(ws)
    if after_hello:
        await ws.send(hello(name))
    if kind.startswith("abort"):
        assert isinstance(P.decode_server(await recv(ws)), P.Welcome)
        if kind == "abort_mid_stream":
            for k in range(5):
                await ws.send(pos(k + 1, (random.uniform(-15, 15), 0.0, 0.0), 1.0 + 0.05 * k))
                await recv(ws)
        ws.transport.abort()
        return ("aborted", None)
    if kind == "flood":
        with contextlib.suppress(ConnectionClosed):
            for k in range(int(8 * limits.max_msg_rate)):
                await ws.send(pos(k + 1, (0.1 * k, 0.0, 0.0), 1.0 + 0.001 * k))
    elif kind == "teleporter":
        for k in range(20):
            x = (1e6, -1e6, 0.0, 999_999.5)[k % 4]
            await ws.send(pos(k + 1, (x, -x, x), 1.0 + k * (1e-9, 5.0)[k % 2]))
        await ws.send(P.encode_client(P.Bye()))
    elif frame is not None:
        await ws.send(frame)
    return await refusal(ws)


async def hostile_window(url: str, seconds: float, per_second: float, limits: Config) -> dict:
    """Start `per_second` hostile connections a second (kinds in turn) for `seconds`, for a
    server with `limits`; what they got, by kind and close code, and what was not as
    documented."""
    documented_answers = hostile_kinds(limits)
    kinds = list(documented_answers)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    tasks: list[tuple[str, asyncio.Task]] = []
    k = 0
    while loop.time() - t0 < seconds:
        kind = kinds[k % len(kinds)]
        tasks.append((kind, asyncio.create_task(hostile(url, kind, k, documented_answers, limits))))
        k += 1
        await asyncio.sleep(max(0.0, t0 + k / per_second - loop.time()))
    results = await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
    by_code: Counter = Counter()
    wrong: Counter = Counter()
    failed: Counter = Counter()
    for (kind, _), r in zip(tasks, results, strict=True):
        if isinstance(r, BaseException):
            failed[f"{kind}: {type(r).__name__}"] += 1
            continue
        by_code[str(r[1])] += 1
        if tuple(r) != documented_answers[kind][2]:
            wrong[f"{kind}: got {tuple(r)}, documented {documented_answers[kind][2]}"] += 1
    documented = Counter(documented_answers[kind][2][0] for kind, _ in tasks)
    for code in (None, "aborted"):
        documented.pop(code, None)
    return {
        "connections": len(tasks),
        "kinds": dict(Counter(kind for kind, _ in tasks)),
        "documented_errors": dict(documented),
        "by_close_code": dict(sorted(by_code.items())),
        "not_as_documented": dict(wrong),
        "client_failures": dict(failed),
    }
