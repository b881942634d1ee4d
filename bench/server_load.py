"""A simple end-to-end load run: N simulated clients against a real server process.

    python bench/server_load.py --clients 200 --rate 20 --duration 20 [--predictor cv] [--json OUT]

Starts ``python -m server`` on a free loopback port (its own process), connects N clients
in this process (one asyncio loop, uvloop when installed), each streaming the simulator's
motion at --rate Hz on absolute deadlines, and measures:
- bytes per avatar record in `state` frames, frames received vs expected;
- end-to-end latency: a `pos` sent -> the first `state` carrying a prediction from that
  seq, on every --sample-every-th client (the others only count frames); clients send at
  random phases of the period, so this includes the wait for the next tick (0 to 1/tick_hz);
- the server's tick duration p50/p99 and overruns from /metrics (histogram, interpolated);
- CPU seconds of the server process and of this generator.
Bounded: --duration seconds of streaming, then everything stops. The full load-test
tool (ramps, worker processes, sweeps) is `client_demo.loadtest`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import sys
import time
import urllib.request

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server import protocol as P
from training.simulate import SimConfig, simulate


def histogram_quantiles(metrics: str, name: str, qs=(0.5, 0.99)) -> dict[str, float]:
    """Quantiles (seconds) of a Prometheus histogram from its cumulative buckets."""
    buckets = [
        (float("inf") if le == "+Inf" else float(le), float(v))
        for le, v in re.findall(rf'{name}_bucket{{le="([^"]+)"}} (\S+)', metrics)
    ]
    total = buckets[-1][1] if buckets else 0.0
    out = {}
    for q in qs:
        target, lo_le, lo_n = q * total, 0.0, 0.0
        val = float("nan")
        for le, n in buckets:
            if n >= target and total > 0:
                hi = le if le != float("inf") else lo_le
                val = lo_le + (hi - lo_le) * ((target - lo_n) / max(n - lo_n, 1e-12))
                break
            lo_le, lo_n = le, n
        out[f"p{round(q * 100)}"] = val
    return out


def counter(metrics: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", metrics, re.M)
    return float(m.group(1)) if m else float("nan")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LoadClient:
    def __init__(self, name: str, track, sample: bool) -> None:
        self.name, self.track, self.sample = name, track, sample
        self.sent_at: dict[int, float] = {}
        self.latency: list[float] = []
        self.frames = self.states = self.bytes = self.records = self.record_bytes = 0
        self.sent = 0
        self.states_in_window = 0
        self.phase = 0.0  # fraction of a send period: clients are spread over the tick
        self.window = (0.0, 0.0)
        self.handle: int | None = None
        self.error: str | None = None

    async def run(self, url: str, rate: float, t_start: float, t_end: float) -> None:
        try:
            async with connect(url, max_size=2**22, compression=None) as ws:
                await ws.send(P.encode_client(P.Hello(room="load", avatar=self.name)))
                self.handle = P.decode_server(await ws.recv()).handle
                reader = asyncio.create_task(self._read(ws))
                k = 0
                loop = asyncio.get_running_loop()
                while True:
                    deadline = t_start + (k + self.phase) / rate
                    if deadline >= t_end:
                        break
                    await asyncio.sleep(max(0.0, deadline - loop.time()))
                    now = time.monotonic()
                    p = self.track.truth_at(np.array([now - t_start]))[0]
                    await ws.send(P.encode_client(P.Pos(seq=k, t=now, p=tuple(p))))
                    if self.sample:
                        self.sent_at[k] = now
                    self.sent += 1
                    k += 1
                reader.cancel()
        except (OSError, ConnectionClosed) as e:
            self.error = type(e).__name__

    async def _read(self, ws) -> None:
        last_seq = -1
        async for data in ws:
            self.frames += 1
            self.bytes += len(data)
            if not self.sample:
                continue
            msg = P.decode_server(data)
            if not isinstance(msg, P.State):
                continue
            self.states += 1
            if self.window[0] <= time.monotonic() < self.window[1]:
                self.states_in_window += 1
            if len(msg):
                self.records += len(msg)
                self.record_bytes += len(data)  # header share included
            own = np.flatnonzero(msg.handle == self.handle)
            if len(own):
                seq = int(msg.seq[own[0]])
                if seq > last_seq and seq in self.sent_at:
                    self.latency.append(time.monotonic() - self.sent_at[seq])
                    last_seq = seq


def fetch(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.read().decode()


async def main_async(args) -> dict:
    cmd = [sys.executable, "-m", "server", "--port", "0", "--tick-hz", str(args.tick_hz)]
    cmd += ["--predictor", args.predictor, "--aoi-radius", str(args.aoi_radius)]
    proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE)
    try:
        line = ""
        for _ in range(50):
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            if "serving" in line or not line:
                break
        m = re.search(r"serving (ws://\S+)", line)
        if not m:
            raise RuntimeError(f"server did not start: {line!r}")
        url = m.group(1)
        port = int(url.rsplit(":", 1)[1].strip("/"))
        drain = asyncio.create_task(_drain(proc.stderr))
        tracks = simulate(
            args.clients, args.duration + 5, seed=args.seed, config=SimConfig(world_size=args.world)
        )
        clients = [
            LoadClient(f"bot{i:04d}", tr, i % args.sample_every == 0) for i, tr in enumerate(tracks)
        ]
        loop = asyncio.get_running_loop()
        before = fetch(port, "/metrics")
        cpu_srv0, cpu_gen0 = cpu_seconds(proc.pid), _self_cpu()
        t_start = loop.time() + 1.0  # everyone connects first
        t_end = t_start + args.duration
        phases = np.random.default_rng(args.seed).random(len(clients))
        for c, ph in zip(clients, phases, strict=True):  # loop.time() is time.monotonic()
            c.window = (t_start + 0.5, t_end - 0.5)
            c.phase = float(ph)
        await asyncio.gather(*(c.run(url, args.rate, t_start, t_end) for c in clients))
        after = fetch(port, "/metrics")
        cpu_srv, cpu_gen = cpu_seconds(proc.pid) - cpu_srv0, _self_cpu() - cpu_gen0
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        drain.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lat = np.array([x for c in clients for x in c.latency]) * 1000
    sampled = [c for c in clients if c.sample]
    recs = sum(c.records for c in sampled)
    ticks = counter(after, "avatar_ticks_total") - counter(before, "avatar_ticks_total")
    tick_q = histogram_quantiles(after, "avatar_tick_seconds")
    step_q = histogram_quantiles(after, "avatar_model_step_seconds")
    frames = sum(c.frames for c in clients)
    return {
        "clients": args.clients,
        "rate_hz": args.rate,
        "tick_hz": args.tick_hz,
        "predictor": args.predictor,
        "duration_s": args.duration,
        "errors": sum(c.error is not None for c in clients),
        "pos_sent": sum(c.sent for c in clients),
        "frames_received": frames,
        "state_frames_received_fraction": (
            sum(c.states_in_window for c in sampled)
            / (len(sampled) * (args.duration - 1.0) * args.tick_hz)
        ),
        "state_bytes_per_avatar": (sum(c.record_bytes for c in sampled) / recs) if recs else None,
        "avatars_per_state": recs / max(1, sum(c.states for c in sampled)),
        "bytes_in_per_s": sum(c.bytes for c in clients) / args.duration,
        "e2e_ms": {
            k: float(np.percentile(lat, q)) if len(lat) else None
            for k, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))
        },
        "e2e_samples": len(lat),
        "tick_ms": {k: v * 1000 for k, v in tick_q.items()},
        "model_step_ms": {k: v * 1000 for k, v in step_q.items()},
        "ticks": ticks,
        "overruns": counter(after, "avatar_tick_overruns_total")
        - counter(before, "avatar_tick_overruns_total"),
        "server_cpu_s_per_s": cpu_srv / args.duration,
        "generator_cpu_s_per_s": cpu_gen / args.duration,
    }


async def _drain(stream) -> None:
    while await stream.readline():
        pass


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0, help="pos messages per client per second")
    ap.add_argument("--tick-hz", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of streaming")
    ap.add_argument("--predictor", choices=("gru", "cv"), default="gru")
    ap.add_argument("--aoi-radius", type=float, default=30.0)
    ap.add_argument("--world", type=float, default=120.0, help="side of the simulated world, m")
    ap.add_argument("--sample-every", type=int, default=10, help="decode every k-th client")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    try:
        import uvloop

        res = uvloop.run(main_async(args))
    except ImportError:
        res = asyncio.run(main_async(args))
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
