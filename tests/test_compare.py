"""`client_demo.compare`: the Kalman baseline tuned as the offline evaluation tunes it."""


def test_kalman_is_tuned_on_the_grid_of_the_offline_evaluation(monkeypatch):
    import numpy as np

    import client_demo.compare as compare
    from client_demo.__main__ import build_parser
    from client_demo.compare import tune_kalman
    from training.baselines import Q_GRID, R_GRID

    monkeypatch.setattr(compare, "TUNE_USERS", 3)
    monkeypatch.setattr(compare, "TUNE_SECONDS", 6.0)
    h = np.round(np.arange(1, 11) * 0.1, 10)
    for policy in ("fixed", "threshold"):
        args = build_parser().parse_args(["--send-policy", policy])
        kf = tune_kalman(args, h, 20.0)
        assert kf.q in Q_GRID and kf.r in R_GRID, (policy, kf)
        again = tune_kalman(args, h, 20.0)  # held-out users of a fixed seed: the same
        assert (again.q, again.r) == (kf.q, kf.r)
