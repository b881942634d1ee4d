"""The leave-one-family-out bench's tables (`bench/lofo.py`): pure, predictor tables in,
rows and text out.

The families and their test splits are here too (`FAMILIES`, `TEST_SPLITS`, `TITLES`): the
bench trains without each and scores it on its split.
"""

from __future__ import annotations

from training.eval_tables import best_classical, ratios

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
RAW = "gru_raw"  # evaluate's name for the network without the served blend
SHORT = {"cv_window": "cv_win"}  # names that fit a column


def _gru_row(p: dict, hs: list[str]) -> dict:
    g = p["gru"]
    return {
        "render_mean": g["render_mean"],
        "render_p95": g["render_p95"],
        **{h: g["ade_by_horizon"][h] for h in hs},
    }


def _ratio_row(p: dict, hs: list[str], name: str = "gru") -> dict:
    rt = ratios(p, name)
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
    best = best_classical(out_p)
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
    """The summary rows (`summary_row`) as a text table; "" for none."""
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
