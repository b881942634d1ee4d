"""`client_demo.players`: the bots' true motion and their send policies."""

import time

import numpy as np

from client_demo.__main__ import build_parser
from client_demo.players import Motion, make_policy
from client_demo.send_policy import FixedRate, ThresholdPolicy


def test_motion_is_finite_everywhere_and_the_same_for_a_seed():
    t0 = time.monotonic()
    a = Motion(3, seed=7, world=20.0, t0=t0, segment=5.0)
    b = Motion(3, seed=7, world=20.0, t0=t0, segment=5.0)
    for now in (t0 - 1.0, t0, t0 + 2.5, t0 + 4.9):
        p = a.all_at(now)
        assert p.shape == (3, 3) and np.isfinite(p).all()
        np.testing.assert_array_equal(p, b.all_at(now))
    # past the made segments (no prefetch ran): the last one made, still finite
    assert np.isfinite(a.at(0, t0 + 12.0)).all()


def test_make_policy_follows_the_flags():
    h = np.round(np.arange(1, 11) * 0.1, 10)
    fixed = make_policy(build_parser().parse_args(["--send-rate", "5"]), h)
    assert isinstance(fixed, FixedRate) and fixed.rate == 5.0
    args = build_parser().parse_args(
        ["--send-policy", "threshold", "--threshold", "0.2", "--heartbeat", "2", "--max-rate", "10"]
    )
    pol = make_policy(args, h)
    assert isinstance(pol, ThresholdPolicy)
    assert (pol.threshold, pol.heartbeat, pol.min_interval) == (0.2, 2.0, 0.1)
