"""A never-reading player: a tiny receive window, reading paused, in the lobby; when and
how the server refuses it, and the kernel's queues for it meanwhile. Part of
`bench/hostile.py`."""

from __future__ import annotations

import asyncio
import socket
import time

from hostile_good import Window
from hostile_metrics import errors_by_code, gauges, measure, metrics
from hostile_server import Server
from hostile_wire import hello, open_ws, pos, recv, refusal

from server.core import protocol as P


def tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """Kernel (send, receive) queue bytes of the loopback TCP socket local_port ->
    remote_port, from /proc/net/tcp (None when there is no such socket)."""
    want = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if (cols[1], cols[2]) == want:
                tx, rx = cols[4].split(":")
                return int(tx, 16), int(rx, 16)
    return None


async def slow_reader(srv: Server, window: Window, seconds: float) -> dict:
    """A player with a tiny receive window that never reads, for `seconds`."""
    mem0 = srv.rss_mb()
    m0 = await metrics(srv)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = srv.url.split("//")[1].rstrip("/").split(":")
    sock.connect((host, int(port)))
    sock.setblocking(False)
    ws = await open_ws(srv.url, sock=sock)
    await ws.send(hello("slow"))
    assert isinstance(P.decode_server(await recv(ws)), P.Welcome)
    await ws.send(pos(1, (0.0, 0.0, 0.0), 1.0))
    ws.transport.pause_reading()
    t0 = time.perf_counter()
    refused_at = gone_at = refused_with = None
    me = sock.getsockname()[1]
    queues = {"server_send_queue_max": 0, "client_receive_queue_max": 0}

    async def watch() -> None:
        nonlocal refused_at, gone_at, refused_with
        while time.perf_counter() - t0 < seconds:
            m = await metrics(srv)
            codes = errors_by_code(m0, m)
            if refused_at is None and codes:  # too_slow, or idle_timeout: it answers no ping
                refused_at, refused_with = time.perf_counter() - t0, ",".join(codes)
            if refused_at is not None and gone_at is None and not gauges(m)["pending"]:
                gone_at = time.perf_counter() - t0
            for key, q in (("server_send_queue_max", tcp_queues(int(port), me)),
                           ("client_receive_queue_max", tcp_queues(me, int(port)))):  # fmt: skip
                if q is not None:
                    queues[key] = max(queues[key], q[0] if key.startswith("server") else q[1])
            await asyncio.sleep(0.25)

    out = await measure(srv, window, "slow", seconds, watch())
    ws.transport.resume_reading()
    if refused_at is None:  # still served: it would read on as a normal client now
        ws.transport.abort()
        err, code = "not refused in the window", None
    else:
        err, code = await refusal(ws, 5.0)
    out.update(
        refused_with=refused_with,
        kernel_queues_bytes=queues,
        refused_after_s=None if refused_at is None else round(refused_at, 2),
        disconnected_after_s=None if gone_at is None else round(gone_at, 2),
        client_got=(err, code),
        server_mem_mb_before=mem0,
    )
    return out
