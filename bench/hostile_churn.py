"""Churn: players that connect, say hello, send a pos and go (a third aborted without a
close frame, a third closing, a third saying bye), a number at a time, in rooms of their
own. Part of `bench/hostile.py`."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from hostile_wire import OP_TIMEOUT, hello, open_ws, pos, recv, refusal

from server.core import protocol as P


async def churn(url: str, n: int, concurrency: int) -> dict:
    """`n` players through the server, `concurrency` at a time; their outcomes, the
    failures (by exception) and the rate."""
    todo = list(range(n))
    codes: Counter = Counter()
    failures: Counter = Counter()

    async def one(i: int) -> None:
        ws = await open_ws(url)
        await ws.send(hello(f"c{i}", room=f"churn{i % 10}"))
        assert isinstance(P.decode_server(await recv(ws)), P.Welcome)
        await ws.send(pos(1, (float(i % 40), 0.0, 0.0), 1.0))
        mode = i % 3
        if mode == 0:
            ws.transport.abort()
            codes["aborted"] += 1
        elif mode == 1:
            await asyncio.wait_for(ws.close(), OP_TIMEOUT)
            codes[f"closed {ws.close_code}"] += 1
        else:
            await ws.send(P.encode_client(P.Bye()))
            err, code = await refusal(ws)
            codes[f"bye -> {err} {code}"] += 1

    async def worker() -> None:
        while todo:
            i = todo.pop()
            try:
                await one(i)
            except Exception as e:
                failures[type(e).__name__] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {
        "connections": n,
        "wall_s": round(wall, 2),
        "per_s": round(n / wall, 1),
        "outcomes": dict(codes),
        "failures": dict(failures),
    }
