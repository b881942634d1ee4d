"""The model step in a child process: off the GIL the event loop holds.

A step run in a thread of the server process waits for the GIL behind the event loop at
each of the hundred-odd numpy and torch calls that let it go, several times longer than
the same step alone. In a child process the step has an interpreter
of its own; the server's loop hands it the tick's batch and waits for the answer, with
the GIL released and nothing else to run (the loop does not serve sockets meanwhile, as
with a step run inline: measured, awaiting the answer through the loop made the step's
p99 worse, since the answer then waits for the loop's current round of socket reads).
The figures and commands are in docs/performance.md, "Model step off the GIL".

`StepWorker` is the child (``python -m server.serve.stepper``, started by `StepWorker()`,
stopped by `close()` or, failing that, killed by its PID; one that outlives its owner's
reference is killed by a finalizer, and a child whose server went exits on EOF). It holds
a copy of a `TickEngine` (`TickEngine.attach_worker` sends it) and, per tick, gets the
batch through a shared-memory segment (slots, times, positions, clocks in; offsets, reset
flags out) and one short request on a Unix socket (with the joins and leaves since the
last one); its answer on the socket says the outputs are written. The engine in the
server keeps everything else (membership, pending samples, last predictions), so `World`
and the app read it as before:

    worker = StepWorker(threads=1)           # returns at once; the child imports torch
    worker.wait_ready(60)                    # or poll `ready()` between ticks
    engine.attach_worker(worker)             # between two ticks
    result = engine.tick()                   # the step runs in the child
    worker.close()                           # stop; killed by PID after `timeout`

When the server uses it is `server.serve.steps.StepRunner`'s decision.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import traceback
import weakref

import numpy as np

from server.core import neighbours as NB
from server.core.blend import EXPERTS

log = logging.getLogger("avatar_stream")

_HEADER = struct.Struct("!Q")


class StepWorkerError(RuntimeError):
    """The worker raised (its traceback is the message); it is of no further use."""


class StepWorkerGone(ConnectionError):
    """The worker exited, closed its socket or did not answer in time."""


# -- framing ----------------------------------------------------------------------------------


def _send(sock: socket.socket, obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("the other end closed the socket")
        got += k
    return buf


def _recv(sock: socket.socket) -> object:
    (n,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    return pickle.loads(_recv_exact(sock, n))


# -- the shared segment -------------------------------------------------------------------------


def _layout(capacity: int, horizons: int) -> tuple[dict[str, tuple], int]:
    """name -> (dtype, shape, offset) of every array in a segment, and its size in bytes."""
    fields = [
        ("slots", np.int64, (capacity,)),
        ("t", np.float64, (capacity,)),
        ("p", np.float64, (capacity, 3)),
        ("seq", np.int64, (capacity,)),
        ("clock", np.float64, (capacity,)),
        ("out_slots", np.int64, (capacity,)),
        ("off", np.float32, (capacity, horizons, 3)),
        ("reset", np.bool_, (capacity,)),
        ("weights", np.float64, (capacity, len(EXPERTS))),  # the blend's, per expert
    ]
    out, at = {}, 0
    for name, dtype, shape in fields:
        out[name] = (dtype, shape, at)
        at += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // 64) * 64
    return out, max(at, 64)


class _Segment:
    """A shared mapping of `_layout(capacity, horizons)` over file descriptor `fd`."""

    def __init__(self, fd: int, capacity: int, horizons: int) -> None:
        layout, size = _layout(capacity, horizons)
        self.capacity, self.horizons = capacity, horizons
        self.map = mmap.mmap(fd, size)
        self.a = {
            name: np.ndarray(shape, dtype, buffer=self.map, offset=at)
            for name, (dtype, shape, at) in layout.items()
        }

    @classmethod
    def create(cls, capacity: int, horizons: int) -> tuple[_Segment, int]:
        """A new segment and its descriptor (memfd, or an unlinked temporary file)."""
        _, size = _layout(capacity, horizons)
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("avatar-step", os.MFD_CLOEXEC)
        else:  # pragma: no cover - not Linux
            fd, path = tempfile.mkstemp(prefix="avatar-step-")
            os.unlink(path)
        os.ftruncate(fd, size)
        return cls(fd, capacity, horizons), fd

    def close(self) -> None:
        self.a.clear()  # the arrays export the map's buffer: gone before it closes
        with contextlib.suppress(BufferError):
            self.map.close()


# -- the server side --------------------------------------------------------------------------


class StepWorker:
    """A child process running `TickEngine` steps; see the module docstring.

    Not thread-safe: one thread (the server's loop) drives it. Every method that talks to
    the child raises `StepWorkerGone` when it has gone and `StepWorkerError` when it
    reported a failure; the engine then drops it (`TickEngine.finish_tick`).
    """

    def __init__(self, threads: int = 1, *, reply_timeout: float = 30.0) -> None:
        """Start the child (returns at once: it imports torch, then says it is ready)."""
        self.threads = threads
        self.nonfinite = 0  # the child engine's `nonfinite_resets`, as of its last answer
        self._reply_timeout = reply_timeout
        self._ready = False
        self._closed = False
        self._busy = False  # a step was started and its answer not read yet
        self._seg: _Segment | None = None
        self._horizons = 0  # of the adopted engine (the segment's output width)
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server.serve.stepper", str(theirs.fileno()), str(threads)],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=_child_env(),
            )
        except BaseException:
            self._sock.close()
            raise
        finally:
            theirs.close()
        self.pid = self.proc.pid
        # never outlive a server that forgot to close it (tests, a crash in serve)
        self._finalizer = weakref.finalize(self, _kill, self.proc, self._sock)

    # -- life cycle -------------------------------------------------------------------------

    def ready(self) -> bool:
        """True once the child has started (never blocks). Raises StepWorkerGone if it died."""
        if not self._ready:
            self._check_open()
            readable, _, _ = select.select([self._sock], [], [], 0)
            if readable:
                self._read_ready()
        return self._ready

    def wait_ready(self, timeout: float) -> None:
        """Block until the child has started. Raises StepWorkerGone (died, or not in time)."""
        if not self._ready:
            self._check_open()
            readable, _, _ = select.select([self._sock], [], [], timeout)
            if not readable:
                raise StepWorkerGone(
                    f"the step worker (pid {self.pid}) did not start in {timeout:g} s"
                )
            self._read_ready()

    def _read_ready(self) -> None:
        msg = self._reply(timeout=5.0)
        if msg != ("ready", self.pid):
            self.discard()
            raise StepWorkerGone(f"the step worker (pid {self.pid}) said {msg!r} at start")
        self._ready = True

    def close(self, timeout: float = 2.0) -> None:
        """Ask the child to exit; kill it (by PID) if it has not within `timeout` s.
        Idempotent; blocks up to `timeout` (+ the kill)."""
        if self._closed:
            return
        if not self._ready and not self.ready():  # still importing: nothing to finish
            self.discard()
            return
        self._closed = True
        with contextlib.suppress(OSError):
            _send(self._sock, ("stop",))
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("step worker (pid %d) did not stop in %g s: killed", self.pid, timeout)
        self._release()

    def discard(self) -> None:
        """Kill the child now (it failed); idempotent."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        self._finalizer()  # kills the child if it still runs, reaps it, closes the socket
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    @property
    def alive(self) -> bool:
        return not self._closed and self.proc.poll() is None

    def fileno(self) -> int:
        """The socket that turns readable when the child has answered."""
        return self._sock.fileno()

    # -- requests ---------------------------------------------------------------------------

    def adopt(self, engine) -> None:
        """Send the child a copy of `engine` (pickled; its worker and journal left out)."""
        self._request_ready()
        self._call(("engine", engine, self.threads), reply=False)
        self._horizons = len(engine.horizons)

    def start(self, batch, journal: list, capacity: int) -> None:
        """Hand over one tick's batch (see `TickEngine.start_tick`); returns at once."""
        self._request_ready()
        seg = self._seg
        if seg is None or seg.capacity < capacity:
            self._new_segment(capacity)
            seg = self._seg
        n = len(batch.slots)
        a = seg.a
        a["slots"][:n] = batch.slots
        a["t"][:n] = batch.t
        a["p"][:n] = batch.p
        a["seq"][:n] = batch.seq
        a["clock"][:n] = batch.clock
        self._call(("tick", journal, n), reply=False)
        self._busy = True

    def finish(self, batch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The started step's (offsets (n, H, 3) float32, reset (n,) bool, expert weights
        (n, E)); blocks until the child answers (at most the reply timeout)."""
        if not self._busy:
            raise RuntimeError("no step was started")
        self._busy = False
        self.nonfinite = self._answer()
        n = len(batch.slots)
        a = self._seg.a
        if not np.array_equal(a["out_slots"][:n], batch.slots):
            self.discard()
            raise StepWorkerError("the step worker stepped other slots (its engine diverged)")
        return a["off"][:n].copy(), a["reset"][:n].copy(), a["weights"][:n].copy()

    def swap(self, journal: list, model) -> bool:
        """`TickEngine.swap_model(model)` in the child; its keep flag."""
        self._request_ready()
        return self._call(("swap", journal, model))

    def hidden(self, journal: list, slot: int):
        """The child's hidden state of `slot` (a CPU tensor copy)."""
        self._request_ready()
        return self._call(("hidden", journal, slot))

    # -- plumbing ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StepWorkerGone(f"the step worker (pid {self.pid}) was closed")

    def _request_ready(self) -> None:
        self._check_open()
        if not self._ready:
            raise RuntimeError("the step worker has not started yet (ready() is False)")
        if self._busy:
            raise RuntimeError("a step is running in the worker: finish it first")

    def _new_segment(self, capacity: int) -> None:
        horizons = self._horizons
        seg, fd = _Segment.create(capacity, horizons)
        try:
            self._call(("segment", capacity, horizons), reply=False)
            socket.send_fds(self._sock, [b"S"], [fd])
        except BaseException:
            seg.close()
            raise
        finally:
            os.close(fd)
        if self._seg is not None:
            self._seg.close()
        self._seg = seg

    def _call(self, msg: tuple, reply: bool = True):
        try:
            _send(self._sock, msg)
        except OSError as e:
            self.discard()
            raise StepWorkerGone(f"the step worker (pid {self.pid}) is gone: {e}") from None
        return self._answer() if reply else None

    def _answer(self):
        msg = self._reply(self._reply_timeout)
        if msg[0] == "ok":
            return msg[1]
        self.discard()
        raise StepWorkerError(f"the step worker (pid {self.pid}) failed:\n{msg[1]}")

    def _reply(self, timeout: float):
        self._sock.settimeout(timeout)
        try:
            msg = _recv(self._sock)
        except (OSError, EOFError) as e:  # socket.timeout is an OSError
            self.discard()
            code = self.proc.poll()
            why = f"exit status {code}" if code is not None else str(e) or type(e).__name__
            raise StepWorkerGone(f"the step worker (pid {self.pid}) is gone: {why}") from None
        self._sock.settimeout(None)
        return msg


def _child_env() -> dict[str, str]:
    """The environment with this `server` package's directory first on PYTHONPATH, so the
    child runs the same code whatever its working directory."""
    env = os.environ.copy()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _kill(proc: subprocess.Popen, sock: socket.socket) -> None:
    """Kill `proc` by its PID if it still runs, reap it and close `sock`."""
    with contextlib.suppress(OSError):
        sock.close()
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)


