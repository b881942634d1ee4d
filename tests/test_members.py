"""Members (server.core.members): clock offsets, room handles, outboxes."""

import pytest

from server.core.members import ClockOffset, Member, Outbox, Room


def test_clock_offset_tracks_minimum_delay_and_drift():
    c = ClockOffset(drift=1e-3)
    assert c.offset == 0.0
    c.update(10.0, 110.05)  # offset 100, delay 50 ms
    c.update(10.1, 110.11)  # delay 10 ms: new minimum
    assert c.offset == pytest.approx(100.01)
    c.update(10.2, 110.30)  # a slow message does not raise it ...
    assert c.offset == pytest.approx(100.01 + 1e-3 * 0.19)
    for k in range(1, 200):  # ... but a persistent shift is followed at <= drift s/s
        c.update(10.2 + k, 110.30 + k)
    assert 100.01 < c.offset <= 100.10 + 1e-9
    c.rtt = 0.02
    assert c.offset == pytest.approx(c.base - 0.01)


def test_room_hands_out_the_lowest_free_handle_first():
    room = Room("r")
    assert [room.take_handle() for _ in range(4)] == [0, 1, 2, 3]
    room.give_handle(2)
    room.give_handle(0)
    assert room.take_handle() == 0  # lowest free first, not the last given back
    assert room.take_handle() == 2
    assert room.take_handle() == 4  # none free: the next new one


def test_room_counts_players_and_spectators():
    room = Room("r")
    a = Member(1, room, "a", room.take_handle())
    s = Member(2, room, None, None)
    room.players["a"] = a
    room.spectators.append(s)
    assert len(room) == 2 and a.is_player and not s.is_player


def test_outbox_starts_empty_and_members_do_not_share_one():
    box = Outbox()
    assert box.controls == [] and box.state is None
    room = Room("r")
    a, b = Member(1, room, "a", 0), Member(2, room, "b", 1)
    a.outbox.controls.append(b"join")
    assert b.outbox.controls == [] and a.outbox is not b.outbox
    assert a.clock is not b.clock and a.clock.offset == 0.0
