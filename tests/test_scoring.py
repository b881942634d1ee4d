"""`client_demo.scoring`: every method scored on the same draws, in bounded memory."""

from client_demo.scoring import METHODS


def test_score_draw_scores_every_method_on_the_same_pairs():
    """A pair is drawn by every method or by none; the settle mask applies to all alike."""
    from types import SimpleNamespace

    import numpy as np

    from client_demo.clock import ClockMap
    from client_demo.reckoning import DeadReckoner
    from client_demo.scoring import Meter, score_draw

    h = [0.5, 1.0]
    clock = ClockMap()
    clock.on_frame(100.0, 0.0)  # server = local + 100
    off = np.array([[0.5, 0, 0], [1.0, 0, 0]])  # 1 m/s along x

    def reckoners(classical_keys):
        rs = {m: DeadReckoner(h, "gru" if m in ("gru", "kalman") else m) for m in METHODS}
        for key in ("b", "c"):  # gru knows both; the relay feed has not brought "c" yet
            for m, r in rs.items():
                if m == "gru" or key in classical_keys:
                    r.update(key, 100.0, [0.0, 0, 0], off, 100.0)
        return rs

    observer = SimpleNamespace(client=SimpleNamespace(clock=clock), reckoners=reckoners("b"))
    silent = SimpleNamespace(client=SimpleNamespace(clock=ClockMap()), reckoners=reckoners("bc"))
    truth = np.array([[0.0, 0, 0], [0.5, 0, 0], [3.0, 0, 0]])
    index = {"a": 0, "b": 1, "c": 2}
    meter = Meter()
    assert score_draw([observer, silent], index, truth, np.ones(3, bool), 0.5, meter) == 1
    assert score_draw([observer], index, truth, np.array([1, 0, 1], bool), 0.5, meter) == 1
    for m in METHODS:  # only (observer, b), twice; the second draw in a teleport's settle
        assert meter.errors[m].n == 1 and meter.everything[m].n == 2, m
    assert meter.errors["gru"].summary()["mean"] < 1e-9  # on the path at 0.5 s
    assert abs(meter.errors["hold"].summary()["mean"] - 0.5) < 1e-9


def test_error_stats_match_numpy_in_bounded_memory():
    import numpy as np

    from client_demo.scoring import ErrorStats

    rng = np.random.default_rng(0)
    s = ErrorStats()
    assert s.summary() == {"mean": None, "p95": None, "n": 0}
    chunks = [rng.exponential(0.2, 1000) for _ in range(20)] + [np.array([50.0])]
    for c in chunks:
        s.add(c)
    e = np.concatenate(chunks)
    out = s.summary()
    assert out["n"] == len(e) and abs(out["mean"] - e.mean()) < 1e-9
    assert abs(out["p95"] - np.percentile(e, 95)) <= 0.0011
    assert s.hist.nbytes < 200_000
    big = ErrorStats()  # one large batch (bincount) counts as the small ones (add.at)
    big.add(e)
    assert (big.hist == s.hist).all() and abs(big.total - s.total) < 1e-9
