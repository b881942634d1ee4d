"""Generate the parts of docs/protocol.md that come from the code: the error table and the
annotated hex dumps of a `hello`, a `pos` and a two-avatar `state` frame.

    python docs/protocol_examples.py            # print the generated blocks
    python docs/protocol_examples.py --check    # exit 1 if docs/protocol.md is out of date
    python docs/protocol_examples.py --update   # rewrite those blocks in docs/protocol.md

Every value is fixed, so the output is the same on every run. The frames are made by the
real encoders in `server.core.protocol` and decoded back before they are printed.
"""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from server.core import protocol as P  # noqa: E402
from server.core.downlink import DownlinkReckoner  # noqa: E402

DOC = ROOT / "docs" / "protocol.md"

# code -> (when it is sent, when in the session it can happen)
ERROR_NOTES: dict[str, tuple[str, str]] = {
    "text_frame": ("a text frame; v1 is binary only", "any time"),
    "bad_msgpack": (
        "not exactly one well-formed msgpack value (or over the msgpack limits)",
        "any time",
    ),
    "bad_message": ('the value is not a map, or has no string `"type"`', "any time"),
    "unknown_type": ("a `type` the server does not accept", "any time"),
    "bad_field": ("a fixed key missing or of the wrong type", "any time"),
    "non_finite": ("NaN or infinity in `t`, `p`, `yaw` or `region`", "any time"),
    "out_of_range": ("a number or string outside its documented range", "any time"),
    "bad_version": ("`hello` with `v` other than 1 or 2", "before hello (the hello itself)"),
    "expected_hello": (
        "the first message was not `hello`, or a second `hello`",
        "before or after hello",
    ),
    "hello_timeout": ("no `hello` within the hello timeout (default 5 s)", "before hello"),
    "not_a_player": ("a spectator sent `pos`", "after hello"),
    "unauthorized": (
        "the server requires join tokens and the `hello` `token` is missing, not valid "
        "(signature, algorithm), expired, or for another room or avatar",
        "in reply to hello",
    ),
    "replaced": (
        "another connection sent `hello` for this avatar and took it over (with the resume "
        "token it also took the avatar's state); do not reconnect automatically",
        "after hello",
    ),
    "rate_limited": (
        "messages sent faster than `--max-msg-rate` (default 120/s), sustained; the excess "
        "was dropped before that",
        "any time",
    ),
    "idle_timeout": (
        "nothing (no message, no pong to the server's pings) for `--idle-timeout` (default 30 s)",
        "any time",
    ),
    "internal_error": ("a server bug while handling this connection (logged)", "any time"),
    "too_slow": (
        "the client did not read its frames (`--max-dropped` states dropped in a row)",
        "after hello",
    ),
    "too_large": ("a client frame over `--max-frame` bytes (default 4096)", "any time"),
    "room_full": ("the room has `--max-room-avatars` players already", "in reply to hello"),
    "moved": (
        "the room is served by another worker (`url` says which: connect there), or this "
        "worker is draining (no `url`: look the room up again with `GET /route?room=`)",
        "in reply to `hello`",
    ),
    "server_full": (
        "the server has `--max-connections` connections already",
        "on connect, before hello",
    ),
}

KEY_NOTES = {
    "type": "message type",
    "v": "protocol version",
    "avatar": "avatar id",
    "room": "room name",
    "seq": "sample sequence number",
    "t": "client clock, seconds",
    "p": "position [x, y, z], metres",
    "tick": "tick number",
    "server_time": "server clock, seconds",
    "n": "number of records",
    "nh": "horizons per record",
    "dims": "offset components per horizon (2: x, y)",
    "rec": "n packed records",
    "dr": "v2: the downlink dead-reckoning rule",
    "threshold": "metres off the path before a record is resent",
    "heartbeat": "seconds before a record is resent anyway",
}

HORIZONS = tuple(round(0.1 * (k + 1), 1) for k in range(10))


# -- the example frames -------------------------------------------------------------------


def example_hello() -> bytes:
    return P.encode_client(P.Hello(room="lobby", avatar="alice"))


def example_pos() -> bytes:
    return P.encode_client(P.Pos(seq=17, t=12.345, p=(3.5, -1.25, 0.0)))


def example_pos_binary() -> bytes:
    return P.encode_pos_binary(P.Pos(seq=17, t=12.345, p=(3.5, -1.25, 0.0)))


