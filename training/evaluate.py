"""Evaluate the GRU against classical predictors: error by horizon and render error.

    python -m training.evaluate --suite real --per-recording   # every held-out real set
    python -m training.evaluate --data real:juelich:test --also nonb=runs/nonb.pt
    python -m training.evaluate --data synthetic:60:777 --json out.json --plots plots/
    python -m training.evaluate --data logs.csv --model runs/model.pt --noise 0.02 --jitter 20

`--data` (repeatable) is a CSV/ETH file or directory, `ethucy:SPLIT[:SCENE]` (SPLIT
train|val|all, SCENE eth|hotel|univ|zara1|zara2), `real:SET[:SPLIT]` (SET juelich|soccer|
sdd, SPLIT test (default)|val|train|all: `training.realmotion`) or
`synthetic:N[:SEED[:SECONDS]]` (held-out simulated users; training uses seeds 0 and
10000). Each set is scored at its native rate as a server ticking every `--tick` s sees
it (the newest sample per tick), per recording (`--per-recording`) and pooled; every table
names the best classical predictor, for render error and at every horizon.
`--noise`/`--jitter` corrupt what the predictors observe, never the truth they are scored
on. The Kalman filter and the IMM (constant velocity + coordinated turn, a manoeuvring-target
filter) are tuned (grid search) on the corrupted evaluation data itself: the strongest they
can be, which makes the comparison conservative for the GRU. "gru" is what the server
serves (the network blended online with the classical experts, `server.core.blend`); "gru_raw"
is the network alone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch

from server import cli
from server.core import blend, model_cli
from server.core import features as F
from server.core.blend import BlendConfig
from server.core.model import LoadedModel
from training import baselines as B
from training import datasets as D
from training import realmotion as RM
from training.datasets import Track
from training.realmotion import Scene
from training.render import NetworkConfig, received_stream, render_errors, summarise

PATH_PREDICTORS = ("hold", "cv", "cv_window", "kalman", "imm", "gru")
RENDER_METHODS = ("hold", "interp", "cv", "cv_window", "kalman", "imm", "gru")
CLASSICAL = ("hold", "interp", "cv", "cv_window", "kalman", "imm")
CLASSICAL_PATHS = ("hold", "cv", "cv_window", "kalman", "imm")


class _ManyTracks:
    """A path predictor with a batched `paths_many` (the IMM) in the place of a model."""

    def __init__(self, predictor: B.IMM) -> None:
        self.predictor = predictor

    def scene(self, streams, horizons) -> list[np.ndarray]:
        return self.predictor.paths_many(streams, horizons)


class GRUPredictor:
    """The served model as a path predictor: same features, same model, split at resets.

    Called on one stream it sees that avatar alone; `scene` replays streams that share a
    clock as one room, tick by tick, exactly as the engine serves them (neighbours).
    With `blend` (a `server.core.blend.BlendConfig`) the paths are the online blend of the
    network and the classical experts, replayed as the engine serves it; without, the
    network's own paths.
    """

    def __init__(
        self,
        lm: LoadedModel,
        batch: int = 256,
        tick: float = 0.05,
        blend: BlendConfig | None = None,
    ) -> None:
        self.lm, self.batch, self.tick, self.blend = lm, batch, tick, blend

    def __call__(self, t: np.ndarray, p: np.ndarray, horizons: np.ndarray) -> np.ndarray:
        return self.many([(t, p)], horizons)[0]

    def many(self, streams: list[tuple[np.ndarray, np.ndarray]], horizons) -> list[np.ndarray]:
        """Paths (N_i, H, 3) for each (t, p) stream, each alone; `horizons` must be the model's."""
        return self._paths(streams, horizons, scene=False)

    def scene(self, streams: list[tuple[np.ndarray, np.ndarray]], horizons) -> list[np.ndarray]:
        """Paths (N_i, H, 3) for streams that share a clock, replayed as one room."""
        return self._paths(streams, horizons, scene=True)

    @torch.no_grad()
    def _paths(self, streams, horizons, *, scene: bool) -> list[np.ndarray]:
        cfg = self.lm.features
        if not np.allclose(horizons, cfg.horizons):
            raise ValueError(f"horizons {list(horizons)} differ from the model's {cfg.horizons}")
        if not streams:
            return []
        ts, ps = [s[0] for s in streams], [s[1] for s in streams]
        if scene:
            sf = F.scene_features(ts, ps, cfg, tick=self.tick)
        else:
            sf = F.sequence_features(ts, ps, cfg)
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
            x = np.zeros((len(chunk), L, cfg.n_features), np.float32)
            for r, (i, a, b) in enumerate(chunk):
                x[r, : b - a] = sf.x[i][a:b]
            y, _ = self.lm.model(torch.from_numpy(x).to(dev))
            y = y.cpu().numpy()
            for r, (i, a, b) in enumerate(chunk):
                ys[i][a:b] = y[r, : b - a]
        paths = [F.decode(y, o, cfg) for y, o in zip(ys, sf.out, strict=True)]
        if self.blend is None:
            return paths
        h = np.asarray(cfg.horizons)
        rows = [
            (t, o.p, o.reset, path - o.p[:, None, :], o.v, o.prior_dp, o.prior_v)
            for t, o, path in zip(ts, sf.out, paths, strict=True)
        ]
        # a scene is one room (its avatars share the room's prior); alone, a room each
        room = np.zeros(len(rows), dtype=np.int64) if scene else None
        served = blend.replay_many(rows, h, self.blend, ticks=sf.tick, room=room)
        return [o.p[:, None, :] + off for o, (off, _) in zip(sf.out, served, strict=True)]


