"""The protocol's vocabulary (server/core/messages.py): error codes, close codes, messages.

Pure and fast: no sockets, no torch.
"""

from __future__ import annotations

import dataclasses

import pytest

from server.core import messages as M
from server.core import protocol as P


def test_every_error_code_has_a_websocket_close_code():
    assert set(M.ERROR_CODES.values()) <= {1003, 1008, 1009, 1011, 1013, 4001}
    assert M.ERROR_CODES["internal_error"] == 1011
    assert [k for k, v in M.ERROR_CODES.items() if v >= 4000] == ["moved"]  # application range
    assert {"room_full", "server_full"} <= {k for k, v in M.ERROR_CODES.items() if v == 1013}
    for code, close in M.ERROR_CODES.items():
        e = M.ProtocolError(code, "m")
        assert (e.code, e.close_code, str(e)) == (code, close, "m")
    assert M.ProtocolError("moved", "m", url="ws://h:1/").url == "ws://h:1/"
    with pytest.raises(KeyError):
        M.ProtocolError("no_such_code", "m")


def test_the_codec_speaks_the_same_vocabulary():
    """`server.core.protocol` re-exports these very objects (clients import one module)."""
    for name in ("VERSION", "VERSIONS", "ERROR_CODES", "ProtocolError", "Hello", "State"):
        assert getattr(P, name) is getattr(M, name)
    assert M.VERSION in M.VERSIONS


def test_messages_are_frozen_and_default_to_this_version():
    hello = M.Hello(room="lobby")
    assert (hello.avatar, hello.v, hello.region) == (None, M.VERSION, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        hello.room = "x"  # type: ignore[misc]
    assert M.Welcome("a", "r", 20.0, (0.1,), "m", 0.0, "tok").dr is None
