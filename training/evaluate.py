"""Evaluate the GRU against classical predictors: error by horizon and render error.

    python -m training.evaluate --data ethucy:val                  # real held-out data
    python -m training.evaluate --data synthetic:60:777 --json out.json --plots plots/
    python -m training.evaluate --data logs.csv --model runs/model.pt --noise 0.02 --jitter 20

`--data` is a CSV/ETH file or directory, `ethucy:SPLIT[:SCENE]` (SPLIT train|val|all,
SCENE eth|hotel|univ|zara1|zara2) or `synthetic:N[:SEED[:SECONDS]]` (held-out simulated
users; training uses seeds 0 and 10000). `--noise`/`--jitter` corrupt what the predictors
observe, never the truth they are scored on. The Kalman filter is tuned (grid search) on
the corrupted evaluation data itself by default: the strongest it can be, which makes the
comparison conservative for the GRU.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from server import cli
from server import features as F
from server.model import LoadedModel
from training import baselines as B
from training import datasets as D
from training.datasets import Track
from training.render import NetworkConfig, render_errors, summarise

PATH_PREDICTORS = ("hold", "cv", "cv_window", "kalman", "gru")
RENDER_METHODS = ("hold", "interp", "cv", "cv_window", "kalman", "gru")
CLASSICAL = ("hold", "interp", "cv", "cv_window", "kalman")


class GRUPredictor:
    """The served model as a path predictor: same features, same model, split at resets."""

    def __init__(self, lm: LoadedModel, batch: int = 256) -> None:
        self.lm, self.batch = lm, batch

    def __call__(self, t: np.ndarray, p: np.ndarray, horizons: np.ndarray) -> np.ndarray:
        return self.many([(t, p)], horizons)[0]

    @torch.no_grad()
    def many(self, streams: list[tuple[np.ndarray, np.ndarray]], horizons) -> list[np.ndarray]:
        """Paths (N_i, H, 3) for each (t, p) stream; `horizons` must be the model's."""
        cfg = self.lm.features
        if not np.allclose(horizons, cfg.horizons):
            raise ValueError(f"horizons {list(horizons)} differ from the model's {cfg.horizons}")
        if not streams:
            return []
        sf = F.sequence_features([s[0] for s in streams], [s[1] for s in streams], cfg)
        segs = []  # (stream, start, stop)
        for i, o in enumerate(sf.out):
            starts = [*np.flatnonzero(o.reset).tolist(), len(o.reset)]
            segs += [(i, a, b) for a, b in itertools.pairwise(starts)]
        ys = [np.zeros((len(o.reset), cfg.n_horizons, 3), np.float32) for o in sf.out]
        segs.sort(key=lambda s: s[2] - s[1])
        dev = self.lm.device
        for k in range(0, len(segs), self.batch):
            chunk = segs[k : k + self.batch]
            L = max(b - a for _, a, b in chunk)
            x = np.zeros((len(chunk), L, F.N_FEATURES), np.float32)
            for r, (i, a, b) in enumerate(chunk):
                x[r, : b - a] = sf.x[i][a:b]
            y, _ = self.lm.model(torch.from_numpy(x).to(dev))
            y = y.cpu().numpy()
            for r, (i, a, b) in enumerate(chunk):
                ys[i][a:b] = y[r, : b - a]
        return [F.decode(y, o, cfg) for y, o in zip(ys, sf.out, strict=True)]


