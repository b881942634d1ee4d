"""The load run's parent side (`client_demo.loadtest.orchestrate`): the process rule,
collecting the workers' reports by a deadline and stopping stragglers by their PID, a
server that is not there. (Whole runs: tests/test_loadtest.py.)"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from client_demo.loadtest.orchestrate import (
    auto_processes,
    collect,
    parse_processes,
    run,
    stop_workers,
)
from tests import loadtest_workers as workers


def test_collect_by_a_deadline_then_stop_stragglers_by_pid():
    """A stopped worker never reports: it is left pending at the deadline and then
    terminated by its PID; one that exits first, one that fails and one that reports are
    told apart."""
    ctx = mp.get_context("spawn")
    plan = [
        (workers.never_reports, ()),
        (workers.exits, (3,)),
        (workers.sends, ("fatal", "RuntimeError: boom")),
        (workers.sends, ("result", {"connected": 7})),
    ]
    procs, links = [], []
    for target, args in plan:
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=target, args=(w, *args), daemon=True)
        p.start()
        w.close()
        procs.append(p)
        links.append(r)
    try:
        os.kill(procs[0].pid, signal.SIGSTOP)
        got, why = {}, {}
        t0 = time.monotonic()
        pending = collect(procs, links, {0, 1, 2, 3}, "result", time.time() + 1.5, got, why)
        assert 1.4 < time.monotonic() - t0 < 3.0  # waited for the straggler, not longer
        assert pending == {0} and got == {3: {"connected": 7}}
        assert "exit code 3" in why[1] and why[2] == "failed: RuntimeError: boom"
        stop_workers(procs, grace=2.0)
        assert not procs[0].is_alive() and procs[0].exitcode == -signal.SIGTERM
    finally:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join()


def test_processes_follow_the_client_count_within_the_cpus():
    assert auto_processes(1, cpus=8) == 1
    assert auto_processes(350, cpus=8) == 1 and auto_processes(351, cpus=8) == 2
    assert auto_processes(2000, cpus=8) == 6 and auto_processes(2000, cpus=2) == 2
    assert 1 <= auto_processes(10**6) <= (os.cpu_count() or 1)
    assert parse_processes("auto") is None and parse_processes(None) is None
    assert parse_processes("3") == 3
    with pytest.raises(ValueError):
        parse_processes("0")


def test_run_refuses_a_missing_server_with_oserror():
    with pytest.raises(OSError):
        run("ws://127.0.0.1:1/", 1, duration=1.0)
