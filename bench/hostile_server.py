"""The server under the hostile-traffic bench: ``python -m server`` as a subprocess on a
free loopback port, its log drained and scanned, its memory read from /proc. Part of
`bench/hostile.py`."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections import Counter
from pathlib import Path

from hostile_wire import OP_TIMEOUT

from server import cli

SERVER_FLAGS = ["--hello-timeout", "2", "--resume-grace", "1"]


class Server:
    """`python -m server` on a free loopback port; its stderr drained and scanned."""

    def __init__(self, transport: str, predictor: str, extra: list[str]) -> None:
        """Start it with SERVER_FLAGS and ``extra`` and wait until it serves; raises
        `cli.UserError` (with its log's last line) when it does not start."""
        cmd = [sys.executable, "-m", "server", "--port", "0", "--transport", transport,
               "--predictor", predictor, *SERVER_FLAGS, "--log-level", "info", *extra]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stderr=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            preexec_fn=_die_with_parent,
        )
        self.levels: Counter = Counter()
        self.tracebacks = 0
        self.errors: Counter = Counter()  # ERROR lines, digits and peers blanked
        self.url: str | None = None
        self.last_line = ""  # the log's last line (why it did not start, if it did not)
        self._serving = threading.Event()
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()  # reads the log to the end: a full pipe would stall the server
        if not self._serving.wait(120) or self.url is None:
            self.proc.kill()
            self.proc.wait()
            why = self.last_line.split("cannot start: ", 1)[-1] or "no output"
            raise cli.UserError(f"the server ({' '.join(cmd[1:])}) did not start: {why}")
        self.http = self.url.replace("ws://", "http://").rstrip("/")

    def _scan(self, line: str) -> None:
        m = re.match(r"\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line)
        if m:
            self.levels[m.group(1)] += 1
            if m.group(1) in ("ERROR", "CRITICAL"):
                msg = line.split(" ", 3)[3].strip()
                self.errors[re.sub(r"\d+", "N", msg)[:140]] += 1
        if line.startswith("Traceback"):
            self.tracebacks += 1

    def _read_log(self) -> None:
        for line in self.proc.stderr:
            self._scan(line)
            self.last_line = line.strip() or self.last_line
            if self.url is None:
                m = re.search(r"serving (ws://\S+)", line)
                if m:
                    self.url = m.group(1)
                    self._serving.set()
        self._serving.set()  # it exited (before serving, if url is None)

    def metrics(self) -> dict[str, float]:
        """Its /metrics now, one value a sample (blocking; URLError if it does not answer)."""
        with urllib.request.urlopen(self.http + "/metrics", timeout=OP_TIMEOUT) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = float(value)
        return out

    def rss_mb(self) -> dict[str, float]:
        """Its VmRSS and VmHWM, MiB."""
        return proc_memory(self.proc.pid)

    def stop(self) -> int | None:
        """SIGINT, then its exit status (None: killed after 30 s)."""
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = None
        self._drain.join(timeout=5)
        return code


def _die_with_parent() -> None:
    """In the child: SIGTERM when this benchmark dies, however it dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def proc_memory(pid: int | str = "self") -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, MiB (Linux /proc)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out
