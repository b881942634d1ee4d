"""A user's mistake gets one line on stderr and an exit status, never a traceback.

Every command's ``main`` is wrapped once::

    @cli.command("python -m training.evaluate")
    def main(argv: list[str] | None = None) -> dict: ...

and then, for the errors a user can cause (`describe` lists them), prints
``PROG: error: WHAT — WHAT TO DO`` on stderr and raises ``SystemExit(1)``; Ctrl-C prints
``PROG: interrupted`` (plus what was kept, from `Interrupted`) and exits with 130.
Bad flags stay argparse's business (usage and ``SystemExit(2)``). Anything else is a bug
and keeps its traceback.

Called with ``argv=None`` (the process's own command line, as console scripts do:
``sys.exit(main())``) the wrapped ``main`` returns an exit status: its own when it returns
an int, else 0. Called with a list it returns whatever ``main`` returns (tests, scripts).

This module is the bottom of every package's imports: it imports no other module of the
project. Errors of `client_demo` and `training` are recognised by module and class name
(`FOREIGN`), without importing them; the checks that need the model or the room
directory live with them and raise `UserError`: `server.core.model_cli.check_device` and
`load_model`, `server.cluster.directory_cli.check_redis`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

F = TypeVar("F", bound=Callable[..., Any])

EXIT_ERROR = 1  # a user error (argparse's usage errors exit with 2)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it

# Error types of other packages that are the user's doing: (module, class) -> what to do.
FOREIGN: dict[tuple[str, str], str] = {
    ("training.datasets", "DatasetError"): "fix that line or pass another file",
    ("client_demo.client", "Refused"): "check --room, --avatar and the server's settings",
}


class UserError(Exception):
    """Something the user can fix: `message` says what is wrong, `hint` what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C after the command kept something: the message says what and where."""


def first_line(exc: BaseException | str) -> str:
    """The first non-empty line of an error message (library messages can be paragraphs)."""
    text = str(exc)
    return next((s.strip() for s in text.splitlines() if s.strip()), text.strip())


def _foreign_hint(exc: BaseException) -> str | None:
    for cls in type(exc).__mro__:
        hint = FOREIGN.get((cls.__module__, cls.__name__))
        if hint is not None:
            return hint
    return None


def _os_error(exc: OSError) -> str:
    """An OSError in one line that names its file (or, for a network error, its address)."""
    from urllib.error import HTTPError, URLError

    if isinstance(exc, HTTPError):
        return f"{exc.url}: HTTP {exc.code} {exc.reason}"
    if isinstance(exc, URLError):
        reason = exc.reason
        return _os_error(reason) if isinstance(reason, OSError) else first_line(reason)
    if exc.filename is not None:
        where = os.fsdecode(exc.filename)
        if exc.filename2 is not None:
            where += f" -> {os.fsdecode(exc.filename2)}"
        return f"{where}: {exc.strerror or first_line(exc)}"
    return first_line(exc)


def _os_hint(exc: OSError) -> str:
    from urllib.error import URLError

    if isinstance(exc, URLError | ConnectionError | TimeoutError):
        return "is the server running there? check the URL"
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return "check the path"
    if isinstance(exc, IsADirectoryError):
        return "pass a file, not a directory"
    if isinstance(exc, PermissionError):
        return "check the permissions"
    if exc.errno == errno.EADDRINUSE:
        return "pass another --port (0: any free one) or stop what uses it"
    if exc.errno == errno.ENOSPC:
        return "free some disk space"
    return ""


def explain(exc: BaseException) -> tuple[str, str] | None:
    """(what is wrong, what to do) for an error the user can fix, None for a bug.

    User errors: `UserError`; missing, unreadable or unwritable files and other `OSError`s
    (the environment, not the code: refused connections, unreachable hosts, a full disk,
    an address in use); the `FOREIGN` types (a malformed data file names file:line);
    websockets' handshake and URI errors (a server that does not speak WebSocket).
    """
    if isinstance(exc, UserError):
        return exc.message, exc.hint
    hint = _foreign_hint(exc)
    if hint is not None:
        return first_line(exc), hint
    if isinstance(exc, OSError):
        return _os_error(exc), _os_hint(exc)
    if "websockets" in sys.modules:  # only loaded where a client connects
        from websockets.exceptions import InvalidHandshake, InvalidURI

        if isinstance(exc, InvalidURI):
            return first_line(exc), "pass a ws://HOST:PORT/ URL"
        if isinstance(exc, InvalidHandshake):
            return (
                f"WebSocket handshake failed: {first_line(exc)}",
                "is that an avatar-stream server?",
            )
    return None


def describe(exc: BaseException) -> str | None:
    """One line, ``what is wrong — what to do``, for a user's error (`explain`); None for a bug."""
    parts = explain(exc)
    if parts is None:
        return None
    message, hint = parts
    return f"{message} — {hint}" if hint else message


