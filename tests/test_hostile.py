"""`bench/hostile.py`, the hostile-traffic bench's command line and verdict: it loads with
its parts (`bench/hostile_*.py`) when loaded by path, and `problems` names every broken
promise. The server-side behaviour it measures is tested in `tests/test_hostile_*.py`.
"""

import sys

import pytest

from tests.benches import load

hostile = load("hostile.py")


def clean_run() -> dict:
    window = {"tick_errors": 0, "protocol_errors": {}, "good": {"min_fraction": 1.0}}
    return {
        "baseline": dict(window),
        "hostile": {**window, "protocol_errors": {"bad_msgpack": 2},
                    "hostile": {"documented_errors": {"bad_msgpack": 2},
                                "not_as_documented": {}, "client_failures": {}}},
        "slow": dict(window),
        "churn": [{**window, "hostile": {"failures": {}}, "before": {"rooms": 1},
                   "after": {"rooms": 1}}],
        "final": {"gauges": {"players": 0, "rooms": 0}},
        "good_clients_closed_early": {},
        "server_log": {"tracebacks": 0},
        "server_exit": 0,
        "fuzz": {"other_exceptions": {}, "roundtrip_mismatches": 0},
    }  # fmt: skip


def test_loaded_by_path_with_its_parts():
    import hostile_fuzz  # bench/ is on the path once the script is loaded

    assert hostile.fuzz is hostile_fuzz.fuzz
    assert all(name.startswith("hostile_") for name in sys.modules if name.startswith("hostile"))


def test_a_clean_run_has_no_problems():
    assert hostile.problems(clean_run()) == []


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("baseline", "tick_errors"), 3, "baseline: 3 tick errors"),
        (("slow", "protocol_errors"), {"internal_error": 1}, "slow: 1 internal_error"),
        (("hostile", "good"), {"min_fraction": 0.5}, "a good client got 50.0%"),
        (("hostile", "protocol_errors"), {"bad_msgpack": 3}, "the server counted"),
        (("churn", 0, "after"), {"rooms": 2}, "churn round 1"),
        (("final", "gauges"), {"players": 1}, "not back to zero"),
        (("server_log", "tracebacks"), 1, "1 tracebacks"),
        (("server_exit",), None, "server exit status None"),
        (("fuzz", "roundtrip_mismatches"), 2, "2 round trips"),
    ],
)
def test_each_broken_promise_is_a_problem(path, value, named):
    out = clean_run()
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    found = hostile.problems(out)
    assert len(found) == 1 and named in found[0], found