def load_scenes(spec: str) -> list[Scene]:
    """Scenes for a `--data` spec (see the module docstring). Raises ValueError/FileNotFoundError."""
    if spec.startswith("synthetic"):
        from training.simulate import simulate

        parts = spec.split(":")[1:]
        n = int(parts[0]) if parts else 40
        seed = int(parts[1]) if len(parts) > 1 else 777
        dur = float(parts[2]) if len(parts) > 2 else 60.0
        if seed == 10_000 or (seed % 1000 == 0 and seed < 10_000):
            raise ValueError("seeds 0, 1000, …, 9000 and 10000 are the training/validation users")
        return [Scene(f"synthetic/{seed}", simulate(n, dur, seed=seed))]
    if spec.startswith("ethucy"):
        parts = spec.split(":")[1:]
        split = parts[0] if parts else "val"
        if len(parts) > 1:
            if parts[1] not in D.ETHUCY_SCENES:
                raise ValueError(f"unknown ETH/UCY scene {parts[1]!r}")
            stems = D.ETHUCY_SCENES[parts[1]]
        else:
            stems = [s for v in D.ETHUCY_SCENES.values() for s in v]
            if split != "all":
                stems += D.ETHUCY_TRAIN_ONLY
        return [Scene(f"ethucy/{s}", D.load_ethucy_scene_files(split, [s])) for s in stems]
    if spec.startswith("real:"):
        parts = spec.split(":")[1:]
        return RM.load_scenes(parts[0], parts[1] if len(parts) > 1 else "test")
    return [Scene(Path(spec).stem, D.load_tracks(spec))]


def load_data(spec: str) -> list[Track]:
    """All tracks of a `--data` spec (scenes flattened)."""
    return [tr for sc in load_scenes(spec) for tr in sc.tracks]


def _stats(errs: dict[str, list[np.ndarray]], rerr: dict[str, list[np.ndarray]], h) -> dict:
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


