"""`client_demo.paths`: the checks of what a record gives, and the piecewise-linear path."""

import numpy as np
import pytest

from client_demo.paths import (
    SEQ_MOD,
    PredictedPath,
    as_offsets,
    as_vec3,
    check_horizons,
    check_nonneg,
    seq_ge,
)


def test_checks_accept_good_values_and_name_bad_ones():
    np.testing.assert_array_equal(check_horizons([0.1, 0.2]), [0.1, 0.2])
    for bad in ([], [0.0, 0.1], [0.2, 0.1], [0.1, float("inf")], [[0.1]]):
        with pytest.raises(ValueError, match="horizons"):
            check_horizons(bad)
    assert check_nonneg("x", 0) == 0.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="x must be"):
            check_nonneg("x", bad)


def test_positions_and_offsets_of_two_dims_mean_zero_z():
    p = [1.0, 2.0]
    np.testing.assert_array_equal(as_vec3(p), [1.0, 2.0, 0.0])
    a = np.array([1.0, 2.0, 3.0])
    assert as_vec3(a) is not a  # a copy
    with pytest.raises(ValueError, match="q must"):
        as_vec3([1.0], "q")
    with pytest.raises(ValueError, match="finite"):
        as_vec3([np.nan, 0.0])
    np.testing.assert_array_equal(as_offsets([[1.0, 2.0]], 1), [[1.0, 2.0, 0.0]])
    with pytest.raises(ValueError, match="shape"):
        as_offsets([[1.0, 2.0, 3.0]], 2)
    with pytest.raises(ValueError, match="finite"):
        as_offsets([[np.inf, 0.0, 0.0]], 1)


def test_seq_ge_wraps():
    assert seq_ge(5, 5) and seq_ge(6, 5) and not seq_ge(5, 6)
    assert seq_ge(0, SEQ_MOD - 1) and not seq_ge(SEQ_MOD - 1, 0)


def test_predicted_path_through_its_knots_then_bounded_extrapolation():
    h = np.array([0.5, 1.0])
    off = np.array([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0]])
    path = PredictedPath(10.0, np.zeros(3), off, np.diff(np.concatenate([[0.0], h])))
    knots = [0.0, *h.tolist()]
    np.testing.assert_allclose(path.at(9.0, knots, 0.5), [0.0, 0.0, 0.0])  # before: the sample
    np.testing.assert_allclose(path.at(10.25, knots, 0.5), [0.5, 0.0, 0.0])
    np.testing.assert_allclose(path.at(10.75, knots, 0.5), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(path.at(11.25, knots, 0.5), [1.0, 3.0, 0.0])
    np.testing.assert_allclose(path.at(20.0, knots, 0.5), [1.0, 4.0, 0.0])  # then held
