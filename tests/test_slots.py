"""Engine slots and hidden states (server.core.slots): `SlotTable`, `HiddenStatePool`."""

import numpy as np
import pytest
import torch

from server.core.slots import HiddenStatePool, SlotTable


def test_join_takes_the_lowest_free_slot_and_leave_frees_it():
    table = SlotTable(4)
    assert [table.join(a, "r")[0] for a in "abc"] == [0, 1, 2]
    assert table.slot_of == {"a": 0, "b": 1, "c": 2}
    assert table.ids.tolist() == ["a", "b", "c", None]
    assert table.live.tolist() == [True, True, True, False]
    assert table.leave("b") == 1
    assert table.ids[1] is None and not table.live[1] and "b" not in table.slot_of
    assert table.leave("a") == 0
    assert table.join("d", "r")[0] == 0  # the lowest free slot, not the last freed
    assert table.join("e", "r")[0] == 1
    assert table.join("f", "r")[0] == 3
    assert table.full
    with pytest.raises(IndexError):
        table.join("g", "r")


def test_join_of_a_joined_avatar_and_leave_of_an_unknown_one_raise_key_error():
    table = SlotTable(2)
    table.join("a", "r")
    with pytest.raises(KeyError):
        table.join("a", "other")
    with pytest.raises(KeyError):
        table.leave("zz")
    assert table.slot_of == {"a": 0} and not table.full  # nothing changed


def test_groups_get_small_ids_reused_once_a_group_empties():
    table = SlotTable(8)
    assert table.join("a", "lobby") == (0, True)
    assert table.join("b", "hall") == (1, True)
    assert table.join("c", "lobby") == (2, False)  # same group: not new
    g = table.group
    assert g[0] == g[2] != g[1]
    hall = int(g[1])
    table.leave("b")  # the hall empties: its id is free again
    slot, new = table.join("d", "garden")
    assert new and int(table.group[slot]) == hall
    table.leave("a")  # the lobby keeps c: its id stays
    slot, new = table.join("e", "lobby")
    assert not new and table.group[slot] == table.group[table.slot_of["c"]]


def test_grow_adds_free_slots_and_keeps_the_joined():
    table = SlotTable(2)
    table.join("a", "r")
    table.join("b", "s")
    assert table.full
    table.grow(5)
    assert table.capacity == 5 and not table.full
    assert table.ids.tolist() == ["a", "b", None, None, None]
    assert table.live.tolist() == [True, True, False, False, False]
    assert table.group[0] != table.group[1]
    assert [table.join(a, "r")[0] for a in "cde"] == [2, 3, 4]
    assert table.full


def test_pool_grow_keeps_rows_and_zero_gather_scatter_address_slots():
    pool = HiddenStatePool(layers=2, hidden=3, capacity=2, device=torch.device("cpu"))
    assert pool.h.shape == (2, 2, 3) and torch.count_nonzero(pool.h) == 0
    rows = torch.arange(2 * 2 * 3, dtype=torch.float32).reshape(2, 2, 3) + 1
    pool.scatter(torch.tensor([0, 1]), rows)
    pool.grow(4)
    assert pool.capacity == 4
    torch.testing.assert_close(pool.h[:, :2], rows, rtol=0, atol=0)  # kept
    assert torch.count_nonzero(pool.h[:, 2:]) == 0  # new rows start at zero
    pool.grow(3)  # never shrinks
    assert pool.capacity == 4
    got = pool.gather(torch.tensor([1, 0]))
    torch.testing.assert_close(got, rows[:, [1, 0]], rtol=0, atol=0)
    pool.scatter(torch.tensor([3]), torch.full((2, 1, 3), 7.0))
    assert (pool.h[:, 3] == 7.0).all()
    pool.zero(1)
    assert torch.count_nonzero(pool.h[:, 1]) == 0
    torch.testing.assert_close(pool.h[:, 0], rows[:, 0], rtol=0, atol=0)  # others untouched
    assert np.array_equal(pool.gather(torch.tensor([3])).numpy(), np.full((2, 1, 3), 7.0))
