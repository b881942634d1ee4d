"""The server's side of a load run, read from the parent process: /metrics (`fetch_metrics`,
several workers' texts summed by `merge_metrics`, histogram quantiles, counters), the server
processes' CPU (their whole process trees: `client_demo.proctree`; the PID found from the
port by `find_server_pid`) and the machine's accept-queue overflows; `scrape` reads it all
at once and never raises."""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from client_demo import proctree
from server import cli

CONNECT_TRY = 0.5  # seconds for one connection attempt of a /metrics read


def find_server_pid(url: str) -> int | None:
    """The PID listening on the URL's port on this machine, if it can be found (Linux)."""
    port = urlsplit(url).port
    try:
        inodes = set()
        for path in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(path) as f:
                for line in f.readlines()[1:]:
                    parts = line.split()
                    if int(parts[1].rsplit(":", 1)[1], 16) == port and parts[3] == "0A":
                        inodes.add(parts[9])
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with_fd = f"/proc/{pid}/fd"
            try:
                for fd in os.listdir(with_fd):
                    link = os.readlink(f"{with_fd}/{fd}")
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        return int(pid)
            except OSError:
                continue
    except OSError:
        return None
    return None


def metrics_url(url: str) -> str:
    """The server's /metrics URL for its WebSocket URL."""
    u = urlsplit(url)
    return f"http://{u.hostname}:{u.port}/metrics"


