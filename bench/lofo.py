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
(`CLASSICAL`). One family takes about 4-5 minutes on one free CPU core at 4 epochs
(data ~85 s, ~35 s an epoch, scoring both models up to ~40 s); keep `--threads 1` (the
preset's) on a busy machine: more torch threads than free cores slow it many times over.
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

from server import cli
from server.core import model_cli
from training import evaluate as E
from training import train as T
from training.render import NetworkConfig

# family -> its test split (a `training.evaluate` --data spec)
TEST_SPLITS: dict[str, str] = {
    "juelich": "real:juelich:test",
    "soccer": "real:soccer:test",
    "sdd": "real:sdd:test",
    "ethucy": "ethucy:val",
    "synthetic": "synthetic:40:777:60",
}
FAMILIES = tuple(TEST_SPLITS)
TITLES = {
    "juelich": "Jülich crowds",
    "soccer": "football",
    "sdd": "SDD",
    "ethucy": "ETH/UCY",
    "synthetic": "simulated avatars",
}
# `python -m training.evaluate`'s defaults (--latency 100 --send-rate 20 --loss 0.02 --tick 0.05)
NETWORK = NetworkConfig(latency=0.1, send_rate=20.0, loss=0.02)
TICK = 0.05
RAW = "gru_raw"  # evaluate's name for the network without the served blend
SHORT = {"cv_window": "cv_win"}  # names that fit a column
NOT_SETTINGS = ("out", "threads")  # fields that do not change what a training run learns
ROOT = Path(__file__).resolve().parents[1]
# what a trained checkpoint depends on besides its settings (a change there retrains)
TRAINING_CODE = (
    "training/train.py",
    "training/datasets.py",
    "training/realmotion.py",
    "training/simulate.py",
    "training/baselines.py",
    "server/core/features.py",
    "server/core/model.py",
)


# -----------------------------------------------------------------------------------------
# the training mix per held-out family


def sources(cfg: T.TrainConfig) -> list[str]:
    """The data sources `training.train.load_sources` reads for `cfg`, in its order."""
    out = ["synthetic"] if cfg.synthetic_avatars > 0 else []
    out += ["ethucy"] if cfg.ethucy else []
    out += [r for r in cfg.real if r != "none"]
    return out + [f"data{i}" for i in range(len(cfg.data))]


def drop_weight(spec: str, source: str) -> str:
    """`weights` ("synthetic=2,sdd=0.5") without `source`'s entry (it would be unknown)."""
    items = [x.strip() for x in spec.split(",") if x.strip()]
    return ",".join(x for x in items if x.partition("=")[0].strip() != source)


def held_out_config(base: T.TrainConfig, family: str, out: str = "") -> T.TrainConfig:
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


def settings(cfg: T.TrainConfig) -> dict:
    """What decides a run's result, JSON-normalised (tuples as lists): the configuration
    (less `NOT_SETTINGS`) and the training code's digest."""
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    for k in NOT_SETTINGS:
        d.pop(k, None)
    return {**d, "code": code_digest()}


def _record(cfg: T.TrainConfig) -> dict | None:
    ckpt, info = Path(cfg.out), Path(cfg.out).with_suffix(".json")
    if not (ckpt.is_file() and info.is_file()):
        return None
    try:
        return json.loads(info.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def cached_run(cfg: T.TrainConfig) -> dict | None:
    """The record of a finished run with `cfg`'s settings at `cfg.out`, else None."""
    record = _record(cfg)
    return record if record is not None and record.get("settings") == settings(cfg) else None


def changed_settings(cfg: T.TrainConfig) -> list[str]:
    """The settings in which the finished run at `cfg.out` differs from `cfg` (none: [])."""
    old = (_record(cfg) or {}).get("settings") or {}
    new = settings(cfg)
    return sorted(k for k in {*old, *new} if old.get(k) != new.get(k)) if old else []


def ensure_trained(cfg: T.TrainConfig, label: str, *, retrain: bool = False) -> dict:
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
# tables (pure: predictor tables in, rows and text out)


def _gru_row(p: dict, hs: list[str]) -> dict:
    g = p["gru"]
    return {
        "render_mean": g["render_mean"],
        "render_p95": g["render_p95"],
        **{h: g["ade_by_horizon"][h] for h in hs},
    }


def _ratio_row(p: dict, hs: list[str], name: str = "gru") -> dict:
    rt = E.ratios(p, name)
    return {
        "render_mean": rt["render_mean_vs_best_classical"],
        "render_p95": rt["render_p95_vs_best_classical"],
        **{h: rt["by_horizon_vs_best_classical"][h] for h in hs},
    }


def family_table(out_p: dict, in_p: dict) -> dict:
    """Rows of a family's table from the two `result["predictors"]` tables (out-of-family
    GRU, in-family GRU): both GRUs, the best classical value and its name per column, and
    each GRU / best classical (`evaluate.ratios`, each against its own result's classical)."""
    out_p, in_p = out_p.get("predictors", out_p), in_p.get("predictors", in_p)
    hs = list(out_p["cv"]["ade_by_horizon"])
    best = E.best_classical(out_p)
    names = {"render_mean": best["render_mean"], "render_p95": best["render_p95"]}
    names |= best["horizon"]
    classical = {
        "render_mean": out_p[names["render_mean"]]["render_mean"],
        "render_p95": out_p[names["render_p95"]]["render_p95"],
        **{h: out_p[names[h]]["ade_by_horizon"][h] for h in hs},
    }
    return {
        "columns": ["render_mean", "render_p95", *hs],
        "horizons": hs,
        "out_of_family": _gru_row(out_p, hs),
        "in_family": _gru_row(in_p, hs),
        "best_classical": classical,
        "best_classical_name": names,
        "out_of_family_vs_best": _ratio_row(out_p, hs),
        "in_family_vs_best": _ratio_row(in_p, hs),
    } | (  # the network alone, without the served blend, where evaluate scores it
        {
            "raw_out_of_family_vs_best": _ratio_row(out_p, hs, RAW),
            "raw_in_family_vs_best": _ratio_row(in_p, hs, RAW),
        }
        if RAW in out_p and RAW in in_p
        else {}
    )


def format_family_table(table: dict, title: str = "") -> str:
    """The table as text: errors in metres, then the ratios (under 1: the GRU is better)."""
    cols = table["columns"]
    head = ["render", "p95", *(f"@{h}s" for h in table["horizons"])]
    lines = [f"-- {title}"] if title else []
    lines.append(f"{'':<28}" + "".join(f"{c:>8}" for c in head))

    def row(label: str, vals: dict, fmt: str = "8.4f") -> str:
        return f"{label:<28}" + "".join(f"{vals[c]:{fmt}}" for c in cols)

    lines.append(row("served GRU, out-of-family", table["out_of_family"]))
    lines.append(row("served GRU, in-family", table["in_family"]))
    lines.append(row("best classical", table["best_classical"]))
    names = table["best_classical_name"]
    lines.append(f"{'  which':<28}" + "".join(f"{SHORT.get(names[c], names[c]):>8}" for c in cols))
    lines.append(row("out-of-family / best", table["out_of_family_vs_best"], "8.3f"))
    lines.append(row("in-family / best", table["in_family_vs_best"], "8.3f"))
    if "raw_out_of_family_vs_best" in table:
        lines.append(row("  network alone, out / best", table["raw_out_of_family_vs_best"], "8.3f"))
        lines.append(row("  network alone, in / best", table["raw_in_family_vs_best"], "8.3f"))
    return "\n".join(lines)


def summary_row(family: str, table: dict) -> dict:
    """One summary line: per model, GRU / best classical for render mean, the worst
    horizon (and which) and the last horizon (1 s)."""
    hs = table["horizons"]

    def part(r: dict) -> dict:
        worst = max(hs, key=lambda h: r[h])
        return {
            "render_mean": r["render_mean"],
            "worst": r[worst],
            "worst_at": worst,
            "last": r[hs[-1]],
        }

    return {
        "family": family,
        "last_horizon": hs[-1],
        "out_of_family": part(table["out_of_family_vs_best"]),
        "in_family": part(table["in_family_vs_best"]),
    }


def format_summary(rows: list[dict]) -> str:
    if not rows:
        return ""
    last = rows[0]["last_horizon"]
    lines = [
        "-- leave-one-family-out summary: GRU / best classical (under 1: the GRU is better)",
        f"{'':<20}{'trained without it':^30}  {'trained with it':^30}",
        f"{'family':<20}" + f"{'render':>9}{'worst (at)':>13}{'@' + last + 's':>8}" * 2,
    ]
    for r in rows:
        cells = ""
        for k in ("out_of_family", "in_family"):
            p = r[k]
            worst = f"{p['worst']:.3f} ({p['worst_at']})"
            cells += f"{p['render_mean']:9.3f}{worst:>13}{p['last']:8.3f}  "
        lines.append(f"{TITLES.get(r['family'], r['family']):<20}{cells.rstrip()}")
    return "\n".join(lines)


def summary_markdown(rows: list[dict], note: str = "") -> str:
    """The summary as a Markdown table (for the README and docs)."""
    last = rows[0]["last_horizon"] if rows else "1"
    out = [
        "| family | test split | without it: render | worst horizon | "
        f"{last} s | with it: render | worst horizon | {last} s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = []
        for k in ("out_of_family", "in_family"):
            p = r[k]
            cells += [
                f"x{p['render_mean']:.3f}",
                f"x{p['worst']:.3f} ({p['worst_at']} s)",
                f"x{p['last']:.3f}",
            ]
        test = f"`{TEST_SPLITS.get(r['family'], '?')}`"
        out.append(
            f"| {TITLES.get(r['family'], r['family'])} | {test} | " + " | ".join(cells) + " |"
        )
    text = "\n".join(out)
    return f"{text}\n\n{note}\n" if note else text + "\n"


# -----------------------------------------------------------------------------------------
# the run


def score(spec: str, lm) -> dict:
    """`training.evaluate.evaluate` on `spec` as its CLI calls it (default network)."""
    result = E.evaluate(E.load_scenes(spec), lm, net=NETWORK, tick=TICK)
    result["ratios"] = E.ratios(result)
    return result


def base_config(args, train_flags: list[str]) -> T.TrainConfig:
    cfg = T.config_from_args(["--preset", args.preset, *train_flags])
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
