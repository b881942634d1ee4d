"""The evaluation's plots: error vs horizon, the render-error CDF, example tracks (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training import baselines as B
from training.eval_tables import PATH_PREDICTORS, RENDER_METHODS


def plot(result: dict, horizons: np.ndarray, out_dir: Path) -> list[Path]:
    """Error vs horizon, render-error CDF, example tracks. Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []

    def save(fig, name: str, ax=None) -> None:
        if ax is not None:
            ax.legend()
            ax.grid(alpha=0.3)
        files.append(out_dir / name)
        fig.tight_layout()
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in PATH_PREDICTORS:
        by_h = result["predictors"][k]["ade_by_horizon"]
        ax.plot(horizons, list(by_h.values()), marker="o", label=k)
    ax.set(xlabel="horizon (s)", ylabel="mean error (m)", title="Error vs horizon")
    save(fig, "error_vs_horizon.png", ax)

    fig, ax = plt.subplots(figsize=(6, 4))
    for k in RENDER_METHODS:
        e = np.sort(np.concatenate(result["_render"][k]))
        if e.size:
            ax.plot(e, np.linspace(0, 1, e.size), label=k)
    ax.set(xlabel="render error (m)", ylabel="fraction of frames", title="Render error CDF")
    ax.set_xlim(0, np.percentile(np.concatenate(result["_render"]["hold"]), 99))
    save(fig, "render_error_cdf.png", ax)

    obs, paths = result["_obs"], result["_gru_paths"]
    longest = np.argsort([-len(o) for o in obs])[:3]
    fig, axes = plt.subplots(1, len(longest), figsize=(5 * len(longest), 5))
    for ax, i in zip(np.atleast_1d(axes), longest, strict=False):
        o = obs[i]
        n = min(len(o), 400)
        tt = np.linspace(o.t[0], o.t[n - 1], 4 * n)
        truth = o.truth_at(tt)
        ax.plot(truth[:, 0], truth[:, 1], "k-", lw=1, label="truth")
        ax.plot(o.p[:n, 0], o.p[:n, 1], ".", ms=2, color="grey", label="observed")
        cv = B.cv_last(o.t[:n], o.p[:n], horizons)
        for k in range(0, n, max(1, n // 12)):
            ax.plot(*np.r_[o.p[k : k + 1], cv[k]][:, :2].T, "-", color="tab:orange", lw=1)
            ax.plot(*np.r_[o.p[k : k + 1], paths[i][k]][:, :2].T, "-", color="tab:blue", lw=1.5)
        ax.plot([], [], "-", color="tab:orange", label="CV path")
        ax.plot([], [], "-", color="tab:blue", label="GRU path")
        ax.set(title=o.user, aspect="equal")
        ax.legend(fontsize=7)
    save(fig, "example_tracks.png")
    return files
