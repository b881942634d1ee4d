"""Leave-one-family-out: the GRU on each data family when it was trained without it.

    python bench/lofo.py [--families juelich,soccer,sdd,ethucy,synthetic] [--epochs 4]
                         [--threads N] [--device cpu|cuda] [--out runs/lofo]
                         [--json runs/lofo.json] [--markdown runs/lofo.md]
                         [--in-family-model server/models/avatar_gru.pt | train]
                         [--preset shipped] [--retune-prior] [--retrain]
                         [-- TRAINING FLAGS]

For every family F (`FAMILIES`: the Jülich crowds, the football match, SDD, ETH/UCY, the
simulated game avatars) a model is trained with the preset (`--preset`, default the
shipped one) minus F — its training and validation data both, so neither the weights nor
the early stopping see F: no simulated avatars, `ethucy = false`, or F taken out of
`real`; its entry in `weights` goes too — for `--epochs` epochs, everything else as the
preset (same seed, same pinned Kalman prior; `--retune-prior` tunes the prior on the mix
without F instead). Flags after `--` are `python -m training.train` flags applied on top
of the preset (e.g. `-- --max-batches 50 --synthetic-avatars 80` for a quick run).
Checkpoints go to `--out`/without-F.pt with a without-F.json beside it, written when the
training finished; a rerun whose settings match that file (the configuration but `out`
and `threads`, and a digest of the training code, `TRAINING_CODE`; not the data) skips
the training and says so (`--retrain` trains anyway).

Each model is scored on F's test split (`TEST_SPLITS`, the specs of `training.evaluate`'s
suites) with `training.evaluate.evaluate` — the call its CLI makes, with the CLI's default
network — beside the in-family model (by default the shipped checkpoint, trained on every
family for the preset's epochs; `--in-family-model train` trains the full preset with the
bench's settings instead, `--out`/all-families.pt, for a like-for-like comparison). Per
family one table: both GRUs and the best classical predictor at every column (named),
then GRU / best classical for both; then a summary, family x (render mean, worst horizon,
1 s) for both models. Ratios under 1 mean the GRU beats every classical predictor there.
"Served GRU" is what `evaluate` calls `gru`; where it also scores `gru_raw` (the network
without the served blend) those ratios are printed too. The classical set is evaluate's
(`CLASSICAL`). Keep `--threads 1` (the preset's) on a busy machine: more torch threads than
free cores slow it many times over (docs/performance.md has the time a family takes).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from bench.lofo_tables import (
    FAMILIES,
    TEST_SPLITS,
    TITLES,
    family_table,
    format_family_table,
    format_summary,
    summary_markdown,
    summary_row,
)
from server import cli
from server.core import model_cli
from training import evaluate as E
from training import train as T
from training.data_specs import load_scenes
from training.eval_tables import ratios
from training.render import NetworkConfig
from training.train_config import TrainConfig, config_from_args

# `python -m training.evaluate`'s defaults (--latency 100 --send-rate 20 --loss 0.02 --tick 0.05)
NETWORK = NetworkConfig(latency=0.1, send_rate=20.0, loss=0.02)
TICK = 0.05
NOT_SETTINGS = ("out", "threads")  # fields that do not change what a training run learns
ROOT = Path(__file__).resolve().parents[1]
# what a trained checkpoint depends on besides its settings (a change there retrains)
TRAINING_CODE = (
    "training/train.py",
    "training/train_config.py",
    "training/windows.py",
    "training/datasets.py",
    "training/track_ops.py",
    "training/realmotion.py",
    "training/simulate.py",
    "training/sim_config.py",
    "training/sim_world.py",
    "training/baselines.py",
    "server/core/features.py",
    "server/core/layout.py",
    "server/core/model.py",
)


# -----------------------------------------------------------------------------------------
# the training mix per held-out family


def sources(cfg: TrainConfig) -> list[str]:
    """The data sources `training.train.load_sources` reads for `cfg`, in its order."""
    out = ["synthetic"] if cfg.synthetic_avatars > 0 else []
    out += ["ethucy"] if cfg.ethucy else []
    out += [r for r in cfg.real if r != "none"]
    return out + [f"data{i}" for i in range(len(cfg.data))]


def drop_weight(spec: str, source: str) -> str:
    """`weights` ("synthetic=2,sdd=0.5") without `source`'s entry (it would be unknown)."""
    items = [x.strip() for x in spec.split(",") if x.strip()]
    return ",".join(x for x in items if x.partition("=")[0].strip() != source)


