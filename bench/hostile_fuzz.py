"""Fuzzing `server.core.protocol.decode_client` in this process: random frames, mutated
valid frames, random msgpack structures and text, seeded; anything but ProtocolError is a
bug, and what it accepts must survive an encode/decode round trip. Every bytes frame that
starts with the binary pos tag also goes to `decode_pos_binary` (what a server does for a
player that asked for binary pos), under the same rule. Part of `bench/hostile.py`."""

from __future__ import annotations

import random
import resource
import time
from collections import Counter

import msgpack
from hostile_server import proc_memory

from server.core import protocol as P

NAN, INF = float("nan"), float("inf")


def _corpus() -> list[bytes]:
    msgs = [
        P.Hello(room="lobby", avatar="alice"),
        P.Hello(room="r", avatar=None, region=(0.0, 0.0, 10.0, 10.0)),
        P.Hello(room="r", avatar="b", token="t" * 40, resume="x" * 22),
        P.Pos(seq=17, t=12.345, p=(3.5, -1.25, 0.0)),
        P.Pos(seq=2**32 - 1, t=1e9, p=(1e6, -1e6, 0.5), yaw=3.0),
        P.Bye(),
        P.View(region=(-5.0, -5.0, 5.0, 5.0)),
        P.View(region=None),
        P.Ping(t=123.0),
    ]
    frames = [P.encode_client(m) for m in msgs]
    frames.append(P.encode_pos_binary(P.Pos(seq=17, t=12.345, p=(3.5, -1.25, 0.0))))
    frames.append(P.encode_pos_binary(P.Pos(seq=2**32 - 1, t=-1e12, p=(1e6, -1e6, 0.0))))
    frames.append(msgpack.packb({"type": "pos", "seq": 1, "t": 1, "p": [1, 2]}))
    frames.append(msgpack.packb({"type": "pos", "seq": 1, "t": 1.5, "p": [1.0, 2.0], "x": {}}))
    return frames


_TYPES = ["hello", "pos", "bye", "view", "ping", "state", "", "HELLO", "pos\x00", "welcome"]
_KEYS = ["type", "v", "room", "avatar", "token", "resume", "region", "seq", "t", "p", "yaw"]


def _value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if r < 0.15:
        return rng.choice(
            [0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**53, 2**53 + 1, -(2**63), 2**64 - 1]
        )
    if r < 0.35:
        return rng.choice([0.0, -0.0, 1.5, 1e6, 1e6 + 1, -1e7, 1e12, 1e300, NAN, INF, -INF, 5e-324])
    if r < 0.45:
        return rng.choice([True, False, None])
    if r < 0.6:
        n = rng.choice([0, 1, 5, 64, 65, 300, 5000])
        return "".join(rng.choices("ab \x00\x1f\x7f\u00a0\u2028é😀", k=n))
    if r < 0.68:
        return rng.randbytes(rng.choice([0, 3, 100, 5000]))
    if r < 0.72:
        return msgpack.ExtType(rng.randrange(128), rng.randbytes(rng.choice([0, 4, 8, 12])))
    if r < 0.74:
        return msgpack.Timestamp(rng.randrange(0, 2**34), rng.randrange(0, 10**9))
    if depth < 3 and r < 0.9:
        n = rng.choice([0, 1, 2, 3, 4, 65])
        if n > 4:  # over msgpack's array limit: plain numbers, or this is all we do
            return [rng.random() for _ in range(n)]
        return [_value(rng, depth + 1) for _ in range(n)]
    if depth < 3:
        return {rng.choice(_KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(0, 5))}
    return rng.random()


_TEMPLATES = [
    {"type": "hello", "v": 1, "room": "lobby", "avatar": "a"},
    {"type": "hello", "v": 1, "room": "lobby", "region": [0, 0, 1, 1]},
    {"type": "pos", "seq": 1, "t": 1.0, "p": [0.0, 0.0, 0.0], "yaw": 0.5},
    {"type": "view", "region": [0.0, 0.0, 5.0, 5.0]},
    {"type": "ping", "t": 1.0},
    {"type": "bye"},
]


