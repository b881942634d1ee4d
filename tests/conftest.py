import numpy as np
import pytest
import torch

from server.serve.transports import TRANSPORTS


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture
def redis_server():
    """A fresh, empty redis-server on a free 127.0.0.1 port (tests/redis_server.py).

    Skipped when redis-server is not installed, failed when CI is set. The object can be
    stopped and started again on the same port (``.stop()`` / ``.start()``).
    """
    from tests.redis_server import RedisServer, need_redis_server

    with RedisServer(executable=need_redis_server()) as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    """URL of the ``redis_server`` fixture's Redis, e.g. ``redis://127.0.0.1:PORT/0``."""
    return redis_server.url


@pytest.fixture(params=TRANSPORTS)
def transport(request, monkeypatch) -> str:
    """A test that uses it runs once per transport (both must behave the same): the
    servers it starts through `tests.servers` take that transport."""
    from tests import servers

    monkeypatch.setitem(servers.DEFAULTS, "transport", request.param)
    return request.param
