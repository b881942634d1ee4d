"""Checks of untrusted msgpack fields (server/core/field_checks.py): value or ProtocolError.

The decoders' whole rejection contract is in tests/test_protocol.py; these are the checks
one by one. Pure and fast.
"""

from __future__ import annotations

import math

import msgpack
import pytest

from server.core import field_checks as C
from server.core.messages import MAX_COORD, MAX_NAME, ProtocolError


def code_of(call, *args, **kw) -> str:
    with pytest.raises(ProtocolError) as e:
        call(*args, **kw)
    return e.value.code


def test_unpack_map():
    assert C.unpack_map(msgpack.packb({"type": "bye"}), {}) == {"type": "bye"}
    assert code_of(C.unpack_map, "text", {}) == "text_frame"
    assert code_of(C.unpack_map, None, {}) == "bad_msgpack"
    assert code_of(C.unpack_map, b"\xc1", {}) == "bad_msgpack"
    assert code_of(C.unpack_map, msgpack.packb([1]), {}) == "bad_message"
    assert code_of(C.unpack_map, msgpack.packb({"type": 1}), {}) == "bad_message"
    too_long = msgpack.packb({"type": "x" * 100})
    assert code_of(C.unpack_map, too_long, {"max_str_len": 10}) == "bad_msgpack"


def test_number_and_integer():
    assert C.number({"t": 3}, "t") == 3.0 and isinstance(C.number({"t": 3}, "t"), float)
    assert code_of(C.number, {"t": True}, "t") == "bad_field"
    assert code_of(C.number, {"t": math.nan}, "t") == "non_finite"
    assert code_of(C.number, {"t": 2**54}, "t") == "out_of_range"
    assert C.number({"t": -5.0}, "t", bound=5) == -5.0
    assert code_of(C.number, {"t": 5.5}, "t", bound=5) == "out_of_range"
    assert C.integer({"s": 7}, "s", 0, 7) == 7
    assert code_of(C.integer, {"s": 7.0}, "s", 0, 7) == "bad_field"
    assert code_of(C.integer, {"s": 8}, "s", 0, 7) == "out_of_range"


def test_names_and_strings():
    assert C.name({"r": "a" * MAX_NAME}, "r", required=True) == "a" * MAX_NAME
    assert C.name({}, "r", required=False) is None
    assert code_of(C.name, {}, "r", required=True) == "bad_field"
    assert code_of(C.name, {"r": ""}, "r", required=True) == "out_of_range"
    assert code_of(C.name, {"r": "a\nb"}, "r", required=True) == "out_of_range"
    assert C.optional_str({}, "k") is None and C.optional_str({"k": "x" * 1024}, "k")
    assert code_of(C.optional_str, {"k": "x" * 1025}, "k") == "bad_field"


def test_vectors_and_regions():
    assert C.vector({"p": [1, 2.5]}, "p", (2, 3)) == (1.0, 2.5)
    assert code_of(C.vector, {"p": [1]}, "p", (2, 3)) == "bad_field"
    assert code_of(C.vector, {"p": [1, "x"]}, "p", (2, 3)) == "bad_field"
    assert code_of(C.vector, {"p": [1, math.inf]}, "p", (2, 3)) == "non_finite"
    assert code_of(C.vector, {"p": [1, MAX_COORD * 2]}, "p", (2, 3)) == "out_of_range"
    assert code_of(C.vector, {"p": [1, 2**60]}, "p", (2, 3)) == "out_of_range"
    assert C.region({}) is None and C.region({"region": None}) is None
    assert C.region({"region": [0, 1, 2, 3]}) == (0.0, 1.0, 2.0, 3.0)
    assert code_of(C.region, {"region": [0, 1, 2]}) == "bad_field"