def _structured(rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # a valid message with one or two fields changed or dropped
        d = dict(rng.choice(_TEMPLATES))
        for _ in range(rng.randint(1, 2)):
            key = rng.choice(_KEYS)
            if rng.random() < 0.2:
                d.pop(key, None)
            elif key in ("p", "region") and rng.random() < 0.6:
                d[key] = [rng.choice([0.0, 1e6, -1e6 - 1, 2**53 + 1, NAN, True, "1", None])
                          for _ in range(rng.choice([0, 2, 3, 4, 5]))]  # fmt: skip
            else:
                d[key] = _value(rng)
        return msgpack.packb(d, use_bin_type=True)
    d = {}
    if rng.random() < 0.9:
        d["type"] = rng.choice(_TYPES) if rng.random() < 0.9 else _value(rng)
    for key in rng.sample(_KEYS[1:], rng.randrange(0, len(_KEYS))):
        if rng.random() < 0.5 and key in ("p", "region"):
            d[key] = [_value(rng) if rng.random() < 0.3 else rng.uniform(-2e6, 2e6)
                      for _ in range(rng.choice([2, 3, 4, 5]))]  # fmt: skip
        elif key in ("room", "avatar") and rng.random() < 0.5:
            d[key] = "x" * rng.choice([1, 64, 65])
        else:
            d[key] = _value(rng)
    if rng.random() < 0.05:  # keys that msgpack's strict_map_key refuses
        d = {**d, rng.choice([1, b"type", 2.5]): 1}
    try:
        return msgpack.packb(d, use_bin_type=rng.random() < 0.9)
    except (TypeError, ValueError, OverflowError):
        return b"\x80"


def _mutate(rng: random.Random, frame: bytes, corpus: list[bytes]) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
        if op == 0 and b:  # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # an interesting byte
            b[rng.randrange(len(b))] = rng.choice(
                [0x00, 0x7F, 0x80, 0x90, 0xA0, 0xC0, 0xC1, 0xC4, 0xCA, 0xCB, 0xCF, 0xD3, 0xDC,
                 0xDD, 0xDE, 0xDF, 0xFF, rng.randrange(256)]
            )  # fmt: skip
        elif op == 2:  # insert random bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and b:  # delete a range
            i = rng.randrange(len(b))
            del b[i : i + rng.randint(1, 8)]
        elif op == 4 and b:  # truncate
            del b[rng.randrange(len(b)) :]
        elif op == 5 and b:  # duplicate a chunk
            i = rng.randrange(len(b))
            b[i:i] = b[i : i + rng.randint(1, 16)]
        else:  # splice with another frame
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            b = b[: rng.randrange(len(b) + 1)] + other[cut:]
    return bytes(b)


def fuzz(n: int, seed: int, max_size: int) -> dict:
    """Feed `n` seeded random frames to decode_client (at the server's `max_size`, its
    max_frame); count outcomes. Valid results must survive an encode/decode round trip
    unchanged."""
    rng = random.Random(seed)
    corpus = _corpus()
    codes: Counter = Counter()
    accepted: Counter = Counter()
    others: Counter = Counter()
    examples: dict[str, str] = {}
    roundtrip_bad = 0
    binary: Counter = Counter()  # binary pos decoder: "accepted" or the ProtocolError code
    tag = bytes([P.POS_BINARY_TAG])
    mem0 = proc_memory()
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    for _ in range(n):
        r = rng.random()
        if r < 0.2:
            frame = rng.randbytes(rng.choice([0, 1, 2, 5, 20, 100, 300]))
        elif r < 0.6:
            frame = _mutate(rng, rng.choice(corpus), corpus)
        elif r < 0.93:
            frame = _structured(rng)
        elif r < 0.98:
            frame = "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(40)))
        else:
            frame = rng.choice(corpus) + rng.randbytes(rng.choice([max_size, 10]))
        if isinstance(frame, bytes) and frame[:1] == tag:
            try:
                pos = P.decode_pos_binary(frame)
            except P.ProtocolError as e:
                binary[e.code] += 1
            except Exception as e:  # a bug, as below
                others[type(e).__name__] += 1
                examples.setdefault(type(e).__name__, repr(frame[:200]))
            else:
                binary["accepted"] += 1
                if P.encode_pos_binary(pos) != frame:
                    roundtrip_bad += 1
                    examples.setdefault("roundtrip", repr(frame[:200]))
        try:
            msg = P.decode_client(frame, max_size=max_size)
        except P.ProtocolError as e:
            codes[e.code] += 1
            continue
        except Exception as e:  # a bug: decode must raise nothing but ProtocolError
            others[type(e).__name__] += 1
            examples.setdefault(type(e).__name__, repr(frame[:200]))
            continue
        accepted[type(msg).__name__] += 1
        if P.decode_client(P.encode_client(msg)) != msg:
            roundtrip_bad += 1
            examples.setdefault("roundtrip", repr(frame[:200]))
    wall = time.perf_counter() - t0
    mem1 = proc_memory()
    return {
        "frames": n,
        "seed": seed,
        "wall_s": round(wall, 2),
        "accepted": dict(accepted),
        "protocol_errors": dict(codes.most_common()),
        "binary_pos": dict(binary.most_common()),
        "other_exceptions": dict(others),
        "examples": examples,
        "roundtrip_mismatches": roundtrip_bad,
        "rss_mb_before": round(mem0["VmRSS"], 1),
        "rss_mb_after": round(mem1["VmRSS"], 1),
        "peak_rss_growth_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - maxrss0, 1
        ),
    }