def fail(prog: str, message: str, code: int = EXIT_ERROR) -> None:
    """Print ``PROG: error: MESSAGE`` on stderr and exit with `code`."""
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _prog(default: str) -> str:
    """The name the user typed: a console script's (avatar-…), else `default`."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("avatar-") else default


def command(prog: str) -> Callable[[F], F]:
    """Decorate a ``main(argv=None)``: user errors -> one line and exit 1, Ctrl-C -> 130."""

    def wrap(main: F) -> F:
        @functools.wraps(main)
        def wrapper(argv=None, *args, **kwargs):
            name = _prog(prog)
            try:
                result = main(argv, *args, **kwargs)
            except KeyboardInterrupt as e:
                kept = str(e) if isinstance(e, Interrupted) and str(e) else ""
                _stdout_gone_quietly()
                print(f"{name}: interrupted{'; ' + kept if kept else ''}", file=sys.stderr)
                raise SystemExit(EXIT_INTERRUPTED) from None
            except BrokenPipeError:  # `... | head`: the reader left; nothing to say
                _stdout_gone_quietly()
                raise SystemExit(EXIT_ERROR) from None
            except Exception as e:
                message = describe(e)
                if message is None:
                    raise  # a bug: keep the traceback
                fail(name, message)
            if argv is None:
                return result if isinstance(result, int) else 0
            return result

        return wrapper  # type: ignore[return-value]

    return wrap


def _stdout_gone_quietly() -> None:
    """After a broken pipe or an interrupt, flushing stdout at exit must not raise again."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())


@contextlib.contextmanager
def user_errors(
    types: type[BaseException] | tuple[type[BaseException], ...], what: str, hint: str = ""
) -> Iterator[None]:
    """Inside, `types` are the user's doing: re-raised as ``UserError("WHAT: msg", hint)``.

    For call sites where a broad type (ValueError) can only mean a bad input, e.g.
    ``with user_errors(ValueError, f"--data {spec}", "see --help"): load_data(spec)``.
    """
    try:
        yield
    except UserError:
        raise
    except types as e:
        if _foreign_hint(e) is not None:  # already says where (a DatasetError: file:line)
            raise
        raise UserError(f"{what}: {first_line(e)}", hint) from e


# -- the common user errors of this project ---------------------------------------------------


def ws_url(text: str) -> str:
    """argparse ``type=`` for a server URL: ws:// or wss:// with a host (else usage, exit 2)."""
    try:
        u = urlsplit(text)
        _ = u.port  # raises ValueError when it is not a number in 0..65535
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}") from None
    if u.scheme not in ("ws", "wss") or not u.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not a ws://HOST:PORT/ URL")
    return text


async def probe(url: str, timeout: float = 5.0) -> None:
    """Open and close a TCP connection to the URL's host and port; UserError when refused,
    unreachable or silent, naming the URL."""
    import asyncio

    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "wss" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(u.hostname, port), timeout)
    except (OSError, TimeoutError) as e:
        why = "no answer" if isinstance(e, TimeoutError) else first_line(e)
        raise UserError(
            f"cannot reach {url}: {why}", "is the server running? check --url"
        ) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