def fetch_metrics(url: str, timeout: float = 10.0) -> str:
    """The server's /metrics text (same host and port as the WebSocket URL), within `timeout` s.

    A connection not accepted within CONNECT_TRY s is tried afresh until the timeout: a
    full accept queue (a connection storm) drops SYNs, which the kernel retries only after
    1, 3, 7 ... s. Raises OSError: refused, timed out, or an HTTP status other than 200.
    """
    import http.client
    from urllib.error import HTTPError

    where = metrics_url(url)
    u = urlsplit(where)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        conn = http.client.HTTPConnection(
            u.hostname, u.port, timeout=max(0.01, min(CONNECT_TRY, left))
        )
        try:
            try:
                conn.connect()
            except TimeoutError:
                if deadline - time.monotonic() <= 0:
                    raise
                continue
            conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
            conn.request("GET", u.path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise HTTPError(where, resp.status, resp.reason, resp.headers, None)
            return body.decode()
        except http.client.HTTPException as e:  # not HTTP: an OSError like the others
            raise OSError(f"{where}: {type(e).__name__}: {e}") from None
        finally:
            conn.close()


def _sample_line(line: str) -> tuple[str, float] | None:
    """(name with its labels as written, value) of one exposition line; None for a
    comment, a blank line or one that does not parse."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    if "}" in line:  # a label value may hold spaces (and braces): split after the last }
        cut = line.rindex("}") + 1
        key, rest = line[:cut], line[cut:].split()
    else:
        key, *rest = line.split()
    try:
        return key, float(rest[0])  # a timestamp after the value, if any, is dropped
    except (IndexError, ValueError):
        return None


def _prom_float(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def merge_metrics(texts: list[str]) -> str:
    """Several servers' /metrics texts as one: the samples with the same name and labels
    summed over the texts (histogram buckets, _sum and _count, counters and the
    connections gauge add up: the histogram of the merged buckets is that of all the
    servers' observations together), in the order first seen; comment lines dropped.
    Pure. (A gauge that does not add up, e.g. a start time, is summed all the same.)"""
    sums: dict[str, float] = {}
    for text in texts:
        for line in text.splitlines():
            sample = _sample_line(line)
            if sample is not None:
                key, v = sample
                sums[key] = sums.get(key, 0.0) + v
    return "".join(f"{key} {_prom_float(v)}\n" for key, v in sums.items())


def _buckets(metrics: str, name: str) -> list[tuple[float, float]]:
    return [
        (math.inf if le == "+Inf" else float(le), float(v))
        for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', metrics, re.M)
    ]


def histogram_quantiles(before: str, after: str, name: str, qs=(0.5, 0.99)) -> dict:
    """Quantiles (ms) of a Prometheus histogram over the window between two scrapes."""
    b = dict(_buckets(before, name))
    return bucket_quantiles([(le, n - b.get(le, 0.0)) for le, n in _buckets(after, name)], qs)


def bucket_quantiles(rows: list[tuple[float, float]], qs=(0.5, 0.99)) -> dict:
    """Quantiles (ms) from cumulative histogram buckets [(le seconds, count)], sorted by le,
    interpolated within a bucket as Prometheus' histogram_quantile; None when empty."""
    total = rows[-1][1] if rows else 0.0
    out = {}
    for q in qs:
        val, lo_le, lo_n = None, 0.0, 0.0
        for le, n in rows:
            if total > 0 and n >= q * total:
                hi = le if math.isfinite(le) else lo_le
                val = 1000 * (lo_le + (hi - lo_le) * (q * total - lo_n) / max(n - lo_n, 1e-12))
                break
            lo_le, lo_n = le, n
        out[f"p{round(q * 100)}"] = val
    return out


def series(metrics: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of one sample (`name` with exactly `labels`), None when it is not there."""
    if labels:
        inner = ",".join(f'{k}="{re.escape(v)}"' for k, v in labels.items())
        pattern = rf"^{re.escape(name)}\{{{inner}\}} (\S+)$"
    else:
        pattern = rf"^{re.escape(name)} (\S+)$"
    m = re.search(pattern, metrics, re.M)
    return float(m.group(1)) if m else None


def counter(metrics: str, name: str, labels: dict[str, str] | None = None) -> float:
    """A counter's (or gauge's) value, 0 when the server does not export it."""
    v = series(metrics, name, labels)
    return 0.0 if v is None else v


def listen_overflows() -> int | None:
    """The machine's count of connections dropped by a full accept queue (Linux
    /proc/net/netstat TcpExt ListenOverflows; every listener on the machine), None elsewhere."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            row = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            with contextlib.suppress(KeyError, ValueError):
                return int(row["ListenOverflows"])
    return None


@dataclass
class Scrape:
    """One read of /metrics (and the server's CPU) from the parent: `text` None when it
    failed (`why`); `t` the wall time in the middle of the request, `took` its seconds (a
    server that answers late makes the middle a guess), `cpu` read when it was sent, at
    `t_sent`."""

    text: str | None = None
    t: float = 0.0
    cpu: float | None = None
    why: str | None = None
    took: float = 0.0
    t_sent: float = 0.0


def pid_list(pids) -> list[int]:
    """None, a PID or PIDs -> the distinct PIDs, in order."""
    if pids is None:
        return []
    return list(dict.fromkeys(int(p) for p in ([pids] if isinstance(pids, int) else pids) if p))


def scrape(
    url: str | list[str], server_pid: int | list[int] | None = None, timeout: float = 10.0
) -> Scrape:
    """Read /metrics and the server's CPU now; never raises (a failure is in `why`).

    Several URLs (a cluster's workers): every /metrics is read at once (one thread each)
    and the texts merged (`merge_metrics`); the read fails if any one does; `took` is the
    slowest read. `cpu` is the CPU seconds of the server PIDs' whole process trees (a
    step worker, a cluster's workers: `proctree`), None if one cannot be read; a server in
    this very process counts without this process's children (the load tool's own)."""
    urls = [url] if isinstance(url, str) else list(dict.fromkeys(url))
    pids = pid_list(server_pid)
    t0 = time.time()
    cpu = None
    if pids:
        ours = proctree.children(os.getpid()) if os.getpid() in pids else []
        with contextlib.suppress(OSError, ValueError, IndexError):
            cpu = proctree.tree_cpu_s(pids, exclude=ours)

    def read(u: str) -> tuple[str | None, str | None, float]:
        t = time.time()
        try:
            return fetch_metrics(u, timeout), None, time.time() - t
        except (OSError, ValueError) as e:
            return None, f"{metrics_url(u)}: {cli.first_line(e)}", time.time() - t

    if len(urls) == 1:
        reads = [read(urls[0])]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(urls)) as pool:
            reads = list(pool.map(read, urls))
    t1 = time.time()
    whys = [w for _, w, _ in reads if w]
    text = None
    if not whys:
        text = reads[0][0] if len(reads) == 1 else merge_metrics([t for t, _, _ in reads])
    took = max(k for _, _, k in reads) if len(reads) > 1 else t1 - t0
    return Scrape(text, (t0 + t1) / 2, cpu, "; ".join(whys) or None, took, t0)
