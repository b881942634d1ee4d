"""Turn the JSON written by bench/targets.sh into the results tables of docs/results.md.

python bench/report.py [runs/targets]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server import cli

CLASSICAL = ("hold", "interp", "cv", "cv_window", "kalman")
PATHS = ("hold", "cv", "cv_window", "kalman")


def load(d: Path, name: str) -> dict | list | None:
    """The figures in ``d/name.json``, None if there is no such file.

    Raises UserError naming file:line when it is not JSON.
    """
    p = d / f"{name}.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise cli.UserError(
            f"{p}:{e.lineno}: not JSON ({e.msg})", "run bench/targets.sh again for that file"
        ) from None


@cli.command("bench/report.py")
def main(argv: list[str] | None = None) -> None:
    """Print the tables (see ``--help``) from the JSON files in a directory."""
    ap = argparse.ArgumentParser(prog="bench/report.py", description=__doc__.split("\n")[0])
    ap.add_argument("dir", nargs="?", default="runs/targets", help="bench/targets.sh's output")
    args = ap.parse_args(argv)
    d = Path(args.dir)
    if not d.is_dir():
        raise cli.UserError(
            f"{d}: no such directory", "run bench/targets.sh first, or pass the directory it wrote"
        )
    try:
        tables(d)
    except (KeyError, TypeError, IndexError) as e:
        raise cli.UserError(
            f"{d}: a file without the expected figures (missing {cli.first_line(e)})",
            "run bench/targets.sh again with this version",
        ) from None


def _ratio(p: dict, name: str, metric: str, best: str) -> float:
    return p[name][metric] / p[best][metric]


def _summary_row(label: str, p: dict, names: list[str]) -> str:
    """label | per model: render mean, p95, 1 s, worst horizon (each / best classical)."""
    cells = []
    for name in names:
        if name not in p:
            cells.append("- | - | - | -")
            continue
        hs = list(p["cv"]["ade_by_horizon"])
        best_m = min(CLASSICAL, key=lambda k: p[k]["render_mean"])
        best_p = min(CLASSICAL, key=lambda k: p[k]["render_p95"])
        by_h = [
            p[name]["ade_by_horizon"][h] / min(p[k]["ade_by_horizon"][h] for k in PATHS) for h in hs
        ]
        cells.append(
            f"{_ratio(p, name, 'render_mean', best_m):.3f} | "
            f"{_ratio(p, name, 'render_p95', best_p):.3f} | {by_h[-1]:.3f} | {max(by_h):.3f}"
        )
    return f"| {label} | " + " | ".join(cells) + " |"


def tables(d: Path) -> None:
    real = load(d, "real")
    syn = load(d, "synthetic")
    sets = {}
    for r in (real, syn):
        if r:
            sets.update(r["sets"] if "sets" in r else {r["config"]["data"]: r})
    names = ["gru"] + [
        k for k in ("nonb", "seed_lstm") if any(k in r["predictors"] for r in sets.values())
    ]
    head = " | ".join(f"{n} render / p95 / 1 s / worst h" for n in names)
    print("Each model's error / the best classical predictor's (render mean, render p95, error")
    print("at 1 s, and the worst of the 10 horizons):\n")
    print(f"| set / recording | {head} |")
    print("|---" * (1 + 4 * len(names)) + "|")
    for spec, r in sets.items():
        recs = r.get("recordings", {})
        if len(recs) > 1:
            for rec, rr in recs.items():
                print(_summary_row(f"{rec}", rr["predictors"], names))
        print(
            _summary_row(
                f"**{spec}**" + (" pooled" if len(recs) > 1 else ""), r["predictors"], names
            )
        )
    for spec, r in sets.items():
        p = r["predictors"]
        hs = list(p["cv"]["ade_by_horizon"])
        print(f"\n{spec}: error (m) at each horizon, best classical named per horizon:\n")
        print("| predictor | " + " | ".join(f"{h} s" for h in hs) + " | render mean | p95 |")
        print("|---" * (len(hs) + 3) + "|")
        for k in [*PATHS, "interp", *names]:
            if k not in p:
                continue
            q = p[k]
            cells = [f"{q['ade_by_horizon'][h]:.4f}" if "ade" in q else "-" for h in hs]
            print(
                f"| {k} | "
                + " | ".join(cells)
                + f" | {q['render_mean']:.4f} | {q['render_p95']:.4f} |"
            )
        best = [min(PATHS, key=lambda k, h=h: p[k]["ade_by_horizon"][h]) for h in hs]
        print("| best classical | " + " | ".join(best) + " | | |")
        ratio = [
            p["gru"]["ade_by_horizon"][h] / p[b]["ade_by_horizon"][h]
            for h, b in zip(hs, best, strict=True)
        ]
        print("| gru / best | " + " | ".join(f"{x:.3f}" for x in ratio) + " | | |")
    b = load(d, "bench")
    if b:
        print("\nEngine step (every avatar has a new sample every tick), CPU, 2 torch threads:\n")
        print("| avatars | predictor | tick p50 (ms) | tick p99 (ms) | µs per avatar |")
        print("|---|---|---|---|---|")
        for r in b:
            print(
                f"| {r['avatars']} | {r['predictor']} | {r['tick_ms_p50']:.2f} | "
                f"{r['tick_ms_p99']:.2f} | {r['us_per_avatar_p50']:.3f} |"
            )


if __name__ == "__main__":
    main()