def held_out_config(base: TrainConfig, family: str, out: str = "") -> TrainConfig:
    """`base` without `family`'s data (training and validation). Raises ValueError for an
    unknown family or when nothing would be left to train on."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    change: dict = {"weights": drop_weight(base.weights, family)}
    if family == "synthetic":
        change["synthetic_avatars"] = 0
    elif family == "ethucy":
        change["ethucy"] = False
    else:
        change["real"] = [r for r in base.real if r != family]
    if out:
        change["out"] = out
    cfg = dataclasses.replace(base, **change)
    if not sources(cfg):
        raise ValueError(f"without {family} nothing is left to train on")
    return cfg


def code_digest() -> str:
    """A digest of the code a training run's result depends on (`TRAINING_CODE`)."""
    h = hashlib.sha256()
    for rel in TRAINING_CODE:
        h.update(rel.encode() + b"\0" + (ROOT / rel).read_bytes())
    return h.hexdigest()[:16]


def settings(cfg: TrainConfig) -> dict:
    """What decides a run's result, JSON-normalised (tuples as lists): the configuration
    (less `NOT_SETTINGS`) and the training code's digest."""
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for k in NOT_SETTINGS:
        d.pop(k, None)
    return {**d, "code": code_digest()}


def _record(cfg: TrainConfig) -> dict | None:
    ckpt, info = Path(cfg.out), Path(cfg.out).with_suffix(".json")
    if not (ckpt.is_file() and info.is_file()):
        return None
    try:
        return json.loads(info.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def cached_run(cfg: TrainConfig) -> dict | None:
    """The record of a finished run with `cfg`'s settings at `cfg.out`, else None."""
    record = _record(cfg)
    return record if record is not None and record.get("settings") == settings(cfg) else None


def changed_settings(cfg: TrainConfig) -> list[str]:
    """The settings in which the finished run at `cfg.out` differs from `cfg` (none: [])."""
    old = (_record(cfg) or {}).get("settings") or {}
    new = settings(cfg)
    return sorted(k for k in {*old, *new} if old.get(k) != new.get(k)) if old else []


def ensure_trained(cfg: TrainConfig, label: str, *, retrain: bool = False) -> dict:
    """Train `cfg` unless a finished run with its settings is at `cfg.out` (or `retrain`);
    the run's record (settings, sources, best epoch, epochs run, seconds, and `cached`)."""
    record = None if retrain else cached_run(cfg)
    if record is not None:
        print(
            f"[{label}] cached: {cfg.out} has these settings "
            f"({record['epochs_run']} epochs, {record['seconds']} s); not training"
        )
        return {**record, "cached": True}
    changed = changed_settings(cfg)
    if changed and not retrain:
        print(f"[{label}] {cfg.out} was trained with other settings ({', '.join(changed)})")
    print(f"[{label}] training on {', '.join(sources(cfg))} for {cfg.epochs} epochs -> {cfg.out}")
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    # The record goes first: a run stopped halfway must not pass for the old one.
    Path(cfg.out).with_suffix(".json").unlink(missing_ok=True)
    with _timed_fit() as fit_seconds:
        summary = T.train(cfg, progress=True)
    epochs_run = len(summary["history"])
    prep = summary["seconds"] - fit_seconds[0]
    record = {
        "settings": settings(cfg),
        "sources": sources(cfg),
        "best_epoch": summary["best_epoch"],
        "best_score": summary["best_score"],
        "epochs_run": epochs_run,
        "seconds": summary["seconds"],
        "data_seconds": round(prep, 1),
        "seconds_per_epoch": round(fit_seconds[0] / max(1, epochs_run), 1),
    }
    Path(cfg.out).with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(
        f"[{label}] trained in {summary['seconds']} s: data {record['data_seconds']} s, "
        f"{record['seconds_per_epoch']} s per epoch (best epoch {summary['best_epoch']})"
    )
    return {**record, "cached": False}


@contextlib.contextmanager
def _timed_fit():
    """Time `training.train.fit` (the epochs) inside `train` apart from the data preparation:
    yields a one-element list that holds its seconds afterwards."""
    seconds, fit = [0.0], T.fit

    def timed(*a, **k):
        t = time.time()
        try:
            return fit(*a, **k)
        finally:
            seconds[0] = time.time() - t

    T.fit = timed
    try:
        yield seconds
    finally:
        T.fit = fit


# -----------------------------------------------------------------------------------------
# the run


def score(spec: str, lm) -> dict:
    """`training.evaluate.evaluate` on `spec` as its CLI calls it (default network)."""
    result = E.evaluate(load_scenes(spec), lm, net=NETWORK, tick=TICK)
    result["ratios"] = ratios(result)
    return result


def base_config(args, train_flags: list[str]) -> TrainConfig:
    cfg = config_from_args(["--preset", args.preset, *train_flags])
    change = {"epochs": args.epochs, "device": args.device}
    if args.threads:
        change["threads"] = args.threads
    if args.retune_prior:
        change |= {"kalman_q": 0.0, "kalman_r": 0.0}
    return dataclasses.replace(cfg, **change)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench/lofo.py",
        description="Leave-one-family-out: each family scored by a GRU trained without it.",
        epilog="Flags after `--` go to python -m training.train (on top of the preset).",
    )
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    ap.add_argument("--epochs", type=int, default=4, help="per held-out model (preset: 20)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the preset's)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto (training and scoring)")
    ap.add_argument("--preset", default="shipped", help="training preset (name or TOML path)")
    ap.add_argument("--retune-prior", action="store_true", help="tune the Kalman prior per mix")
    ap.add_argument("--out", default="runs/lofo", help="checkpoint directory")
    ap.add_argument("--retrain", action="store_true", help="train even when a run is cached")
    ap.add_argument("--json", default="runs/lofo.json", help="write every figure here")
    ap.add_argument("--markdown", help="write the summary as a Markdown table here")
    ap.add_argument(
        "--in-family-model",
        help="checkpoint trained with every family (default: the shipped one, "
        "server/models/avatar_gru.pt), or `train`: the full preset with the bench's settings",
    )
    return ap


