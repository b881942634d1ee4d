"""`python -m server` as a real process: the start line, then SIGTERM closes clients with 1001."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server import protocol as P
from server.__main__ import main


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
            await ws.send(P.encode_client(P.Hello(room="r", avatar="a")))
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
