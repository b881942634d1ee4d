"""server/cluster/directory_cli.py: an unreachable Redis is one line that names it."""

from __future__ import annotations

import pytest

from server.cli import UserError
from server.cluster.directory_cli import check_redis
from tests.redis_server import free_port


def test_check_redis_is_a_user_error_naming_the_url_without_its_password(redis_url):
    check_redis(redis_url)  # answers: nothing to say
    port = free_port()  # nothing listens there
    with pytest.raises(UserError) as err:
        check_redis(f"redis://:hunter2@127.0.0.1:{port}/0")
    assert f"redis://:***@127.0.0.1:{port}/0" in err.value.message
    assert "hunter2" not in str(err.value) and "--redis" in err.value.hint
