"""The standard ETH/UCY protocol: leave one scene out, observe 8 (3.2 s), predict 12 (4.8 s).

    python -m training.ethucy [--scenes eth,hotel,univ,zara1,zara2] [--json OUT]

For each scene: train on the other recordings' train parts (their val parts for early
stopping), test on the held-out scene's whole recording(s); windows of 20 consecutive
annotations, stride 1. One model per fold, the same model and feature code as the server,
only the horizons differ (0.4 ... 4.8 s). Prints the per-scene table beside constant
velocity (computed here) and the published rows of the data's README.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from server import cli
from server.core import features as F
from server.core.features import FeatureConfig
from training import datasets as D
from training.datasets import Track
from training.track_ops import corrupt
from training.train import fit
from training.train_config import TrainConfig
from training.windows import Windows, residual_scale, residuals

SCENES = ("eth", "hotel", "univ", "zara1", "zara2")
OBS, PRED, STEP = 8, 12, 0.4
HORIZONS = tuple(round(STEP * k, 1) for k in range(1, PRED + 1))
PUBLISHED = {  # ADE/FDE per scene, from the data's README
    "linear (Social-GAN)": [(1.33, 2.94), (0.39, 0.72), (0.82, 1.59), (0.62, 1.21), (0.77, 1.48)],
    "vanilla LSTM (Social-GAN)": [
        (1.09, 2.41),
        (0.86, 1.91),
        (0.61, 1.31),
        (0.41, 0.88),
        (0.52, 1.11),
    ],
    "Social-LSTM (Social-GAN)": [
        (1.09, 2.35),
        (0.79, 1.76),
        (0.67, 1.40),
        (0.47, 1.00),
        (0.56, 1.17),
    ],
    "CV, last step (README)": [
        (1.08, 2.28),
        (0.32, 0.61),
        (0.52, 1.17),
        (0.43, 0.95),
        (0.32, 0.72),
    ],
    "Trajectron++ det.": [(1.02, 2.09), (0.33, 0.63), (0.52, 1.16), (0.42, 0.94), (0.32, 0.71)],
    "SingularTrajectory det.": [
        (0.72, 1.23),
        (0.27, 0.50),
        (0.57, 1.12),
        (0.44, 0.93),
        (0.35, 0.73),
    ],
}


def protocol_windows(tracks: list[Track]) -> list[Track]:
    """All 20-annotation windows (stride 1) of tracks sampled every 0.4 s without gaps."""
    out = []
    n = OBS + PRED
    for tr in tracks:
        ok = np.abs(np.diff(tr.t) - STEP) < 1e-6
        for s in range(len(tr) - n + 1):
            if ok[s : s + n - 1].all():
                out.append(Track(f"{tr.user}@{s}", tr.t[s : s + n], tr.p[s : s + n]))
    return out


def to_windows(res: list[tuple], scale: np.ndarray) -> Windows:
    """Loss on the observed steps 1..7 (each predicts its next 12 annotations)."""
    x = np.stack([r[0] for r in res])
    y = np.stack([r[1] for r in res]) / scale[None, None, :, None]
    m = np.isfinite(y).all(-1)
    m[:, 0] = False
    m[:, OBS:] = False
    y = np.where(m[..., None], y, 0.0).astype(np.float32)
    return Windows(x.astype(np.float32), y, m)


@torch.no_grad()
def score(model, fcfg: FeatureConfig, wins: list[Track]) -> dict:
    """ADE/FDE of the model and of CV on the windows, predicting from the 8th observation."""
    sf = F.sequence_features([w.t[:OBS] for w in wins], [w.p[:OBS] for w in wins], fcfg)
    x = torch.from_numpy(np.stack(sf.x))
    y = model(x)[0][:, OBS - 1].numpy()  # (N, 12, 3)
    last = F.StepOutput(
        **{
            f.name: np.stack([getattr(o, f.name)[OBS - 1] for o in sf.out])
            for f in dataclasses.fields(F.StepOutput)
        }
    )
    truth = np.stack([w.p[OBS:] for w in wins])  # (N, 12, 3)
    h = np.asarray(fcfg.horizons)
    paths = {
        "gru": F.decode(y, last, fcfg),
        "cv": last.p[:, None, :] + last.v[:, None, :] * h[None, :, None],  # last step's velocity
    }
    res = {}
    for name, path in paths.items():
        d = np.linalg.norm(path - truth, axis=-1)  # (N, 12)
        res[name] = {"ade": float(d.mean()), "fde": float(d[:, -1].mean())}
    res["windows"] = len(wins)
    return res


def run_fold(scene: str, cfg: TrainConfig) -> dict:
    held = D.ETHUCY_SCENES[scene]
    stems = [s for sc, v in D.ETHUCY_SCENES.items() if sc != scene for s in v]
    stems += D.ETHUCY_TRAIN_ONLY
    kw = {"max_gap": 0.5}
    # One pool per recording: with `balance`, each recording weighs the same, so the
    # largest (univ's crowds) does not impose its habits on every other scene.
    train_w = {s: protocol_windows(D.load_ethucy_scene_files("train", [s], **kw)) for s in stems}
    val_w = {s: protocol_windows(D.load_ethucy_scene_files("val", [s], **kw)) for s in stems}
    test_w = protocol_windows(D.load_ethucy_scene_files("all", held, **kw))
    fcfg = FeatureConfig(horizons=HORIZONS)
    # Position-noise copies: the BIWI recordings (eth, hotel) are annotated with lateral
    # jitter that UCY's crowds only show when people slow down and turn; training on
    # noisy copies teaches the model that a wiggle is not a stop.
    rng = np.random.default_rng(cfg.seed)
    for wins in train_w.values():
        clean = list(wins)
        for _ in range(cfg.noisy_copies):
            wins += [corrupt(w, noise=rng.uniform(0, cfg.noise_max), rng=rng) for w in clean]
    train_res = {s: residuals(w, fcfg) for s, w in train_w.items() if w}
    scale_t = residual_scale([r for v in train_res.values() for r in v])
    fcfg = dataclasses.replace(fcfg, out_scale=scale_t)
    scale = np.asarray(scale_t)
    pools = {s: to_windows(r, scale) for s, r in train_res.items()}
    val_pools = {s: to_windows(residuals(w, fcfg), scale) for s, w in val_w.items() if w}
    n_train = sum(len(w) for w in train_w.values())
    n_val = sum(len(w) for w in val_w.values())
    print(f"[{scene}] windows: train {n_train}, val {n_val}, test {len(test_w)}")
    fold_cfg = dataclasses.replace(cfg, out=str(Path(cfg.out) / f"{scene}.pt") if cfg.out else "")
    summary = fit(pools, val_pools, fcfg, fold_cfg, np.random.default_rng(cfg.seed), progress=False)
    return score(summary["model"], fcfg, test_w) | {"best_epoch": summary["best_epoch"]}


def table(results: dict[str, dict]) -> str:
    scenes = [s for s in SCENES if s in results]
    lines = [
        f"| model | {' | '.join(scenes)} | avg | avg w/o eth |",
        "|---" * (len(scenes) + 3) + "|",
    ]

    def row(name: str, vals: list[tuple[float, float]]) -> str:
        cells = [f"{a:.2f}/{f:.2f}" for a, f in vals]
        a = np.mean(vals, axis=0)
        rest = [v for s, v in zip(scenes, vals, strict=True) if s != "eth"]
        b = np.mean(rest, axis=0) if rest else (np.nan, np.nan)
        return f"| {name} | {' | '.join(cells)} | {a[0]:.3f}/{a[1]:.3f} | {b[0]:.3f}/{b[1]:.3f} |"

    for name, vals in PUBLISHED.items():
        lines.append(row(name, [vals[SCENES.index(s)] for s in scenes]))
    for key, name in (("cv", "CV, last step (recomputed here)"), ("gru", "**avatar-stream GRU**")):
        lines.append(row(name, [(results[s][key]["ade"], results[s][key]["fde"]) for s in scenes]))
    return "\n".join(lines)


@cli.command("python -m training.ethucy")
def main(argv: list[str] | None = None) -> dict:
    """Run the protocol (see ``--help``); returns the per-scene results it printed."""
    ap = argparse.ArgumentParser(
        prog="python -m training.ethucy", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--scenes", default=",".join(SCENES))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-balance", action="store_true", help="weigh recordings by size")
    ap.add_argument("--noisy-copies", type=int, default=1, help="noisy copies of each window")
    ap.add_argument("--noise-max", type=float, default=0.12, help="their noise std ~ U(0, max), m")
    ap.add_argument("--out", default="", help="directory for the per-fold checkpoints")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    scenes = args.scenes.split(",")
    unknown = [s for s in scenes if s not in SCENES]
    if unknown:
        ap.error(f"--scenes: unknown {', '.join(map(repr, unknown))} (known: {','.join(SCENES)})")
    if args.epochs < 1 or args.hidden < 1 or args.batch < 1 or args.noisy_copies < 0:
        ap.error("need --epochs, --hidden, --batch >= 1 and --noisy-copies >= 0")
    hint = "set AVATAR_ETHUCY to the directory holding all_data/, train/ and val/"
    with cli.user_errors(FileNotFoundError, "ETH/UCY data", hint):
        D.ethucy_root()  # before anything else
    cfg = TrainConfig(
        out=args.out,
        name="ethucy",
        epochs=args.epochs,
        hidden=args.hidden,
        head_hidden=args.hidden,
        lr=args.lr,
        batch=args.batch,
        patience=8,
        balance=not args.no_balance,
        noisy_copies=args.noisy_copies,
        noise_max=args.noise_max,
        seed=args.seed,
        horizons=HORIZONS,
    )
    t0 = time.time()
    results = {}
    for scene in scenes:
        torch.manual_seed(cfg.seed)
        r = run_fold(scene, cfg)
        results[scene] = r
        print(
            f"[{scene}] GRU {r['gru']['ade']:.3f}/{r['gru']['fde']:.3f}  "
            f"CV {r['cv']['ade']:.3f}/{r['cv']['fde']:.3f}  ({r['windows']} windows)",
            flush=True,
        )
    print()
    print(table(results))
    print(f"\n({time.time() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
