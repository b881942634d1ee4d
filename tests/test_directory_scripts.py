"""server/cluster/directory_scripts.py: the heartbeat's ARGV as HEARTBEAT_LUA reads it.

The scripts themselves run against a real redis-server in tests/test_directory.py.
"""

from __future__ import annotations

from server.cluster import directory_scripts as S


def test_heartbeat_args_are_the_layout_the_script_reads():
    fields = {"url": "ws://h:1/", "load": "0.5"}
    args = S.heartbeat_args("avatar", 5000, "h:1:n", "ws://h:1/", 0.5, True, 12.0, fields, ["a"])
    assert args[:9] == ["avatar:process:", "avatar:room:", 5000, "h:1:n", "ws://h:1/", "0.5",
                        "1", "12.0", 2]  # fmt: skip
    assert args[9:13] == ["url", "ws://h:1/", "load", "0.5"]  # ARGV[10 ..] field/value pairs
    assert args[13:] == ["a"]  # then the rooms
    assert "ARGV[9]" in S.HEARTBEAT_LUA and "10 + 2 * n" in S.HEARTBEAT_LUA


def test_numbers_are_stored_exactly():
    assert float(S.redis_number(0.1)) == 0.1 and S.redis_number(3) == "3.0"
