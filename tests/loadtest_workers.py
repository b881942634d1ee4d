"""Stand-in load-tool workers for tests/test_loadtest_orchestrate.py: each gets the write end
of its report pipe, as `client_demo.loadtest.worker` workers do, and misbehaves in one way.
Module-level, and light to import, so that a spawned process runs them quickly."""

from __future__ import annotations

import os
import time


def never_reports(link) -> None:
    """Holds its pipe open and sends nothing until it is terminated."""
    time.sleep(600)


def exits(link, code: int) -> None:
    """Exits at once with `code`, without a word."""
    os._exit(code)


def sends(link, tag: str, body) -> None:
    """Sends one (tag, body) message, then returns (exits 0)."""
    link.send((tag, body))