def load_data(spec: str) -> list[Track]:
    """Tracks for a `--data` spec (see the module docstring). Raises ValueError/FileNotFoundError."""
    if spec.startswith("synthetic"):
        from training.simulate import simulate

        parts = spec.split(":")[1:]
        n = int(parts[0]) if parts else 40
        seed = int(parts[1]) if len(parts) > 1 else 777
        dur = float(parts[2]) if len(parts) > 2 else 60.0
        if seed in (0, 10_000):
            raise ValueError("seeds 0 and 10000 are the training/validation users")
        return simulate(n, dur, seed=seed)
    if spec.startswith("ethucy"):
        parts = spec.split(":")[1:]
        split = parts[0] if parts else "val"
        if len(parts) > 1:
            stems = D.ETHUCY_SCENES[parts[1]]
        else:
            stems = [s for v in D.ETHUCY_SCENES.values() for s in v]
            if split != "all":
                stems += D.ETHUCY_TRAIN_ONLY
        return D.load_ethucy_scene_files(split, stems)
    return D.load_tracks(spec)


def evaluate(
    tracks: list[Track],
    lm: LoadedModel,
    *,
    noise: float = 0.0,
    jitter: float = 0.0,
    net: NetworkConfig | None = None,
    seed: int = 0,
    kalman: B.KalmanCV | None = None,
) -> dict:
    """All predictors on `tracks`; returns the JSON-ready result (see `main`)."""
    net = net or NetworkConfig()
    rng = np.random.default_rng(seed)
    h = np.asarray(lm.features.horizons)
    obs = [D.corrupt(tr, noise=noise, jitter=jitter, rng=rng) for tr in tracks]
    if kalman is None:
        tune_rng = np.random.default_rng(seed + 1)
        sub = [obs[i] for i in tune_rng.permutation(len(obs))[:60]]
        kalman = B.KalmanCV.tune(sub, h)
    gru = GRUPredictor(lm)
    preds = {
        "hold": B.hold,
        "cv": B.cv_last,
        "cv_window": B.cv_window,
        "kalman": kalman,
    }
    # Error by horizon, every sample of every track.
    errs: dict[str, list[np.ndarray]] = {k: [] for k in PATH_PREDICTORS}
    gru_paths = gru.many([(o.t, o.p) for o in obs], h)
    for o, gp in zip(obs, gru_paths, strict=True):
        for name, fn in preds.items():
            errs[name].append(B.horizon_errors(o, fn(o.t, o.p, h), h))
        errs["gru"].append(B.horizon_errors(o, gp, h))
    result: dict = {"predictors": {}}
    for name in PATH_PREDICTORS:
        e = np.concatenate(errs[name])
        by_h = np.nanmean(e, axis=0)
        result["predictors"][name] = {
            "ade": float(np.nanmean(e)),
            "ade_by_horizon": {f"{hh:g}": float(v) for hh, v in zip(h, by_h, strict=True)},
        }
    # Render error through the simulated network (the server predicts on what it receives).
    rerr: dict[str, list[np.ndarray]] = {k: [] for k in RENDER_METHODS}
    net_rng = np.random.default_rng(net.seed)
    for o in obs:
        out = render_errors(
            o, {**{k: preds[k] for k in preds if k != "hold"}, "gru": gru}, h, net, net_rng
        )
        for k in RENDER_METHODS:
            rerr[k].append(out[k])
    for k, s in summarise(rerr).items():
        result["predictors"].setdefault(k, {})
        result["predictors"][k]["render_mean"] = s["mean"]
        result["predictors"][k]["render_p95"] = s["p95"]
    result["kalman"] = {"q": kalman.q, "r": kalman.r}
    result["samples"] = int(sum(len(o) for o in obs))
    result["tracks"] = len(obs)
    result["_errors"] = errs  # for plots; dropped from JSON
    result["_render"] = rerr
    result["_obs"] = obs
    result["_gru_paths"] = gru_paths
    return result


def ratios(result: dict) -> dict:
    """GRU / best classical, for render mean and p95 and for the error at the last horizon."""
    p = result["predictors"]
    last = list(p["cv"]["ade_by_horizon"])[-1]
    best_mean = min(p[k]["render_mean"] for k in CLASSICAL)
    best_p95 = min(p[k]["render_p95"] for k in CLASSICAL)
    return {
        "render_mean_vs_best_classical": p["gru"]["render_mean"] / best_mean,
        "render_p95_vs_best_classical": p["gru"]["render_p95"] / best_p95,
        "last_horizon_vs_cv": p["gru"]["ade_by_horizon"][last] / p["cv"]["ade_by_horizon"][last],
        "ade_vs_cv": p["gru"]["ade"] / p["cv"]["ade"],
    }


