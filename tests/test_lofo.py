"""bench/lofo.py: which data each held-out model trains on, the tables, one tiny run."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from training.train import source_weights
from training.train_config import TrainConfig, config_from_args

PATH = Path(__file__).resolve().parents[1] / "bench" / "lofo.py"
spec = importlib.util.spec_from_file_location("lofo", PATH)
lofo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lofo)

HS = [f"{h / 10:g}" for h in range(1, 11)]


def shipped() -> TrainConfig:
    return config_from_args(["--preset", "shipped"])


@pytest.mark.parametrize("family", ["juelich", "soccer", "sdd", "ethucy", "synthetic"])
def test_held_out_config_drops_that_family_and_keeps_the_rest(family):
    base = shipped()
    assert set(lofo.sources(base)) == set(lofo.FAMILIES)  # the preset trains on all five
    cfg = lofo.held_out_config(base, family, out="x/without.pt")
    assert lofo.sources(cfg) == [s for s in lofo.sources(base) if s != family]
    assert cfg.out == "x/without.pt"
    # the weights stay valid for the remaining sources (an unknown source would raise)
    w = source_weights(cfg.weights, lofo.sources(cfg))
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


def test_training_code_holds_every_training_module_train_reads():
    """Every `training` module that `training/train.py` imports (directly or not) is digested."""
    root = PATH.parents[1]
    seen, todo = set(), ["training/train.py"]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        for node in ast.walk(ast.parse((root / rel).read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                path = name.replace(".", "/") + ".py"
                if name.startswith("training.") and (root / path).is_file():
                    todo.append(path)
    assert seen <= set(lofo.TRAINING_CODE)
