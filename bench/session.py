"""CPU per received `pos` on the server's input path, without a socket: `python bench/session.py`.

    python bench/session.py [--messages 50000] [--repeats 5] [--encoding msgpack|binary|both]
                            [--json FILE]

Feeds one admitted `server.core.session.Session` `pos` frames as a client sends them
(msgpack, or the binary pos a hello may ask for) and times `Session.receive` (decode and checks, the world's order rule, staging in
the engine): the Python share of each message the server receives, best of `--repeats`.
The socket's own cost (the event loop's read, the transport's framing) is not in it.
"""

from __future__ import annotations

import argparse
import json
import time

from server import cli
from server.core import protocol as P
from server.core import session as S
from server.core.engine import TickEngine
from server.core.stats import Stats
from server.core.world import World


def time_receive(messages: int, repeats: int, encoding: str = "msgpack") -> float:
    """Best seconds per `Session.receive` of a pos over `repeats` runs of `messages`,
    sent in `encoding` ("msgpack" or "binary"). Raises ValueError for another encoding."""
    if encoding not in P.POS_ENCODINGS:
        raise ValueError(f"encoding must be one of {P.POS_ENCODINGS}")
    encode = P.encode_pos_binary if encoding == "binary" else P.encode_client
    world = World(TickEngine(None, device="cpu"))
    session = S.Session(world, S.SessionRules(max_msg_rate=1e9), Stats(), 0.0)
    session.receive(P.encode_client(P.Hello(room="r", avatar="a", pos_encoding=encoding)), 0.0)
    world.begin_tick()
    best = float("inf")
    for rep in range(repeats):
        base = rep * messages
        frames = [
            encode(P.Pos(seq=k, t=0.05 * (base + k), p=(0.1 * k, 0.0, 1.0)))
            for k in range(messages)
        ]
        t0 = time.perf_counter()
        for k, frame in enumerate(frames):
            session.receive(frame, 0.05 * (base + k))
        best = min(best, time.perf_counter() - t0)
    if session.closed or session.stats.rate_dropped:
        raise RuntimeError("the session refused or dropped the bench's messages")
    return best / messages


@cli.command("python bench/session.py")
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python bench/session.py", description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--encoding", choices=[*P.POS_ENCODINGS, "both"], default="both")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if args.messages < 1 or args.repeats < 1:
        ap.error("--messages and --repeats must be at least 1")
    encodings = P.POS_ENCODINGS if args.encoding == "both" else (args.encoding,)
    out: dict = {"messages": args.messages, "repeats": args.repeats, "us_per_pos": {}}
    for enc in encodings:
        us = time_receive(args.messages, args.repeats, enc) * 1e6
        out["us_per_pos"][enc] = us
        print(
            f"Session.receive, {enc} pos: {us:.2f} us of CPU per pos "
            f"(best of {args.repeats} x {args.messages})"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
