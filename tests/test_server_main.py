"""`python -m server` as a real process: the start line, SIGHUP / --watch-model reloads, then
SIGTERM closes clients with 1001."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
import urllib.request

import numpy as np
import torch
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.__main__ import main
from server.core import protocol as P
from server.core.model import default_checkpoint_path


def test_help_documents_every_flag(capsys):
    with contextlib.suppress(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--host",
        "--port",
        "--tick-hz",
        "--model",
        "--device",
        "--aoi-cap",
        "--predictor",
    ):
        assert flag in text


def test_bad_model_path_fails_fast(tmp_path, caplog):
    assert main(["--port", "0", "--model", str(tmp_path / "missing.pt")]) == 1
    assert "cannot start" in caplog.text


async def test_process_starts_serves_and_exits_on_sigterm():
    env = {**os.environ, "AVATAR_TICK_HZ": "40", "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "--port", "0", stderr=asyncio.subprocess.PIPE, env=env
    )
    try:
        line = ""
        for _ in range(50):  # log lines until the start line (bounded)
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            if "serving" in line or not line:
                break
        m = re.search(r"serving (ws://\S+) .*device=(\S+) model=(\S+) tick=40 Hz", line)
        assert m, line
        url, _device, model = m.groups()
        async with connect(url) as ws:
            await ws.send(P.encode_client(P.Hello(room="r", avatar="a", v=1)))
            welcome = P.decode_server(await ws.recv())
            assert welcome.model == model and welcome.tick_hz == 40
            await ws.send(P.encode_client(P.Pos(seq=0, t=0.0, p=(1.0, 2.0))))
            for _ in range(100):
                st = P.decode_server(await ws.recv())
                if isinstance(st, P.State) and len(st):
                    break
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(ConnectionClosed):
                for _ in range(1000):
                    await ws.recv()
            assert ws.close_code == 1001
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert time.perf_counter() - t0 < 2.5
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- reloading the model in a running process (SIGHUP, --watch-model) ----------------------

LINE_TIMEOUT = 20.0  # seconds for one expected log line (startup pays torch's import)
FRAME_TIMEOUT = 5.0  # seconds for a client to see a number of state frames
MORE_FRAMES = 10  # state frames every client must get after a reload (50 Hz: ~0.2 s)


def _shipped_blob() -> dict:
    return torch.load(default_checkpoint_path(), map_location="cpu", weights_only=True)


def _write_checkpoint(path, suffix: str, seed: int, mtime: float | None = None) -> str:
    """A second valid checkpoint over `path`, atomically: the shipped one with its version
    suffixed and its weights perturbed (so it predicts differently). Returns the version."""
    blob = _shipped_blob()
    gen = torch.Generator().manual_seed(seed)
    sd = blob["state_dict"]
    before = {k: v.clone() for k, v in sd.items()}
    for k, v in sd.items():
        if v.is_floating_point():
            sd[k] = v + 0.05 * torch.randn(v.shape, generator=gen, dtype=v.dtype)
    assert any(not torch.equal(before[k], sd[k]) for k in sd)
    blob["version"] = f"{blob['version']}{suffix}"
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return blob["version"]


class _Proc:
    """`python -m server ...` with its stderr read line by line in a task (never left to
    fill the pipe); `expect` waits, bounded, for the next line containing a text."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[str] = []
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> _Proc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", *args, stderr=asyncio.subprocess.PIPE, env=env
        )
        return cls(proc)

    async def _read(self) -> None:
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace")
            self.log.append(text)
            self._lines.put_nowait(text)
        self._lines.put_nowait(None)  # EOF

    async def expect(self, text: str, timeout: float = LINE_TIMEOUT) -> str:
        """The next log line containing `text` (earlier ones are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                line = await asyncio.wait_for(self._lines.get(), deadline - loop.time())
            except TimeoutError:
                raise AssertionError(
                    f"no {text!r} line within {timeout} s; log:\n{''.join(self.log)}"
                ) from None
            if line is None:
                raise AssertionError(f"stderr closed before {text!r}; log:\n{''.join(self.log)}")
            if text in line:
                return line

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def _serve(*args: str) -> tuple[_Proc, str, str]:
    """Start the process; returns it, its ws:// URL and the model version of its start line."""
    srv = await _Proc.start("--port", "0", *args)
    line = await srv.expect("serving")
    m = re.search(r"serving (ws://\S+) .*model=(\S+) tick=", line)
    assert m, line
    return srv, m.group(1), m.group(2)


class _Streamer:
    """A player that sends one `pos` per `state` frame it reads (so it streams at the tick
    rate, paced by the server) and counts the frames, in a task of its own."""

    def __init__(self, ws: ClientConnection, welcome: P.Welcome) -> None:
        self.ws = ws
        self.welcome = welcome
        self.frames = 0
        self.rows = 0  # state frames with at least one avatar row
        self.bad_rows = 0  # rows with a non-finite prediction
        self.closed_at: float | None = None
        self._more = asyncio.Condition()
        self.task = asyncio.create_task(self._run())

    @classmethod
    async def open(cls, url: str, avatar: str) -> _Streamer:
        ws = await connect(url)
        await ws.send(P.encode_client(P.Hello(room="r", avatar=avatar, v=1)))
        welcome = P.decode_server(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))
        assert isinstance(welcome, P.Welcome), welcome
        return cls(ws, welcome)

    async def _run(self) -> None:
        seq = 0
        try:
            await self.ws.send(P.encode_client(P.Pos(seq=0, t=0.0, p=(0.0, 0.0))))
            while True:
                msg = P.decode_server(await self.ws.recv())
                if not isinstance(msg, P.State):
                    continue  # join / leave / pong
                seq += 1
                await self.ws.send(
                    P.encode_client(P.Pos(seq=seq, t=seq * 0.02, p=(0.02 * seq, 0.01 * seq)))
                )
                async with self._more:
                    self.frames += 1
                    if len(msg):
                        self.rows += 1
                        self.bad_rows += int((~np.isfinite(msg.offsets)).any())
                    self._more.notify_all()
        except ConnectionClosed:
            self.closed_at = time.perf_counter()
            async with self._more:
                self._more.notify_all()

    async def frames_after(self, n: int, timeout: float = FRAME_TIMEOUT) -> None:
        """Wait until `n` more state frames arrived (fails if the connection closes)."""
        async with self._more:
            target = self.frames + n
            await asyncio.wait_for(
                self._more.wait_for(lambda: self.frames >= target or self.closed_at is not None),
                timeout,
            )
        assert self.closed_at is None, f"closed with {self.ws.close_code} {self.ws.close_reason}"

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.ws.close()