def print_table(result: dict) -> None:
    p = result["predictors"]
    hs = list(p["cv"]["ade_by_horizon"])
    show = [hs[0], hs[len(hs) // 2 - 1], hs[-1]]
    head = f"{'predictor':<10} {'ADE':>7} " + " ".join(f"{'@' + s + 's':>7}" for s in show)
    print(head + f" {'render':>7} {'p95':>7}")
    for k in RENDER_METHODS:
        r = p[k]
        cells = [f"{r['ade']:7.4f}" if "ade" in r else f"{'-':>7}"]
        cells += [f"{r['ade_by_horizon'][s]:7.4f}" if "ade" in r else f"{'-':>7}" for s in show]
        print(f"{k:<10} " + " ".join(cells) + f" {r['render_mean']:7.4f} {r['render_p95']:7.4f}")
    rt = ratios(result)
    print(
        "GRU vs best classical: render mean x{:.3f}, p95 x{:.3f}; vs CV: ADE x{:.3f}, "
        "last horizon x{:.3f}".format(
            rt["render_mean_vs_best_classical"],
            rt["render_p95_vs_best_classical"],
            rt["ade_vs_cv"],
            rt["last_horizon_vs_cv"],
        )
    )


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


def public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


@cli.command("python -m training.evaluate")
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--data", required=True, help="file/dir, ethucy:SPLIT[:SCENE] or synthetic:N[:SEED[:S]]"
    )
    ap.add_argument("--model", help="checkpoint (default: the shipped model)")
    ap.add_argument("--noise", type=float, default=0.0, help="position noise std, metres")
    ap.add_argument("--jitter", type=float, default=0.0, help="timestamp jitter std, ms")
    ap.add_argument("--latency", type=float, default=100.0, help="one-way latency, ms")
    ap.add_argument("--send-rate", type=float, default=10.0, help="sender rate limit, Hz")
    ap.add_argument("--loss", type=float, default=0.02, help="packet loss probability")
    ap.add_argument("--max-tracks", type=int, default=0, help="evaluate at most N tracks (0 = all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--plots", help="write PNG plots into this directory")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    t0 = time.time()
    lm = cli.load_model(args.model, args.device)
    with cli.user_errors((ValueError, KeyError), f"--data {args.data}", "see --help for --data"):
        tracks = load_data(args.data)
    if args.max_tracks and len(tracks) > args.max_tracks:
        pick = np.random.default_rng(args.seed).permutation(len(tracks))[: args.max_tracks]
        tracks = [tracks[i] for i in sorted(pick)]
    net = NetworkConfig(latency=args.latency / 1000, send_rate=args.send_rate, loss=args.loss)
    result = evaluate(
        tracks, lm, noise=args.noise, jitter=args.jitter / 1000, net=net, seed=args.seed
    )
    result["config"] = {
        "data": args.data,
        "model": lm.version,
        "noise_m": args.noise,
        "jitter_ms": args.jitter,
        "latency_ms": args.latency,
        "send_rate_hz": args.send_rate,
        "loss": args.loss,
    }
    result["ratios"] = ratios(result)
    print(
        f"{args.data}: {result['tracks']} tracks, {result['samples']} samples, model {lm.version}"
    )
    print_table(result)
    if args.plots:
        for f in plot(result, np.asarray(lm.features.horizons), Path(args.plots)):
            print(f"plot: {f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(public(result), indent=2))
    print(f"({time.time() - t0:.1f} s)")
    return public(result)


if __name__ == "__main__":
    main()