def annotate_pos_binary(data: bytes) -> str:
    """The binary pos frame field by field (offset, bytes, field, value)."""
    tag, seq, t, x, y, z = P.POS_BINARY.unpack(data)
    fields = [(0, 1, "u8 tag", f"{tag:#04x}"), (1, 5, "u32 seq", str(seq)),
              (5, 13, "f64 t", repr(t)), (13, 21, "f64 x", repr(x)),
              (21, 29, "f64 y", repr(y)), (29, 37, "f64 z", repr(z))]  # fmt: skip
    return "\n".join(
        f"{i:3d}  {_hex(data[i:j]):<24}  {kind:<8} {value}" for i, j, kind, value in fields
    )


def example_state_inputs() -> dict:
    h = np.asarray(HORIZONS)
    # Handle 1 walks straight at (1.2, 0.5) m/s; handle 7 walks north at 1.4 m/s turning left.
    straight = np.stack([1.2 * h, 0.5 * h, 0 * h], axis=-1)
    v, w, th = 1.4, 0.5, math.pi / 2
    turning = np.stack(
        [
            v / w * (np.sin(th + w * h) - math.sin(th)),
            -v / w * (np.cos(th + w * h) - math.cos(th)),
            0 * h,
        ],
        axis=-1,
    )
    return dict(
        tick=123456,
        server_time=1767225612.5,
        handle=np.array([1, 7]),
        age_s=np.array([0.012, 0.047]),
        seq=np.array([17, 4242]),
        pos=np.array([[3.5, -1.25, 0.0], [-8.25, 12.0, 0.0]]),
        offsets=np.stack([straight, turning]),
        dims=2,
    )


def example_state() -> bytes:
    x = example_state_inputs()
    rec = P.pack_records(x["handle"], x["age_s"], x["seq"], x["pos"], x["offsets"], x["dims"])
    return P.encode_state(x["tick"], x["server_time"], rec, len(rec), len(HORIZONS), x["dims"])


def example_welcome_v2() -> bytes:
    return P.encode_welcome(
        P.Welcome(
            avatar="alice",
            room="lobby",
            tick_hz=20.0,
            horizons=HORIZONS,
            model="avatar-gru-h64x1-1b1cf437",
            server_time=1767225600.25,
            resume="q1w2e3r4t5y6u7i8o9p0aa",
            handle=1,
            v=2,
            dr={"threshold": 0.02, "heartbeat": 1.0},
        )
    )


def example_v2_ticks() -> tuple[list[bool], list[bool], bytes]:
    """The two avatars of `example_state` two ticks later, through the server's own rule:
    handle 1 walked on along its path, handle 7 turned harder than predicted. Returns which
    records were due one tick later (nothing new: no frame), two ticks later, and the frame."""
    x = example_state_inputs()
    h = np.asarray(HORIZONS)
    dr = DownlinkReckoner(2, h, threshold=0.02, heartbeat=1.0)
    slots = np.arange(2)
    anchor = x["server_time"] - x["age_s"]
    dr.commit(slots, anchor, x["pos"], x["offsets"], x["seq"], x["server_time"])
    t1 = x["server_time"] + 0.05  # the next tick: no new sample from either
    first = dr.due(slots, anchor, x["pos"], t1).tolist()
    t2 = x["server_time"] + 0.1  # a new sample from each, taken 0.1 s after the last
    new_anchor = anchor + 0.1
    on_path = x["pos"] + x["offsets"][:, 0]  # where each path said it would be at +0.1 s
    new_pos = on_path + np.array([[0.004, -0.003, 0.0], [-0.09, -0.04, 0.0]])
    second = dr.due(slots, new_anchor, new_pos, t2)
    new_off = x["offsets"] * np.array([1.0, 0.8])[:, None, None]  # its new prediction
    seq = x["seq"] + 2
    rec = P.pack_records(
        x["handle"][second], t2 - new_anchor[second], seq[second], new_pos[second],
        new_off[second], 2,
    )  # fmt: skip
    frame = P.encode_state(x["tick"] + 2, t2, rec, len(rec), len(HORIZONS), 2)
    return first, second.tolist(), frame


# -- a small annotating msgpack walker (only the formats these frames use) -----------------


def _hex(b: bytes) -> str:
    return " ".join(f"{c:02x}" for c in b)