async def _welcome_model(url: str, avatar: str) -> str:
    async with connect(url) as ws:
        await ws.send(P.encode_client(P.Hello(room="probe", avatar=avatar, v=1)))
        welcome = P.decode_server(await asyncio.wait_for(ws.recv(), FRAME_TIMEOUT))
        assert isinstance(welcome, P.Welcome), welcome
        return welcome.model


async def _metrics(url: str) -> str:
    http = url.replace("ws://", "http://", 1).rstrip("/") + "/metrics"

    def get() -> str:
        with urllib.request.urlopen(http, timeout=5) as r:
            return r.read().decode()

    return await asyncio.to_thread(get)


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


async def test_sighup_reloads_the_model_under_load_without_dropping_anyone(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(default_checkpoint_path().read_bytes())
    v1 = _shipped_blob()["version"]
    srv, url, model = await _serve("--model", str(path), "--tick-hz", "50")
    clients: list[_Streamer] = []
    try:
        assert model == v1
        clients = [await _Streamer.open(url, f"a{i}") for i in range(5)]
        assert all(c.welcome.model == v1 for c in clients)
        await asyncio.gather(*(c.frames_after(MORE_FRAMES) for c in clients))

        # A new valid checkpoint, SIGHUP: swapped in between two ticks, nobody dropped.
        v2 = _write_checkpoint(path, "-b", seed=1)
        assert v2 != v1
        srv.proc.send_signal(signal.SIGHUP)
        line = await srv.expect("model reloaded")
        assert f"{v1} -> {v2}" in line, line
        assert "hidden states kept" in line, line
        await asyncio.gather(*(c.frames_after(MORE_FRAMES) for c in clients))
        assert await _welcome_model(url, "probe-1") == v2
        metrics = await _metrics(url)
        assert _metric(metrics, "avatar_model_reloads_total") == 1.0
        assert _metric(metrics, "avatar_model_reloads_failed_total") == 0.0
        assert f'model="{v2}"' in metrics and f'model="{v1}"' not in metrics

        # Garbage over the file, SIGHUP: refused, the second model keeps serving.
        path.write_bytes(b"\x00not a checkpoint\xff" * 64)
        srv.proc.send_signal(signal.SIGHUP)
        line = await srv.expect("model reload refused")
        assert "ERROR" in line and f"still serving {v2}" in line, line
        await asyncio.gather(*(c.frames_after(MORE_FRAMES) for c in clients))
        assert await _welcome_model(url, "probe-2") == v2
        metrics = await _metrics(url)
        assert _metric(metrics, "avatar_model_reloads_total") == 1.0
        assert _metric(metrics, "avatar_model_reloads_failed_total") == 1.0
        assert all(c.rows > 0 and c.bad_rows == 0 for c in clients)
        assert all(c.closed_at is None for c in clients)

        # SIGTERM: every client is closed with 1001 (going away) within 2 s, exit status 0.
        t0 = time.perf_counter()
        srv.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*(c.task for c in clients)), 2.5)
        for c in clients:
            assert c.ws.close_code == 1001, (c.ws.close_code, c.ws.close_reason)
            assert c.closed_at is not None and c.closed_at - t0 < 2.0
        assert await asyncio.wait_for(srv.proc.wait(), 10) == 0
    finally:
        for c in clients:
            await c.close()
        await srv.close()


async def test_watch_model_reloads_when_the_file_changes(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(default_checkpoint_path().read_bytes())
    v1 = _shipped_blob()["version"]
    srv, url, model = await _serve("--model", str(path), "--tick-hz", "50", "--watch-model")
    clients: list[_Streamer] = []
    try:
        assert model == v1
        # A welcome means serve() got past its synchronous start, where it takes the file's
        # mtime: the change below cannot slip in before it.
        clients = [await _Streamer.open(url, "a0")]
        assert clients[0].welcome.model == v1
        v2 = _write_checkpoint(path, "-w", seed=2, mtime=path.stat().st_mtime + 10.0)
        await srv.expect("model file changed", timeout=5.0)
        line = await srv.expect("model reloaded", timeout=5.0)
        assert f"{v1} -> {v2}" in line, line
        assert await _welcome_model(url, "probe") == v2
        await clients[0].frames_after(MORE_FRAMES)
        metrics = await _metrics(url)
        assert _metric(metrics, "avatar_model_reloads_total") == 1.0
        srv.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(srv.proc.wait(), 10) == 0
    finally:
        for c in clients:
            await c.close()
        await srv.close()
