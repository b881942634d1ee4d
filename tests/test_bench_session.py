"""bench/session.py: a tiny run times every message and writes its figure."""

from __future__ import annotations

import json

import pytest

from tests.benches import load

bench = load("session.py")


def test_a_tiny_run_writes_its_figure(tmp_path):
    out = tmp_path / "s.json"
    res = bench.main(["--messages", "200", "--repeats", "1", "--json", str(out)])
    assert set(res["us_per_pos"]) == {"msgpack", "binary"}
    assert all(us > 0 for us in res["us_per_pos"].values())
    assert json.loads(out.read_text()) == res


def test_flags_are_checked():
    with pytest.raises(SystemExit) as e:
        bench.main(["--messages", "0"])
    assert e.value.code == 2