def evaluate(
    scenes: list[Scene] | list[Track],
    lm: LoadedModel,
    *,
    noise: float = 0.0,
    jitter: float = 0.0,
    net: NetworkConfig | None = None,
    seed: int = 0,
    kalman: B.KalmanCV | None = None,
    imm: B.IMM | None = None,
    tick: float = 0.05,
    extra: dict | None = None,
    served_blend: BlendConfig | None = BlendConfig(),  # noqa: B008 (frozen)
) -> dict:
    """All predictors on `scenes`; returns the JSON-ready result (see `main`).

    "gru" is what the server serves: the network blended online with the classical
    experts by `served_blend` (`server.core.blend`; None: the network alone); "gru_raw" is the
    network alone.

    What a server ticking every `tick` s sees is scored: each track is thinned to its
    newest sample per tick (`realmotion.thin_to_ticks`). The GRU replays each scene as one
    room (neighbours); `extra` maps more names to GRU checkpoints (`LoadedModel`) or path
    predictors, scored beside it. `result["recordings"]` has the same table per scene.
    """
    if scenes and isinstance(scenes[0], Track):
        scenes = [Scene("tracks", list(scenes))]
    net = net or NetworkConfig()
    rng = np.random.default_rng(seed)
    h = np.asarray(lm.features.horizons)
    obs_scenes = [
        RM.thin_to_ticks(
            Scene(
                sc.name, [D.corrupt(tr, noise=noise, jitter=jitter, rng=rng) for tr in sc.tracks]
            ),
            tick,
        )
        for sc in scenes
    ]
    obs = [tr for sc in obs_scenes for tr in sc.tracks]
    tune_rng = np.random.default_rng(seed + 1)
    sub = [obs[i] for i in tune_rng.permutation(len(obs))[:60]]
    if kalman is None:
        kalman = B.KalmanCV.tune(sub, h)
    if imm is None:
        imm = B.IMM.tune(sub, h)
    preds = {"hold": B.hold, "cv": B.cv_last, "cv_window": B.cv_window, "kalman": kalman}
    models = {
        "imm": _ManyTracks(imm),
        "gru": GRUPredictor(lm, tick=tick, blend=served_blend),
        "gru_raw": GRUPredictor(lm, tick=tick),
    }
    for name, v in (extra or {}).items():
        if isinstance(v, LoadedModel):
            models[name] = GRUPredictor(v, tick=tick)
        else:
            preds[name] = v
    names = [*preds, *models]
    render_names = ["hold", "interp", *[k for k in names if k != "hold"]]
    per_scene = []
    net_rng = np.random.default_rng(net.seed)
    all_paths = {}
    for sc in obs_scenes:
        errs: dict[str, list[np.ndarray]] = {k: [] for k in names}
        rerr: dict[str, list[np.ndarray]] = {k: [] for k in render_names}
        streams = [(o.t, o.p) for o in sc.tracks]
        mpaths = {k: m.scene(streams, h) for k, m in models.items()}
        all_paths[sc.name] = mpaths["gru"]
        for i, o in enumerate(sc.tracks):
            for name, fn in preds.items():
                errs[name].append(B.horizon_errors(o, fn(o.t, o.p, h), h))
            for name in models:
                errs[name].append(B.horizon_errors(o, mpaths[name][i], h))
        # Render error: the server predicts on what it receives, all avatars together.
        recv = [received_stream(o, net, net_rng) for o in sc.tracks]
        rstreams = [(o.t[r], o.p[r]) for o, r in zip(sc.tracks, recv, strict=True)]
        rpaths = {k: m.scene(rstreams, h) for k, m in models.items()}
        for i, (o, r) in enumerate(zip(sc.tracks, recv, strict=True)):
            fns = {k: preds[k] for k in preds if k != "hold"}
            for k in models:
                fns[k] = _fixed(rpaths[k][i])
            out = render_errors(o, fns, h, net, received=r)
            for k in render_names:
                rerr[k].append(out[k])
        per_scene.append((sc, errs, rerr))
    pooled_e = {k: [a for _, e, _ in per_scene for a in e[k]] for k in names}
    pooled_r = {k: [a for _, _, r in per_scene for a in r[k]] for k in render_names}
    result: dict = {"predictors": _stats(pooled_e, pooled_r, h)}
    result["recordings"] = {
        sc.name: {
            "tracks": len(sc.tracks),
            "samples": int(sum(len(o) for o in sc.tracks)),
            "predictors": _stats(e, r, h),
        }
        for sc, e, r in per_scene
    }
    result["kalman"] = {"q": kalman.q, "r": kalman.r}
    result["imm"] = {"q_cv": imm.q_cv, "q_ct": imm.q_ct, "q_w": imm.q_w, "r": imm.r}
    result["samples"] = int(sum(len(o) for o in obs))
    result["tracks"] = len(obs)
    result["_errors"] = pooled_e  # for plots; dropped from JSON
    result["_render"] = pooled_r
    result["_obs"] = obs
    result["_gru_paths"] = [p for sc in obs_scenes for p in all_paths[sc.name]]
    return result


def _fixed(paths: np.ndarray):
    """A path predictor that returns precomputed paths (for the received stream)."""

    def predict(t, p, h):
        return paths

    return predict


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


SUITE = {
    "real": [
        "real:juelich:test",
        "real:soccer:test",
        "real:sdd:test",
        "ethucy:val",
    ],
    "synthetic": ["synthetic:40:777:60"],
}


def _load_extra(spec: str, device: str):
    """`NAME=PATH`: one of our checkpoints (any cell) or a seed-LSTM checkpoint."""
    name, _, path = spec.partition("=")
    if not name or not path:
        raise ValueError(f"--also wants NAME=CHECKPOINT, got {spec!r}")
    bad = (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError)
    with cli.user_errors(bad, f"--also {spec}", "pass a checkpoint written by training"):
        blob = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(blob, dict) and blob.get("format") == "seed-lstm":
        from training.seed_lstm import load_seed

        return name, load_seed(path)
    return name, model_cli.load_model(path, device)


