"""CPU seconds of a process tree (Linux /proc): a server and every process it started.

Server CPU is the whole tree's: `python -m server` with its step worker
(`python -m server.serve.stepper`), a cluster supervisor with its workers. The load tool and
the benchmarks read it here, before and after a window, and divide by the window:

    before = tree_cpu_s([server_pid])
    ...
    cpu_per_s = (tree_cpu_s([server_pid]) - before) / seconds

Only live processes count (user + system time of each): a process that exits inside the
window takes its CPU with it, so measure over windows in which the tree is stable (a
server's step worker lives as long as the server).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def children(pid: int) -> list[int]:
    """PIDs of `pid`'s live children (from /proc/PID/task/*/children, else a scan of every
    /proc/PID/stat); [] when it has none or is gone."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    out: list[int] = []
    try:
        for task in tasks:
            out += [int(x) for x in (task / "children").read_text().split()]
        return out
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN: scan
        pass
    except OSError:
        return out
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def tree(pids: Iterable[int], exclude: Iterable[int] = ()) -> set[int]:
    """`pids` and all their live descendants, less `exclude` and the descendants of those."""
    skip = set(exclude)
    seen: set[int] = set()
    todo = [p for p in pids if p not in skip]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo += [c for c in children(p) if c not in skip and c not in seen]
    return seen


def tree_cpu_s(pids: Iterable[int], exclude: Iterable[int] = ()) -> float:
    """User + system CPU seconds used so far by the live processes of `tree(pids, exclude)`.

    Raises OSError if one of `pids` itself cannot be read (gone, or not Linux); a
    descendant that exits while it is read is left out."""
    roots = list(pids)
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree(roots, exclude):
        try:
            f = _stat(p)
        except OSError:
            if p in roots:
                raise
            continue
        total += int(f[11]) + int(f[12])
    return total / tick