@cli.command("bench/lofo.py")
def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    command_line = shlex.join(["python", "bench/lofo.py", *argv])
    train_flags: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_flags = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    for f in families:
        if f not in FAMILIES:
            raise cli.UserError(f"--families: unknown family {f!r}", f"one of {','.join(FAMILIES)}")
    with cli.user_errors((ValueError, TypeError), "bad training configuration", "check -- flags"):
        base = base_config(args, train_flags)
    model_cli.check_device(args.device)
    if base.threads:
        import torch

        torch.set_num_threads(base.threads)
    out_dir = Path(args.out)
    t0 = time.time()

    runs: dict[str, dict] = {}
    in_path = args.in_family_model
    if in_path == "train":
        in_cfg = dataclasses.replace(base, out=str(out_dir / "all-families.pt"))
        runs["all-families"] = ensure_trained(in_cfg, "all families", retrain=args.retrain)
        in_path = in_cfg.out
    lm_in = model_cli.load_model(in_path, args.device)
    if in_path is None:
        from server.core.model import default_checkpoint_path

        in_path = str(default_checkpoint_path())

    report: dict = {
        "config": {
            "command": command_line,
            "families": families,
            "preset": args.preset,
            "epochs": args.epochs,
            "train_flags": train_flags,
            "retune_prior": args.retune_prior,
            "device": args.device,
            "in_family_model": {"path": in_path, "version": lm_in.version},
            "network": dataclasses.asdict(NETWORK),
            "tick_s": TICK,
        },
        "families": {},
        "summary": [],
    }
    if "all-families" in runs:
        report["config"]["in_family_model"]["run"] = runs["all-families"]
    for fam in families:
        with cli.user_errors(ValueError, f"family {fam}"):
            cfg = held_out_config(base, fam, out=str(out_dir / f"without-{fam}.pt"))
        t1 = time.time()
        run = ensure_trained(cfg, f"without {fam}", retrain=args.retrain)
        t_train = time.time() - t1
        lm_out = model_cli.load_model(cfg.out, args.device)
        spec = TEST_SPLITS[fam]
        t1 = time.time()
        with cli.user_errors((ValueError, KeyError), f"test split {spec}"):
            r_out = score(spec, lm_out)
            r_in = score(spec, lm_in)
        t_score = time.time() - t1
        table = family_table(r_out, r_in)
        title = (
            f"{TITLES[fam]}: {spec} ({len(r_out['recordings'])} recordings, {r_out['tracks']} "
            f"tracks, {r_out['samples']} samples); out-of-family model {lm_out.version} trained "
            f"on {', '.join(run['sources'])}, in-family {lm_in.version}"
        )
        print(format_family_table(table, title))
        print(f"({TITLES[fam]}: training {t_train:.0f} s, scoring {t_score:.0f} s)\n", flush=True)
        report["families"][fam] = {
            "test": spec,
            "checkpoint": cfg.out,
            "model": lm_out.version,
            "train": run,
            "table": table,
            "out_of_family": E.public(r_out),
            "in_family": E.public(r_in),
            "seconds": {"train": round(t_train, 1), "score": round(t_score, 1)},
        }
        report["summary"].append(summary_row(fam, table))
        _write(args.json, report)  # after every family: a Ctrl-C keeps what is done

    print(format_summary(report["summary"]))
    report["seconds"] = round(time.time() - t0, 1)
    _write(args.json, report)
    if args.json:
        print(f"-> {args.json}")
    if args.markdown:
        note = (
            "GRU / best classical predictor (per column) on each family's test split; "
            f"without it: the `{args.preset}` preset minus that family, "
            f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}; "
            f"with it: `{lm_in.version}`. `{command_line}`"
        )
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(summary_markdown(report["summary"], note))
        print(f"-> {args.markdown}")
    print(f"({report['seconds']:.0f} s)")
    return report


def _write(path: str | None, report: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
