"""The evaluation's tables: per-predictor statistics, the best classical predictor, each
learned model against it (ratios), and the printed table.

A *table* is `result["predictors"]` of `training.evaluate.evaluate` (or a recording's):
predictor name -> {"ade", "ade_by_horizon", "render_mean", "render_p95"}.
"""

from __future__ import annotations

import numpy as np

from training.render import summarise

PATH_PREDICTORS = ("hold", "cv", "cv_window", "kalman", "imm", "gru")
RENDER_METHODS = ("hold", "interp", "cv", "cv_window", "kalman", "imm", "gru")
CLASSICAL = ("hold", "interp", "cv", "cv_window", "kalman", "imm")
CLASSICAL_PATHS = ("hold", "cv", "cv_window", "kalman", "imm")


def predictor_stats(
    errs: dict[str, list[np.ndarray]], rerr: dict[str, list[np.ndarray]], h
) -> dict:
    """Per predictor: mean error `ade`, `ade_by_horizon` ({"0.1": m, …}) from `errs` (name ->
    per-track (N, H) errors, NaN ignored) and `render_mean`/`render_p95` from `rerr` (name ->
    per-track render errors). Horizons `h` label the columns."""
    out: dict = {}
    for name, arrs in errs.items():
        e = np.concatenate(arrs) if arrs else np.zeros((0, len(h)))
        with np.errstate(all="ignore"):
            by_h = np.nanmean(e, axis=0) if len(e) else np.full(len(h), np.nan)
            ade = float(np.nanmean(e)) if len(e) else float("nan")
        out[name] = {
            "ade": ade,
            "ade_by_horizon": {f"{hh:g}": float(v) for hh, v in zip(h, by_h, strict=True)},
        }
    for k, st in summarise(rerr).items():
        out.setdefault(k, {})
        out[k]["render_mean"] = st["mean"]
        out[k]["render_p95"] = st["p95"]
    return out


def best_classical(table: dict) -> dict:
    """Names of the best classical predictor: for render mean, p95 and per horizon."""
    hs = list(table["cv"]["ade_by_horizon"])
    return {
        "render_mean": min(CLASSICAL, key=lambda k: table[k]["render_mean"]),
        "render_p95": min(CLASSICAL, key=lambda k: table[k]["render_p95"]),
        "horizon": {
            s: min(CLASSICAL_PATHS, key=lambda k: table[k]["ade_by_horizon"][s]) for s in hs
        },
    }


def ratios(table: dict, name: str = "gru") -> dict:
    """`name` / best classical: render mean and p95, error at the last horizon, and the
    error at every horizon against that horizon's best classical path predictor.

    `table` is `result["predictors"]` (or a recording's); a result dict is accepted too.
    """
    p = table.get("predictors", table)
    hs = list(p["cv"]["ade_by_horizon"])
    best = best_classical(p)
    by_h = {
        s: p[name]["ade_by_horizon"][s] / p[best["horizon"][s]]["ade_by_horizon"][s] for s in hs
    }
    return {
        "render_mean_vs_best_classical": p[name]["render_mean"]
        / p[best["render_mean"]]["render_mean"],
        "render_p95_vs_best_classical": p[name]["render_p95"] / p[best["render_p95"]]["render_p95"],
        "last_horizon_vs_best_classical": by_h[hs[-1]],
        "by_horizon_vs_best_classical": by_h,
        "worst_horizon_vs_best_classical": max(by_h.values()),
        "last_horizon_vs_cv": p[name]["ade_by_horizon"][hs[-1]] / p["cv"]["ade_by_horizon"][hs[-1]],
        "ade_vs_cv": p[name]["ade"] / p["cv"]["ade"],
        "best_classical": best,
    }


def print_table(table: dict, title: str = "") -> None:
    """One table: every predictor's error at three horizons and render error, then the
    learned models against the best classical predictor (named) at every horizon."""
    p = table.get("predictors", table)
    hs = list(p["cv"]["ade_by_horizon"])
    show = [hs[0], hs[len(hs) // 2 - 1], hs[-1]]
    if title:
        print(f"-- {title}")
    head = f"{'predictor':<11} {'ADE':>7} " + " ".join(f"{'@' + s + 's':>7}" for s in show)
    print(head + f" {'render':>7} {'p95':>7}")
    names = [k for k in RENDER_METHODS if k != "gru" and k in p]
    names += [k for k in p if k not in RENDER_METHODS] + ["gru"]
    for k in names:
        r = p[k]
        cells = [f"{r['ade']:7.4f}" if "ade" in r else f"{'-':>7}"]
        cells += [f"{r['ade_by_horizon'][s]:7.4f}" if "ade" in r else f"{'-':>7}" for s in show]
        rm = f"{r['render_mean']:7.4f} {r['render_p95']:7.4f}" if "render_mean" in r else ""
        print(f"{k:<11} " + " ".join(cells) + f" {rm}")
    best = best_classical(p)
    print(
        f"best classical: render mean {best['render_mean']}, p95 {best['render_p95']}, "
        f"at 1 s {best['horizon'][hs[-1]]}"
    )
    for k in [k for k in p if k not in CLASSICAL]:
        rt = ratios(p, k)
        per_h = " ".join(f"{v:.2f}" for v in rt["by_horizon_vs_best_classical"].values())
        print(
            f"{k} vs best classical: render mean x{rt['render_mean_vs_best_classical']:.3f}, "
            f"p95 x{rt['render_p95_vs_best_classical']:.3f}, "
            f"last horizon x{rt['last_horizon_vs_best_classical']:.3f}; by horizon {per_h}"
        )
    if "gru" in p:
        rt = ratios(p)
        print(
            "GRU vs CV: ADE x{:.3f}, last horizon x{:.3f}".format(
                rt["ade_vs_cv"], rt["last_horizon_vs_cv"]
            )
        )
