"""bench/peers/run.py: the service level and the ladder (the pure parts; the bench itself
runs Node and servers for minutes and is not part of the suite)."""

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "bench" / "peers" / "run.py"
spec = importlib.util.spec_from_file_location("peers_run", PATH)
peers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peers)


def report(errors=0, p99=50.0, frames=1.0, **extra):
    return {"errors": errors, "e2e_ms": {"p99": p99}, "frames_fraction": frames, **extra}


def test_service_level_bounds_are_inclusive():
    assert peers.held(report(p99=100.0, frames=0.95))
    assert not peers.held(report(p99=100.01))
    assert not peers.held(report(frames=0.949))
    assert not peers.held(report(errors=1))
    assert not peers.held(report(p99=None))  # no latency sample: not measured, not held


def test_updates_fraction_is_preferred_over_frames_fraction():
    assert peers.held(report(frames=0.5, updates_fraction=0.99))
    assert not peers.held(report(frames=0.99, updates_fraction=0.5))
    # a report whose updates could not be measured falls back to its frames
    assert peers.held(report(frames=0.99, updates_fraction=None))
    assert not peers.held(report(frames=0.5, updates_fraction=None))


def test_a_client_left_out_of_the_report_breaks_the_step():
    assert not peers.held(report(clients_unreported=10))
    assert peers.held(report(clients_unreported=0))


def steps(*held):
    return [{"clients": 100 * (i + 1), "held": h} for i, h in enumerate(held)]


def test_largest_is_the_last_step_before_the_first_break():
    assert peers.largest_held(steps(True, True, False, True)) == 200
    assert peers.largest_held(steps(False, True)) == 0
    assert peers.largest_held(steps(True, True, True)) == 300
    assert peers.largest_held([]) == 0


def test_a_step_holds_when_any_of_its_tries_held():
    tries = [
        {"clients": 100, "held": True},
        {"clients": 200, "held": False},
        {"clients": 200, "held": True},  # the second try of 200 held
        {"clients": 300, "held": False},
        {"clients": 300, "held": False},
    ]
    assert peers.largest_held(tries) == 200


def test_ratio_needs_both_and_a_colyseus_that_held_something():
    assert peers.ratio({"colyseus": 200, "ours": 500}) == 2.5
    assert peers.ratio({"colyseus": 0, "ours": 500}) is None
    assert peers.ratio({"ours": 500}) is None


def test_bot_processes():
    assert peers.bot_procs("auto", 100, 2) == 1
    assert peers.bot_procs("auto", 300, 2) == 2
    assert peers.bot_procs("auto", 2000, 2) == 2
    assert peers.bot_procs("3", 2, 2) == 2  # never more processes than bots


@pytest.mark.parametrize("argv", [["--clients", "a,b"], ["--clients", "200,100"],
                                  ["--duration", "0"], ["--bot-procs", "0"],
                                  ["--tries", "0"]])  # fmt: skip
def test_bad_flags_are_usage_errors_before_anything_starts(argv, capsys):
    with pytest.raises(SystemExit) as e:
        peers.main(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err
