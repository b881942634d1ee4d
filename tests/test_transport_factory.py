"""server/serve/transport_factory.py: the transport a name asks for, or a clear refusal."""

from __future__ import annotations

import pytest

from server.serve.config import Config
from server.serve.transport_factory import make_transport
from server.serve.transport_picows import PicowsTransport
from server.serve.transport_websockets import WebsocketsTransport


def test_unknown_transport_and_compression_without_websockets_are_refused():
    with pytest.raises(ValueError):
        make_transport("zmq", None, max_size=1024, close_timeout=1.0)
    with pytest.raises(ValueError):
        make_transport("picows", None, max_size=1024, close_timeout=1.0, compression=True)
    with pytest.raises(ValueError):
        Config(transport="picows", compression=True)
    assert Config(transport="picows").transport == "picows"


@pytest.mark.parametrize(
    ("name", "kind"), [("websockets", WebsocketsTransport), ("picows", PicowsTransport)]
)
def test_each_name_builds_its_transport_with_the_send_buffer(name, kind):
    t = make_transport(name, None, max_size=1024, close_timeout=1.0, send_buffer=65536)
    assert isinstance(t, kind) and t.send_buffer == 65536
