"""Reading the server's side (`client_demo.loadtest.scrape`): merging several servers'
/metrics, histogram quantiles over the window."""

from __future__ import annotations

import math

import numpy as np
import pytest

from client_demo.loadtest.scrape import counter, histogram_quantiles, merge_metrics


def _exposition(obs: np.ndarray, players: int, spectators: int, extra: str = "") -> str:
    """A server's /metrics as prometheus_client writes it: a tick histogram of `obs`
    (seconds) and the connections gauge, with their comment lines."""
    lines = ["# HELP avatar_tick_seconds Tick duration", "# TYPE avatar_tick_seconds histogram"]
    for le in (0.001, 0.005, 0.01, 0.05, math.inf):
        text = "+Inf" if le == math.inf else repr(le)
        lines.append(f'avatar_tick_seconds_bucket{{le="{text}"}} {float(np.sum(obs <= le))}')
    lines += [
        f"avatar_tick_seconds_count {float(len(obs))}",
        f"avatar_tick_seconds_sum {float(obs.sum())}",
        "# TYPE avatar_connections gauge",
        f'avatar_connections{{kind="player"}} {float(players)}',
        f'avatar_connections{{kind="spectator"}} {float(spectators)}',
    ]
    return "\n".join(lines) + "\n" + extra


def test_merge_metrics_sums_samples_with_the_same_name_and_labels(rng):
    a, b = rng.exponential(0.003, 300), rng.exponential(0.02, 100)
    merged = merge_metrics([
        _exposition(a, 3, 1, 'only_here_total 2.0\nx{path="a b}"} 1.0\n'),
        _exposition(b, 5, 0, 'x{path="a b}"} 1.5\n'),
    ])  # fmt: skip
    assert "#" not in merged
    assert counter(merged, "avatar_connections", {"kind": "player"}) == 8  # labels apart
    assert counter(merged, "avatar_connections", {"kind": "spectator"}) == 1
    assert counter(merged, "avatar_tick_seconds_count") == 400
    assert counter(merged, "avatar_tick_seconds_sum") == pytest.approx(a.sum() + b.sum())
    assert counter(merged, "only_here_total") == 2.0 and 'x{path="a b}"} 2.5' in merged
    # the quantiles of the merged buckets are those of all the observations together
    qs = (0.5, 0.9, 0.99)
    together = histogram_quantiles("", _exposition(np.concatenate([a, b]), 0, 0),
                                   "avatar_tick_seconds", qs)  # fmt: skip
    assert histogram_quantiles("", merged, "avatar_tick_seconds", qs) == together
    alone = histogram_quantiles("", _exposition(a, 0, 0), "avatar_tick_seconds", qs)
    assert alone != together
    assert merge_metrics([_exposition(a, 3, 1)]) == merge_metrics([_exposition(a, 3, 1), ""])
    assert merge_metrics([]) == ""


def test_histogram_quantiles_use_the_window_only():
    before = 'x_bucket{le="0.001"} 10.0\nx_bucket{le="0.01"} 10.0\nx_bucket{le="+Inf"} 10.0\n'
    after = 'x_bucket{le="0.001"} 10.0\nx_bucket{le="0.01"} 110.0\nx_bucket{le="+Inf"} 110.0\n'
    q = histogram_quantiles(before, after, "x")
    assert 1.0 < q["p50"] < 10.0 and q["p50"] < q["p99"] <= 10.0
