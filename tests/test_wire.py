"""The server's writes (server.serve.wire): counted sends and the tick's slow-client rule,
over a fake connection (the `Connection` interface: is_open, buffered, send, peer)."""

import pytest

from server.core.members import Member, Room
from server.core.stats import Stats
from server.serve.wire import Wire


class FakeConn:
    """A connection whose unsent bytes and openness the test sets; records what it gets."""

    def __init__(self, buffered: int = 0, broken: bool = False) -> None:
        self.peer = "127.0.0.1:1"
        self.is_open = True
        self.unsent = buffered
        self.broken = broken
        self.sent: list[list[bytes]] = []

    def buffered(self) -> int:
        return self.unsent

    def send(self, frames: list[bytes]) -> None:
        if self.broken:
            raise ConnectionResetError("peer gone")
        self.sent.append(list(frames))


def member(conn: FakeConn | None, uid: int = 1) -> Member:
    m = Member(uid, Room("r"), f"a{uid}", uid - 1)
    m.transport = conn
    return m


def fill(m: Member, *controls: bytes, state: bytes | None = b"STATE") -> None:
    m.outbox.controls.extend(controls)
    m.outbox.state = state


def test_send_counts_frames_and_bytes():
    stats = Stats()
    conn = FakeConn()
    Wire(stats).send(conn, [b"abc", b"de"])
    Wire(stats).send(conn, [b"f"])
    assert conn.sent == [[b"abc", b"de"], [b"f"]]
    assert (stats.frames_out, stats.bytes_out) == (3, 6)


def test_send_on_a_broken_connection_never_raises():
    stats = Stats()
    Wire(stats).send(FakeConn(broken=True), [b"abcd"])  # must not raise
    assert (stats.frames_out, stats.bytes_out) == (1, 4)  # counted as written


def test_write_tick_sends_controls_then_state_and_empties_the_outbox():
    stats = Stats()
    conn = FakeConn()
    m = member(conn)
    m.dropped = 2  # a drained socket ends a run of drops
    fill(m, b"JOIN", b"LEAVE")
    Wire(stats).write_tick([m], send_buffer=100, max_dropped=3, too_slow=pytest.fail)
    assert conn.sent == [[b"JOIN", b"LEAVE", b"STATE"]]
    assert m.outbox.controls == [] and m.outbox.state is None and m.dropped == 0
    assert stats.frames_out == 3 and stats.dropped == 0


def test_write_tick_forgets_the_outbox_of_a_closed_or_missing_connection():
    closed = FakeConn()
    closed.is_open = False
    gone, shut = member(None, 1), member(closed, 2)
    for m in (gone, shut):
        fill(m, b"JOIN")
    stats = Stats()
    Wire(stats).write_tick([gone, shut], send_buffer=100, max_dropped=3, too_slow=pytest.fail)
    assert closed.sent == [] and stats.frames_out == 0
    for m in (gone, shut):
        assert m.outbox.controls == [] and m.outbox.state is None


def test_slow_client_loses_state_keeps_controls_resyncs_and_is_too_slow_at_max_dropped():
    stats = Stats()
    conn = FakeConn(buffered=101)
    m = member(conn)
    slow: list[Member] = []
    wire = Wire(stats)
    for k in range(1, 3):
        fill(m, f"JOIN{k}".encode())
        wire.write_tick([m], send_buffer=100, max_dropped=3, too_slow=slow.append)
        assert m.outbox.state is None and m.resync  # dropped; the next one carries the view
        assert m.dropped == k and stats.dropped == k and not slow
    assert m.outbox.controls == [b"JOIN1", b"JOIN2"] and conn.sent == []  # kept, in order
    fill(m, state=None)  # nothing to drop this tick: still counted as a drop
    m.resync = False
    wire.write_tick([m], send_buffer=100, max_dropped=3, too_slow=slow.append)
    assert slow == [m] and m.dropped == 3 and stats.dropped == 3
    assert not m.resync  # no state frame was dropped this time
    conn.unsent = 100  # at the limit is not over it: the kept controls go out
    fill(m)
    wire.write_tick([m], send_buffer=100, max_dropped=3, too_slow=slow.append)
    assert conn.sent == [[b"JOIN1", b"JOIN2", b"STATE"]] and m.dropped == 0 and slow == [m]


def test_a_slow_or_broken_client_does_not_hold_back_the_others():
    stats = Stats()
    slow_conn, fast_conn = FakeConn(buffered=10_000), FakeConn()
    slow, broken, fast = (
        member(slow_conn, 1),
        member(FakeConn(broken=True), 2),
        member(fast_conn, 3),
    )
    for m in (slow, broken, fast):
        fill(m)
    Wire(stats).write_tick(
        [slow, broken, fast], send_buffer=100, max_dropped=1, too_slow=lambda m: None
    )
    assert slow_conn.sent == [] and fast_conn.sent == [[b"STATE"]]
    assert (stats.dropped, stats.frames_out) == (1, 2)
    assert broken.outbox.state is None