class _Annotator:
    def __init__(self, data: bytes) -> None:
        self.b = data
        self.rows: list[tuple[int, bytes, str, str]] = []  # offset, bytes, msgpack, meaning

    def row(self, i: int, j: int, fmt: str, meaning: str = "") -> int:
        self.rows.append((i, self.b[i:j], fmt, meaning))
        return j

    def value(self, i: int, note: str = "", key: str | None = None) -> int:
        b, t = self.b, self.b[i]
        if t <= 0x7F:
            return self.row(i, i + 1, "positive fixint", f"{note}{t}")
        if 0x80 <= t <= 0x8F:
            n = t & 0x0F
            i = self.row(i, i + 1, f"fixmap, {n} entries", note.rstrip(": "))
            for _ in range(n):
                k_end, k = self._str_at(i)
                self.row(i, k_end, self._str_fmt(i), f"key {k!r}".replace("'", '"'))
                i = self.value(k_end, f"{k} = ", key=k)
            return i
        if 0x90 <= t <= 0x9F:
            n = t & 0x0F
            i = self.row(i, i + 1, f"fixarray, {n} elements", f"{key}: {KEY_NOTES.get(key, '')}")
            names = "xyz" if key == "p" else [f"[{j}]" for j in range(n)]
            for j in range(n):
                i = self.value(i, f"  {key} {names[j]} = ")
            return i
        if 0xA0 <= t <= 0xBF or t == 0xD9:
            end, s = self._str_at(i)
            return self.row(i, end, self._str_fmt(i), f'{note}"{s}"{self._note(key)}')
        if t == 0xC0:
            return self.row(i, i + 1, "nil", f"{note}null")
        if t in (0xC2, 0xC3):
            return self.row(i, i + 1, "false" if t == 0xC2 else "true", note + str(t == 0xC3))
        if t in (0xC4, 0xC5):
            size = 1 if t == 0xC4 else 2
            n = int.from_bytes(b[i + 1 : i + 1 + size], "big")
            start = self.row(
                i, i + 1 + size, f"bin{8 * size}, {n} bytes", f"{key}: {KEY_NOTES.get(key, '')}"
            )
            if key == "rec":
                self._records(start, n)
            else:
                self.row(start, start + n, "bin payload")
            return start + n
        if t in (0xCA, 0xCB):
            size, code = (4, ">f") if t == 0xCA else (8, ">d")
            (x,) = struct.unpack(code, b[i + 1 : i + 1 + size])
            return self.row(i, i + 1 + size, f"float{8 * size}", f"{note}{x!r}{self._note(key)}")
        if 0xCC <= t <= 0xCF:
            size = 1 << (t - 0xCC)
            x = int.from_bytes(b[i + 1 : i + 1 + size], "big")
            return self.row(i, i + 1 + size, f"uint{8 * size}", f"{note}{x}{self._note(key)}")
        if t >= 0xE0:
            return self.row(i, i + 1, "negative fixint", f"{note}{t - 256}")
        raise ValueError(f"format 0x{t:02x} at {i} is not used by these examples")

    @staticmethod
    def _note(key: str | None) -> str:
        return f"  ({KEY_NOTES[key]})" if key in KEY_NOTES else ""

    def _str_fmt(self, i: int) -> str:
        t = self.b[i]
        n = t & 0x1F if t <= 0xBF else self.b[i + 1]
        return f"{'fixstr' if t <= 0xBF else 'str8'}, {n} byte{'s' if n != 1 else ''}"

    def _str_at(self, i: int) -> tuple[int, str]:
        t = self.b[i]
        if 0xA0 <= t <= 0xBF:
            n, start = t & 0x1F, i + 1
        elif t == 0xD9:
            n, start = self.b[i + 1], i + 2
        else:
            raise ValueError(f"expected a string at {i}")
        return start + n, self.b[start : start + n].decode()

    def _records(self, start: int, nbytes: int) -> None:
        dt = P.record_dtype(len(HORIZONS), 2)
        size = dt.itemsize
        assert nbytes % size == 0
        for r in range(nbytes // size):
            o = start + r * size
            rec = np.frombuffer(self.b, dtype=dt, count=1, offset=o)[0]
            at = f"record {r} +{{:<2}} "
            self.row(o, o + 2, "u16 LE", at.format(0) + f"handle = {rec['handle']}")
            self.row(o + 2, o + 4, "u16 LE", at.format(2) + f"age = {rec['age']} ms")
            self.row(o + 4, o + 8, "u32 LE", at.format(4) + f"seq = {rec['seq']}")
            for j, axis in enumerate("xyz"):
                a, x = 8 + 4 * j, float(rec["pos"][j])
                self.row(o + a, o + a + 4, "f32 LE", at.format(a) + f"pos {axis} = {x!r} m")
            for k, h in enumerate(HORIZONS):
                a = 20 + 4 * k
                dx, dy = (int(v) for v in rec["off"][k])
                meaning = f"off[{k}] x, y = {dx}, {dy} mm  (horizon {h:.1f} s)"
                self.row(o + a, o + a + 4, "2 x i16 LE", at.format(a) + meaning)


def annotate(data: bytes) -> str:
    """An annotated, byte range by byte range, listing of one frame."""
    a = _Annotator(data)
    end = a.value(0)
    assert end == len(data), "trailing bytes"
    width = max(len(_hex(b)) for _, b, _, _ in a.rows)
    fmt_w = max(len(f) for _, _, f, _ in a.rows)
    lines = [f"{'offset':>6}  {'bytes':<{width}}  {'msgpack':<{fmt_w}}  meaning"]
    for off, b, f, meaning in a.rows:
        lines.append(f"{off:>6}  {_hex(b):<{width}}  {f:<{fmt_w}}  {meaning}".rstrip())
    return "\n".join(lines)


def hexdump(data: bytes) -> str:
    """xxd-style dump: hex offset, 16 bytes a line, printable ASCII."""
    lines = []
    for i in range(0, len(data), 16):
        chunk = data[i : i + 16]
        text = "".join(chr(c) if 32 <= c < 127 else "." for c in chunk)
        lines.append(f"{i:08x}: {_hex(chunk):<47}  {text}")
    return "\n".join(lines)


# -- the generated blocks -----------------------------------------------------------------


def render_errors() -> str:
    if set(ERROR_NOTES) != set(P.ERROR_CODES):
        raise SystemExit(
            f"ERROR_NOTES and protocol.ERROR_CODES differ: {set(ERROR_NOTES) ^ set(P.ERROR_CODES)}"
        )
    lines = ["| `code` | close code | sent when | when in the session |", "|---|---|---|---|"]
    for code, close in P.ERROR_CODES.items():
        when, phase = ERROR_NOTES[code]
        lines.append(f"| `{code}` | {close} | {when} | {phase} |")
    return "\n".join(lines)


def _section(title: str, data: bytes, decoded: str) -> str:
    return "\n".join(
        [
            f"#### {title} ({len(data)} bytes)",
            "",
            "```text",
            hexdump(data),
            "```",
            "",
            "```text",
            annotate(data),
            "```",
            "",
            decoded,
        ]
    )


def render_examples() -> str:
    hello, pos, state = example_hello(), example_pos(), example_state()
    assert P.decode_client(hello) == P.Hello(room="lobby", avatar="alice")
    assert P.decode_client(pos) == P.Pos(seq=17, t=12.345, p=(3.5, -1.25, 0.0))
    pos_bin = example_pos_binary()
    assert P.decode_pos_binary(pos_bin) == P.decode_client(pos)
    s = P.decode_server(state)
    assert isinstance(s, P.State)

    rows = [
        "Decoded (`decode_server`), and the predicted positions it gives, on the server clock",
        "(anchor = `server_time` − age; position at anchor + horizon = pos + off / 1000):",
        "",
        "```text",
        f"tick {s.tick}  server_time {s.server_time!r}  n {len(s)}  nh {len(HORIZONS)}  dims 2",
    ]
    for i in range(len(s)):
        anchor = s.server_time - s.age[i]
        rows.append(
            f"handle {int(s.handle[i])}: seq {int(s.seq[i])}, age {s.age[i]:.3f} s, "
            f"anchor {anchor:.3f}, pos ({s.pos[i, 0]:g}, {s.pos[i, 1]:g}, {s.pos[i, 2]:g})"
        )
        for k in (0, 4, 9):
            p = s.pos[i].astype(np.float64) + s.offsets[i, k].astype(np.float64)
            rows.append(
                f"    at {anchor + HORIZONS[k]:.3f} (anchor + {HORIZONS[k]:.1f} s): "
                f"({p[0]:.3f}, {p[1]:.3f}, {p[2]:.3f})"
            )
    rows.append("```")

    welcome = example_welcome_v2()
    w = P.decode_server(welcome)
    assert isinstance(w, P.Welcome) and w.v == 2 and w.dr == {"threshold": 0.02, "heartbeat": 1.0}
    first, second, v2_state = example_v2_ticks()
    s2 = P.decode_server(v2_state)
    assert first == [False, False] and second == [False, True] and s2.handle.tolist() == [7]
    v2_rows = [
        "The same two avatars on a v2 connection. At tick 123457 neither sent anything new and",
        "no heartbeat is due: **no `state` frame at all**. At tick 123458 both sent a sample:",
        "handle 1 is 5 mm from the path its viewers hold (under the 0.02 m threshold: not",
        "resent), handle 7 is 98 mm off its path (resent, with its new prediction). The",
        "viewer keeps drawing handle 1 along the path of tick 123456.",
        "",
        "```text",
        f"tick {s2.tick}  server_time {s2.server_time!r}  n {len(s2)}",
        f"handle 7: seq {int(s2.seq[0])}, age {s2.age[0]:.3f} s, "
        f"pos ({s2.pos[0, 0]:.3f}, {s2.pos[0, 1]:.3f}, {s2.pos[0, 2]:g})",
        "```",
    ]
    return "\n\n".join(
        [
            _section(
                "`hello` — a player",
                hello,
                'Decoded: `{"type": "hello", "v": 2, "room": "lobby", "avatar": "alice"}` '
                "(key order does not matter; `v` 1 asks for a full state every tick).",
            ),
            _section(
                "`welcome` — v2, with the downlink rule",
                welcome,
                "`v` 2 confirms protocol 2; `dr` is the server's resend rule "
                "(`--dr-threshold`, `--dr-heartbeat`). A v1 `welcome` has `v` 1 and no `dr`.",
            ),
            _section(
                "`pos`",
                pos,
                "Decoded: `seq` 17, `t` 12.345 s, `p` (3.5, −1.25, 0.0) m. "
                "A client may as well send float32 or integers, and a 2-element `p`.",
            ),
            "\n".join(
                [
                    f"#### binary `pos` ({len(pos_bin)} bytes)",
                    "",
                    "```text",
                    hexdump(pos_bin),
                    "```",
                    "",
                    "```text",
                    annotate_pos_binary(pos_bin),
                    "```",
                    "",
                    "The same sample as the msgpack `pos` above, for a connection whose `hello` "
                    'had `"pos_encoding": "binary"` (`decode_pos_binary` gives the same `Pos`).',
                ]
            ),
            _section(
                "`state` — two avatars, 10 horizons (0.1 … 1.0 s), dims 2", state, "\n".join(rows)
            ),
            _section("`state` on v2 — only the record that changed", v2_state, "\n".join(v2_rows)),
        ]
    )


BLOCKS = {"errors": render_errors, "examples": render_examples}


def _markers(name: str) -> tuple[str, str]:
    return (
        f"<!-- BEGIN {name}: generated by docs/protocol_examples.py, do not edit by hand -->",
        f"<!-- END {name} -->",
    )


def splice(doc: str) -> str:
    """`doc` with every generated block replaced by the current output."""
    for name, render in BLOCKS.items():
        begin, end = _markers(name)
        a, b = doc.index(begin), doc.index(end)
        doc = doc[: a + len(begin)] + "\n" + render() + "\n" + doc[b:]
    return doc


def stale_blocks(doc: str) -> list[str]:
    """Names of the generated blocks that differ from the current output ([] if up to date)."""
    fresh = splice(doc)
    out = []
    for name in BLOCKS:
        begin, end = _markers(name)
        if doc[doc.index(begin) : doc.index(end)] != fresh[fresh.index(begin) : fresh.index(end)]:
            out.append(name)
    return out


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_blocks(DOC.read_text())
        if stale:
            print(f"{DOC}: out of date ({', '.join(stale)}); run {Path(__file__).name} --update")
            return 1
        print(f"{DOC}: up to date")
        return 0
    if "--update" in argv:
        DOC.write_text(splice(DOC.read_text()))
        print(f"updated {DOC}")
        return 0
    for name, render in BLOCKS.items():
        begin, end = _markers(name)
        print(begin, render(), end, sep="\n", end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