@cli.command("python -m training.evaluate")
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--data",
        action="append",
        help="file/dir, ethucy:SPLIT[:SCENE], real:SET[:SPLIT] or synthetic:N[:SEED[:S]]; repeatable",
    )
    ap.add_argument("--suite", choices=sorted(SUITE), help="a named set of --data specs")
    ap.add_argument("--model", help="checkpoint (default: the shipped model)")
    ap.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="score another checkpoint beside the GRU (ours, any cell, or a seed-LSTM one)",
    )
    ap.add_argument("--noise", type=float, default=0.0, help="position noise std, metres")
    ap.add_argument("--jitter", type=float, default=0.0, help="timestamp jitter std, ms")
    ap.add_argument("--latency", type=float, default=100.0, help="one-way latency, ms")
    ap.add_argument("--send-rate", type=float, default=20.0, help="sender rate limit, Hz")
    ap.add_argument("--loss", type=float, default=0.02, help="packet loss probability")
    ap.add_argument(
        "--tick", type=float, default=0.05, help="server tick, s (newest sample per tick)"
    )
    ap.add_argument("--max-tracks", type=int, default=0, help="evaluate at most N tracks (0 = all)")
    ap.add_argument("--per-recording", action="store_true", help="print a table per recording")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--plots", help="write PNG plots into this directory")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    specs = list(args.data or []) + (SUITE[args.suite] if args.suite else [])
    if not specs:
        ap.error("give --data or --suite")

    t0 = time.time()
    lm = model_cli.load_model(args.model, args.device)
    extra = dict(_load_extra(s, args.device) for s in args.also)
    net = NetworkConfig(latency=args.latency / 1000, send_rate=args.send_rate, loss=args.loss)
    results = {}
    for spec in specs:
        with cli.user_errors((ValueError, KeyError), f"--data {spec}", "see --help for --data"):
            scenes = load_scenes(spec)
        if args.max_tracks:
            scenes = _limit(scenes, args.max_tracks, args.seed)
        result = evaluate(
            scenes,
            lm,
            noise=args.noise,
            jitter=args.jitter / 1000,
            net=net,
            seed=args.seed,
            tick=args.tick,
            extra=extra,
        )
        result["config"] = {
            "data": spec,
            "model": lm.version,
            "also": {k: getattr(v, "version", k) for k, v in extra.items()},
            "noise_m": args.noise,
            "jitter_ms": args.jitter,
            "latency_ms": args.latency,
            "send_rate_hz": args.send_rate,
            "loss": args.loss,
            "tick_s": args.tick,
        }
        result["ratios"] = ratios(result)
        for rec in result["recordings"].values():
            rec["ratios"] = ratios(rec["predictors"])
        print(
            f"{spec}: {len(scenes)} recordings, {result['tracks']} tracks, "
            f"{result['samples']} samples, model {lm.version}, "
            f"kalman q {result['kalman']['q']:.3g} r {result['kalman']['r']:.3g}, "
            f"imm q_cv {result['imm']['q_cv']:.3g} q_ct {result['imm']['q_ct']:.3g} "
            f"q_w {result['imm']['q_w']:.3g} r {result['imm']['r']:.3g}"
        )
        if args.per_recording and len(result["recordings"]) > 1:
            for name, rec in result["recordings"].items():
                print_table(rec["predictors"], f"{name} ({rec['samples']} samples)")
        print_table(result, f"{spec} pooled" if len(result["recordings"]) > 1 else spec)
        if args.plots:
            out_dir = (
                Path(args.plots) / spec.replace(":", "_") if len(specs) > 1 else Path(args.plots)
            )
            for f in plot(result, np.asarray(lm.features.horizons), out_dir):
                print(f"plot: {f}")
        results[spec] = public(result)
    out = results[specs[0]] if len(specs) == 1 else {"sets": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"({time.time() - t0:.1f} s)")
    return out


def _limit(scenes: list[Scene], n: int, seed: int) -> list[Scene]:
    """At most `n` tracks, drawn over all scenes (each scene keeps its chosen tracks)."""
    where = [(i, j) for i, sc in enumerate(scenes) for j in range(len(sc.tracks))]
    if len(where) <= n:
        return scenes
    pick = sorted(np.random.default_rng(seed).permutation(len(where))[:n])
    keep: dict[int, list[int]] = {}
    for k in pick:
        i, j = where[k]
        keep.setdefault(i, []).append(j)
    return [Scene(scenes[i].name, [scenes[i].tracks[j] for j in js]) for i, js in keep.items()]


if __name__ == "__main__":
    main()
