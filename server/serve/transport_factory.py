"""The transport a configuration names, built: `make_transport`.

The one place that knows every implementation of `server.serve.transports`; the app
calls it and sees only the interface.
"""

from __future__ import annotations

from server.serve.transport_picows import PicowsTransport
from server.serve.transport_websockets import WebsocketsTransport
from server.serve.transports import TRANSPORTS, App, Transport


def make_transport(
    name: str,
    app: App,
    *,
    max_size: int,
    close_timeout: float,
    compression: bool = False,
    send_buffer: int | None = None,
) -> Transport:
    """The transport called `name` (one of `TRANSPORTS`). `send_buffer`: each client socket's
    kernel send buffer (None: the system's autotuning). Raises ValueError for another name
    and ImportError when its library is not installed."""
    if name == "websockets":
        t = WebsocketsTransport(app, max_size, close_timeout, compression)
    elif name == "picows":
        if compression:
            raise ValueError("compression is only available with the websockets transport")
        t = PicowsTransport(app, max_size, close_timeout)
    else:
        raise ValueError(f"unknown transport {name!r}; one of {', '.join(TRANSPORTS)}")
    t.send_buffer = send_buffer
    return t