# -- the server's policy ----------------------------------------------------------------------


# -- the child ----------------------------------------------------------------------------------


def _serve(sock: socket.socket) -> int:
    """The child's loop until `stop` or EOF. `engine` and `segment` get no answer (a
    failure there is told in the answer to the next request); every other request gets
    one: ("ok", value) or ("error", traceback)."""
    engine = None
    seg: _Segment | None = None
    broken: str | None = None
    while True:
        try:
            msg = _recv(sock)
        except EOFError:
            return 0  # the server is gone
        kind = msg[0]
        if kind == "stop":
            return 0
        fds: list[int] = []
        if kind == "segment":  # its descriptor follows at once, whatever happens next
            _, fds, _, _ = socket.recv_fds(sock, 1, 1)
        answer, text = None, None
        try:
            if broken is not None:
                raise RuntimeError(broken)
            if kind == "engine":
                import torch

                engine = msg[1]
                torch.set_num_threads(msg[2])
                NB.set_threads(msg[2])
                engine._pending[:] = False  # the server hands over between two ticks
            elif kind == "segment":
                if seg is not None:
                    seg.close()
                seg = _Segment(fds[0], msg[1], msg[2])
            else:
                answer = _request(engine, seg, msg)
        except Exception:
            text = traceback.format_exc()
        finally:
            for fd in fds:
                os.close(fd)  # the mapping stays
        if kind in ("engine", "segment"):
            broken = broken or text
        else:
            _send(sock, ("ok", answer) if text is None else ("error", text))


