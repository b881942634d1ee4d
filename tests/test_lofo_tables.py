"""bench/lofo_tables.py: the families and their test splits, the per-family tables and the
summary (pure: predictor tables in, rows and text out)."""

from __future__ import annotations

import pytest
from benches import load

from training.eval_tables import CLASSICAL, CLASSICAL_PATHS
from training.evaluate import SUITE

lofo_tables = load("lofo_tables.py")

HS = [f"{h / 10:g}" for h in range(1, 11)]


def test_every_family_has_a_test_split_of_the_evaluate_suites():
    suites = {s for specs in SUITE.values() for s in specs}
    assert set(lofo_tables.TEST_SPLITS.values()) <= suites
    assert set(lofo_tables.FAMILIES) == {"juelich", "soccer", "sdd", "ethucy", "synthetic"}


def fake_predictors(gru: float) -> dict:
    """A `result["predictors"]` table: cv best at short horizons, kalman at long ones."""

    def path(by_h, render, p95):
        return {
            "ade": sum(by_h) / len(by_h),
            "ade_by_horizon": dict(zip(HS, by_h, strict=True)),
            "render_mean": render,
            "render_p95": p95,
        }

    cv = [0.1 * (i + 1) for i in range(10)]
    kalman = [c * (1.2 if i < 5 else 0.8) for i, c in enumerate(cv)]
    best = [min(a, b) for a, b in zip(cv, kalman, strict=True)]
    table = {k: path([c * 3 for c in cv], 0.4, 0.9) for k in CLASSICAL_PATHS}  # also-rans
    render_only = [k for k in CLASSICAL if k not in CLASSICAL_PATHS]  # interp
    table |= {k: {"render_mean": 0.2, "render_p95": 0.4} for k in render_only}
    return table | {
        "hold": path([1.0] * 10, 0.5, 1.0),
        "cv": path(cv, 0.10, 0.30),
        "cv_window": path([c * 1.5 for c in cv], 0.12, 0.35),
        "kalman": path(kalman, 0.08, 0.32),
        "gru": path([b * gru * (1 + 0.01 * i) for i, b in enumerate(best)], 0.08 * gru, 0.3 * gru),
        "gru_raw": path([b * 2 * gru for b in best], 0.16 * gru, 0.6 * gru),
    }


def test_family_table_and_summary():
    t = lofo_tables.family_table({"predictors": fake_predictors(0.9)}, fake_predictors(0.5))
    assert t["columns"] == ["render_mean", "render_p95", *HS]
    names = t["best_classical_name"]
    assert names["render_mean"] == "kalman" and names["render_p95"] == "cv"
    assert [names[h] for h in HS] == ["cv"] * 5 + ["kalman"] * 5
    assert t["best_classical"]["0.1"] == pytest.approx(0.1)
    assert t["best_classical"]["1"] == pytest.approx(0.8)
    assert t["out_of_family_vs_best"]["render_mean"] == pytest.approx(0.9)
    assert t["in_family_vs_best"]["1"] == pytest.approx(0.5 * 1.09)
    assert t["out_of_family"]["0.5"] == pytest.approx(0.5 * 0.9 * 1.04)
    assert t["raw_out_of_family_vs_best"]["1"] == pytest.approx(1.8)  # the network alone
    text = lofo_tables.format_family_table(t, "football")
    assert "network alone, out / best" in text
    assert text.splitlines()[0] == "-- football"
    assert "kalman" in text and "@1s" in text and "0.900" in text

    row = lofo_tables.summary_row("soccer", t)
    assert row["out_of_family"]["worst_at"] == "1"
    assert row["out_of_family"]["worst"] == pytest.approx(0.9 * 1.09)
    assert row["in_family"]["last"] == pytest.approx(0.5 * 1.09)
    assert "football" in lofo_tables.format_summary([row])
    md = lofo_tables.summary_markdown([row], "note").splitlines()
    assert md[0].startswith("| family |") and md[1].startswith("|---|")
    assert md[2].startswith("| football | `real:soccer:test` | x0.900 |")
    assert md[-1] == "note"
