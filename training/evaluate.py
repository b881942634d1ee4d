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
from training import realmotion as RM
from training.data_specs import load_scenes
from training.datasets import Track
from training.eval_plots import plot
from training.eval_tables import predictor_stats, print_table, ratios
from training.imm import IMM
from training.realmotion import Scene
from training.render import NetworkConfig, received_stream, render_errors
from training.track_ops import corrupt


class _ManyTracks:
    """A path predictor with a batched `paths_many` (the IMM) in the place of a model."""

    def __init__(self, predictor: IMM) -> None:
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


def evaluate(
    scenes: list[Scene] | list[Track],
    lm: LoadedModel,
    *,
    noise: float = 0.0,
    jitter: float = 0.0,
    net: NetworkConfig | None = None,
    seed: int = 0,
    kalman: B.KalmanCV | None = None,
    imm: IMM | None = None,
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
            Scene(sc.name, [corrupt(tr, noise=noise, jitter=jitter, rng=rng) for tr in sc.tracks]),
            tick,
        )
        for sc in scenes
    ]
    obs = [tr for sc in obs_scenes for tr in sc.tracks]
    if not any((~np.isnan(B.truth_paths(tr, h))).any() for tr in obs):
        raise cli.UserError(
            "nothing to score: no sample has a recorded position at any predicted horizon "
            f"({', '.join(f'{x:g}' for x in h)} s) after it",
            "pass tracks sampled at least as often as the longest horizon",
        )
    tune_rng = np.random.default_rng(seed + 1)
    sub = [obs[i] for i in tune_rng.permutation(len(obs))[:60]]
    if kalman is None:
        kalman = B.KalmanCV.tune(sub, h)
    if imm is None:
        imm = IMM.tune(sub, h)
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
    result: dict = {"predictors": predictor_stats(pooled_e, pooled_r, h)}
    result["recordings"] = {
        sc.name: {
            "tracks": len(sc.tracks),
            "samples": int(sum(len(o) for o in sc.tracks)),
            "predictors": predictor_stats(e, r, h),
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


def public(result: dict) -> dict:
    """`result` without its private (`_`-prefixed) entries: what the JSON holds."""
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
