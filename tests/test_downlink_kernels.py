"""server.core.downlink_kernels.off_path: the same floats as the numpy path, bit for bit
(so a record is due exactly when the numpy rule says)."""

from __future__ import annotations

import numpy as np
import pytest

from server.core.downlink import EXTRAPOLATE
from server.core.downlink_kernels import off_path
from tests.test_downlink import H, random_paths


@pytest.mark.parametrize("lookahead", [0.0, 0.2, 0.4])
def test_off_path_is_error_and_ahead_bit_for_bit(lookahead):
    dr, slots, anchor, pos, off = random_paths(lookahead)
    want = dr.error(slots, anchor, pos)
    ahead = np.flatnonzero(lookahead + 1e-9 >= H)
    if len(ahead):
        want = np.maximum(want, dr.ahead(slots, anchor, pos, off))
    knots = np.r_[0.0, H]
    got = off_path(slots, anchor, pos, off, dr.anchor, dr.pos, dr.off, knots, EXTRAPOLATE, ahead)
    assert np.array_equal(got, want)


def test_a_nan_anywhere_is_nan_as_numpy_has_it():
    dr, slots, anchor, pos, off = random_paths(0.4, n=4)
    off[1, 0, 0] = np.nan  # the new path at the first horizon
    pos[2, 1] = np.nan  # the sample
    got = off_path(slots, anchor, pos, off, dr.anchor, dr.pos, dr.off, np.r_[0.0, H],
                   EXTRAPOLATE, np.arange(3))  # fmt: skip
    assert np.isnan(got[[1, 2]]).all() and np.isfinite(got[[0, 3]]).all()
