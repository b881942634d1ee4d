"""bench/lofo.py: which data each held-out model trains on, the tables, one tiny run."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from training import evaluate as E
from training import train as T

PATH = Path(__file__).resolve().parents[1] / "bench" / "lofo.py"
spec = importlib.util.spec_from_file_location("lofo", PATH)
lofo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lofo)

HS = [f"{h / 10:g}" for h in range(1, 11)]


def shipped() -> T.TrainConfig:
    return T.config_from_args(["--preset", "shipped"])


def test_every_family_has_a_test_split_of_the_evaluate_suites():
    suites = {s for specs in E.SUITE.values() for s in specs}
    assert set(lofo.TEST_SPLITS.values()) <= suites
    assert set(lofo.FAMILIES) == {"juelich", "soccer", "sdd", "ethucy", "synthetic"}


@pytest.mark.parametrize("family", ["juelich", "soccer", "sdd", "ethucy", "synthetic"])
def test_held_out_config_drops_that_family_and_keeps_the_rest(family):
    base = shipped()
    assert set(lofo.sources(base)) == set(lofo.FAMILIES)  # the preset trains on all five
    cfg = lofo.held_out_config(base, family, out="x/without.pt")
    assert lofo.sources(cfg) == [s for s in lofo.sources(base) if s != family]
    assert cfg.out == "x/without.pt"
    # the weights stay valid for the remaining sources (an unknown source would raise)
    w = T.source_weights(cfg.weights, lofo.sources(cfg))
    if family == "synthetic":
        assert cfg.synthetic_avatars == 0 and cfg.weights == ""
        assert set(w.values()) == {0.25}
    else:
        assert cfg.weights == "synthetic=2" and w["synthetic"] == 2 * min(w.values())
    # everything else as the preset
    same = {
        k
        for k, v in dataclasses.asdict(cfg).items()
        if v == dataclasses.asdict(base)[k] and k != "out"
    }
    changed = set(dataclasses.asdict(cfg)) - same - {"out"}
    assert changed <= {"synthetic_avatars", "ethucy", "real", "weights"}
    assert cfg.seed == base.seed and cfg.kalman_q == base.kalman_q


def test_held_out_config_refuses_unknown_or_empty():
    with pytest.raises(ValueError, match="unknown family"):
        lofo.held_out_config(shipped(), "mars")
    only = dataclasses.replace(shipped(), synthetic_avatars=0, ethucy=False, real=["sdd"])
    with pytest.raises(ValueError, match="nothing is left"):
        lofo.held_out_config(only, "sdd")


def test_drop_weight():
    assert lofo.drop_weight("synthetic=2, sdd=0.5", "sdd") == "synthetic=2"
    assert lofo.drop_weight("", "sdd") == ""
    assert lofo.drop_weight("synthetic=2", "soccer") == "synthetic=2"


def test_cache_matches_settings_and_code_not_out_or_threads(tmp_path, monkeypatch):
    cfg = dataclasses.replace(shipped(), out=str(tmp_path / "m.pt"), epochs=2)
    assert lofo.cached_run(cfg) is None
    Path(cfg.out).write_bytes(b"ckpt")
    Path(cfg.out).with_suffix(".json").write_text(json.dumps({"settings": lofo.settings(cfg)}))
    assert lofo.cached_run(dataclasses.replace(cfg, threads=7)) is not None
    assert lofo.cached_run(dataclasses.replace(cfg, epochs=3)) is None
    assert lofo.changed_settings(dataclasses.replace(cfg, epochs=3, lr=1.0)) == ["epochs", "lr"]
    assert lofo.changed_settings(cfg) == []
    monkeypatch.setattr(lofo, "code_digest", lambda: "other")  # the training code changed
    assert lofo.cached_run(cfg) is None and lofo.changed_settings(cfg) == ["code"]
    monkeypatch.undo()
    Path(cfg.out).unlink()  # a record without its checkpoint is no run
    assert lofo.cached_run(cfg) is None


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
    table = {k: path([c * 3 for c in cv], 0.4, 0.9) for k in E.CLASSICAL_PATHS}  # also-rans
    render_only = [k for k in E.CLASSICAL if k not in E.CLASSICAL_PATHS]  # interp
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
    t = lofo.family_table({"predictors": fake_predictors(0.9)}, fake_predictors(0.5))
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
    text = lofo.format_family_table(t, "football")
    assert "network alone, out / best" in text
    assert text.splitlines()[0] == "-- football"
    assert "kalman" in text and "@1s" in text and "0.900" in text

    row = lofo.summary_row("soccer", t)
    assert row["out_of_family"]["worst_at"] == "1"
    assert row["out_of_family"]["worst"] == pytest.approx(0.9 * 1.09)
    assert row["in_family"]["last"] == pytest.approx(0.5 * 1.09)
    assert "football" in lofo.format_summary([row])
    md = lofo.summary_markdown([row], "note").splitlines()
    assert md[0].startswith("| family |") and md[1].startswith("|---|")
    assert md[2].startswith("| football | `real:soccer:test` | x0.900 |")
    assert md[-1] == "note"


def test_end_to_end_tiny(tmp_path, monkeypatch, capsys):
    # "juelich" held out of a tiny simulated-only mix, scored on a few simulated users.
    monkeypatch.setitem(lofo.TEST_SPLITS, "juelich", "synthetic:2:777:6")
    argv = ["--families", "juelich", "--epochs", "1", "--threads", "1", "--out", str(tmp_path)]
    argv += ["--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]
    argv += ["--", "--synthetic-avatars", "3", "--synthetic-duration", "8", "--synthetic-rooms"]
    argv += ["1", "--synthetic-val-avatars", "2", "--no-ethucy", "--real", "none", "--window"]
    argv += ["32", "--burn-in", "8", "--noisy-copies", "0", "--kalman-q", "1", "--kalman-r", "0.01"]
    scored, score = [], lofo.score
    monkeypatch.setattr(
        lofo, "score", lambda spec, lm: scored.append(score(spec, lm)) or scored[-1]
    )
    report = lofo.main(argv)
    assert (tmp_path / "without-juelich.pt").is_file()
    fam = report["families"]["juelich"]
    assert fam["train"]["sources"] == ["synthetic"] and not fam["train"]["cached"]
    assert set(fam["table"]["out_of_family_vs_best"]) == {"render_mean", "render_p95", *HS}
    assert json.loads((tmp_path / "r.json").read_text())["summary"][0]["family"] == "juelich"
    assert "| Jülich crowds |" in (tmp_path / "r.md").read_text()
    out = capsys.readouterr().out
    assert "served GRU, out-of-family" in out and "leave-one-family-out summary" in out
    monkeypatch.setattr(lofo, "score", lambda spec, lm: scored.pop(0))  # (scored above)
    report = lofo.main(argv)  # the same settings again: no training
    assert report["families"]["juelich"]["train"]["cached"]
    assert "cached:" in capsys.readouterr().out