def _request(engine, seg: _Segment, msg: tuple):
    """Apply the journal (joins and leaves since the last request, in order), then one
    request: tick (outputs into the segment; the answer is `nonfinite_resets`), swap (the
    keep flag) or hidden (a slot's state)."""
    from server.core.tick_io import StepBatch

    kind, journal = msg[0], msg[1]
    for op in journal:
        if op[0] == "join":
            if engine.join(op[1], op[2]) != op[3]:
                raise RuntimeError(f"{op[1]!r} got another slot here: the engines diverged")
        else:
            engine.leave(op[1])
    if kind == "tick":
        n, a = msg[2], seg.a
        engine.pend_batch(
            StepBatch(0, a["slots"][:n], a["t"][:n], a["p"][:n], a["seq"][:n], a["clock"][:n])
        )
        res = engine.tick()
        k = len(res)
        a["out_slots"][:k], a["off"][:k], a["reset"][:k] = res.slots, res.offsets, res.reset
        a["weights"][:k] = engine.last_weights[res.slots]
        return engine.nonfinite_resets
    if kind == "swap":
        return engine.swap_model(msg[2])
    if kind == "hidden":
        return engine.pool.h[:, msg[2]].detach().cpu().clone()
    raise ValueError(f"unknown request {kind!r}")


def main(argv: list[str] | None = None) -> int:
    """``python -m server.serve.stepper FD THREADS``: the child (started by `StepWorker`)."""
    argv = sys.argv[1:] if argv is None else argv
    fd, threads = int(argv[0]), int(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the server's to handle
    sock = socket.socket(fileno=fd)
    import torch

    torch.set_num_threads(threads)
    import server.core.blend
    import server.core.engine  # the engine's modules, before saying ready
    import server.core.neighbours

    server.core.blend.warm_up()  # and the compiled kernels: the blend's, the neighbours'
    server.core.neighbours.set_threads(threads)
    server.core.neighbours.warm_up()

    _send(sock, ("ready", os.getpid()))
    try:
        return _serve(sock)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the server went while we answered
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
