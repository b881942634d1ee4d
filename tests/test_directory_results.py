"""server/cluster/directory_results.py: the directory's answers, errors and redacted URLs."""

from __future__ import annotations

from server.cluster.directory_results import (
    DirectoryError,
    DirectoryUnavailable,
    NoProcessAvailable,
    Owner,
    redact,
)


def test_redact_hides_only_the_password():
    assert redact("redis://:hunter2@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact("redis://u:pw@[::1]:7/1") == "redis://u:***@[::1]:7/1"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_owner_equality_ignores_placed_and_errors_are_retryable_kinds():
    assert Owner("p", "ws://h:1/", placed=True) == Owner("p", "ws://h:1/")
    assert issubclass(DirectoryUnavailable, DirectoryError | OSError)
    assert issubclass(DirectoryUnavailable, OSError)
    assert issubclass(NoProcessAvailable, DirectoryError)
