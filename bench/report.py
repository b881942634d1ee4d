"""Turn the JSON written by bench/targets.sh into the README's results tables.

python bench/report.py [runs/targets]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server import cli

SCENES = ("eth", "hotel", "univ", "zara1", "zara2")
CLASSICAL = ("hold", "interp", "cv", "cv_window", "kalman")


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


def tables(d: Path) -> None:
    print("Clean ETH/UCY val parts (held out in time), GRU error / CV error at each horizon:\n")
    print(
        "| scene | 0.1 s | 0.2 | 0.3 | 0.4 | 0.5 | 0.6 | 0.7 | 0.8 | 0.9 | 1.0 s | worst | render mean GRU / CV (m) |"
    )
    print("|---" * 13 + "|")
    for s in SCENES:
        r = load(d, f"clean_{s}")
        if not r:
            continue
        p = r["predictors"]
        g, c = p["gru"]["ade_by_horizon"], p["cv"]["ade_by_horizon"]
        ratios = [g[k] / c[k] for k in g]
        cells = " | ".join(f"{x:.3f}" for x in ratios)
        print(
            f"| {s} | {cells} | {max(ratios):.3f} | "
            f"{p['gru']['render_mean']:.4f} / {p['cv']['render_mean']:.4f} |"
        )
    for name, title in (
        ("noisy_ethucy", "Noisy streams (2 cm noise, 20 ms jitter), ETH/UCY val parts"),
        ("synthetic", "Synthetic avatar motion, 60 held-out users x 60 s"),
    ):
        r = load(d, name)
        if not r:
            continue
        p = r["predictors"]
        print(
            f"\n{title} (ADE and error at 1.0 s; render error at 100 ms latency, 10 Hz, 2 % loss):\n"
        )
        print("| predictor | ADE (m) | error @0.5 s | error @1.0 s | render mean | render p95 |")
        print("|---|---|---|---|---|---|")
        for k in ("hold", "interp", "cv", "cv_window", "kalman", "gru"):
            q = p[k]
            a = f"{q['ade']:.4f}" if "ade" in q else "-"
            h5 = f"{q['ade_by_horizon']['0.5']:.4f}" if "ade" in q else "-"
            h1 = f"{q['ade_by_horizon']['1']:.4f}" if "ade" in q else "-"
            print(f"| {k} | {a} | {h5} | {h1} | {q['render_mean']:.4f} | {q['render_p95']:.4f} |")
        best_m = min(p[k]["render_mean"] for k in CLASSICAL)
        best_p = min(p[k]["render_p95"] for k in CLASSICAL)
        print(
            f"\nGRU / best classical: render mean x{p['gru']['render_mean'] / best_m:.3f}, "
            f"p95 x{p['gru']['render_p95'] / best_p:.3f}; GRU / CV at 1.0 s: "
            f"x{p['gru']['ade_by_horizon']['1'] / p['cv']['ade_by_horizon']['1']:.3f}"
        )
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
