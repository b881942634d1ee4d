"""Train the motion GRU.

    python -m training.train --preset shipped          # reproduces server/models/avatar_gru.pt
    python -m training.train --data my_logs.csv --no-ethucy --real none --synthetic-avatars 0 --out m.pt

Reads top to bottom: configuration (`TrainConfig`, presets and flags: `training.train_config`)
-> data (scenes: tracks on one clock, replayed tick by tick through
`server.core.features.scene_features` exactly as the engine serves them, with each avatar's
Kalman prior and neighbours; residual targets over the prior at the horizons) -> windows
(`training.windows`) -> model -> loop (AdamW, validation every epoch, early stopping,
best checkpoint written atomically). Seeded: the same command on the same machine gives
the same checkpoint.

Data sources and their weights (`balance`: every source gets the same share of the
batches, whatever its size; a pool smaller than its share repeats):
- `synthetic`: simulated game avatars (`training.simulate`), all in one room;
- `ethucy`: ETH/UCY train parts (validation: their val parts), one room per recording;
- `juelich`, `soccer`, `sdd`: real motion at stream rates (`training.realmotion`,
  recording-level train/val splits; the test recordings are never read here);
- `dataN`: your own CSV files (90/10 split by user, one room per file).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from server import cli
from server.core import model_cli
from server.core.features import FeatureConfig
from server.core.model import ModelConfig, MotionGRU, resolve_device, save_checkpoint
from training import datasets as D
from training import realmotion as RM
from training.baselines import KalmanCV
from training.realmotion import Scene
from training.track_ops import corrupt, split_by_user
from training.train_config import TrainConfig, config_from_args
from training.windows import Windows, cv_error_by_horizon, make_windows, residual_scale, residuals

# -----------------------------------------------------------------------------------------
# data: sources -> scenes (windows: training.windows)


def augment_noisy(scenes: list[Scene], cfg: TrainConfig, rng: np.random.Generator) -> list[Scene]:
    """The clean scenes plus `noisy_copies` corrupted copies of each (noise and jitter drawn
    per copy, the same for every track of the copy: one tracking system per recording)."""
    out = list(scenes)
    for _ in range(cfg.noisy_copies):
        for sc in scenes:
            noise = rng.uniform(0, cfg.noise_max)
            jitter = rng.uniform(0, cfg.jitter_max)
            trs = [corrupt(tr, noise=noise, jitter=jitter, rng=rng) for tr in sc.tracks]
            out.append(Scene(sc.name + "~", trs))
    return out


def load_sources(cfg: TrainConfig) -> tuple[dict[str, list[Scene]], dict[str, list[Scene]]]:
    """Training and validation scenes by source name."""
    from training.simulate import simulate

    train: dict[str, list[Scene]] = {}
    val: dict[str, list[Scene]] = {}
    if cfg.synthetic_avatars > 0:
        # One world per room (seed, seed + 1000, …), so that a room holds as many avatars
        # as a served one would rather than one crowd of all the training users.
        rooms = max(1, cfg.synthetic_rooms)
        per_room = max(1, cfg.synthetic_avatars // rooms)
        train["synthetic"] = [
            Scene(
                f"synthetic/train{r}",
                simulate(per_room, cfg.synthetic_duration, seed=cfg.seed + 1000 * r),
            )
            for r in range(rooms)
        ]
        sim_val = simulate(
            max(1, cfg.synthetic_val_avatars), cfg.synthetic_duration, seed=cfg.seed + 10_000
        )
        val["synthetic"] = [Scene("synthetic/val", sim_val)]
    if cfg.ethucy:
        train["ethucy"] = RM.ethucy_scenes("train")
        val["ethucy"] = RM.ethucy_scenes("val")
    for name in cfg.real:
        if name == "none":
            continue
        train[name] = RM.load_scenes(name, "train")
        val[name] = RM.load_scenes(name, "val")
    for i, path in enumerate(cfg.data):
        tr, va, _ = split_by_user(D.load_tracks(path), val_frac=0.1, test_frac=0.0, seed=cfg.seed)
        train[f"data{i}"], val[f"data{i}"] = [Scene(f"data{i}", tr)], [Scene(f"data{i}", va)]
    if not train:
        raise SystemExit("no training data: enable --synthetic-avatars, --ethucy, --real or --data")
    thin = {k: [RM.thin_to_ticks(sc, cfg.tick) for sc in v] for k, v in train.items()}
    return thin, {k: [RM.thin_to_ticks(sc, cfg.tick) for sc in v] for k, v in val.items()}


def tune_prior(
    sources: dict[str, list[Scene]], horizons, seed: int, per_source: int = 24
) -> tuple[float, float]:
    """(q, r) of the Kalman prior: the grid point with the lowest mean over sources of the
    error relative to that source's best grid point (each source weighs the same)."""
    from training.baselines import Q_GRID, R_GRID

    rng = np.random.default_rng(seed)
    h = np.asarray(horizons)
    rel = []
    for scenes in sources.values():
        trs = [tr for sc in scenes for tr in sc.tracks if len(tr) > 2]
        pick = [trs[i] for i in rng.permutation(len(trs))[:per_source]]
        if not pick:
            continue
        truths = [
            tr.truth_at((tr.t[:, None] + h).ravel()).reshape(len(tr), len(h), 3) for tr in pick
        ]
        errs = np.zeros((len(Q_GRID), len(R_GRID)))
        for a, q in enumerate(Q_GRID):
            for b, r in enumerate(R_GRID):
                kf = KalmanCV(q=q, r=r)
                e = [
                    np.linalg.norm(kf(tr.t, tr.p, h) - tru, axis=-1)
                    for tr, tru in zip(pick, truths, strict=True)
                ]
                errs[a, b] = np.nanmean(np.concatenate([x.ravel() for x in e]))
        rel.append(errs / errs.min())
    a, b = np.unravel_index(np.argmin(np.mean(rel, axis=0)), rel[0].shape)
    return float(Q_GRID[a]), float(R_GRID[b])


# -----------------------------------------------------------------------------------------
# loss and evaluation


def displacement(
    pred: torch.Tensor,
    y: torch.Tensor,
    m: torch.Tensor,
    scale: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean Euclidean error in metres over masked (window, step, horizon) entries;
    with `weight` (H,), each horizon's error is multiplied by its weight first."""
    d = ((pred - y) * scale[:, None]).pow(2).sum(-1).add(1e-6).sqrt()  # (B, L, H)
    if weight is not None:
        d = d * weight
    return (d * m).sum() / m.sum().clamp(min=1)


@torch.no_grad()
def evaluate_windows(
    model: MotionGRU, w: Windows, scale: torch.Tensor, device: torch.device, batch: int = 512
) -> tuple[float, float]:
    """(model, prior) mean displacement error in metres over all windows."""
    model.eval()
    tot = cv = cnt = 0.0
    for i in range(0, len(w), batch):
        x = torch.from_numpy(w.x[i : i + batch]).to(device)
        y = torch.from_numpy(w.y[i : i + batch]).to(device)
        m = torch.from_numpy(w.m[i : i + batch]).to(device)
        pred, _ = model(x)
        n = float(m.sum())
        tot += float(displacement(pred, y, m, scale)) * n
        cv += float(displacement(torch.zeros_like(y), y, m, scale)) * n
        cnt += n
    return tot / max(cnt, 1), cv / max(cnt, 1)


# -----------------------------------------------------------------------------------------
# the loop


def mirror_batch(
    x: torch.Tensor, y: torch.Tensor, flip: torch.Tensor, fcfg: FeatureConfig | None = None
):
    """Reflect windows where `flip` (B,) is set: y -> -y in the heading frame."""
    fcfg = fcfg or FeatureConfig()
    sx = torch.from_numpy(fcfg.mirror_signs()).to(x.device)
    sy = torch.tensor([1.0, -1.0, 1.0], device=x.device)
    f = flip[:, None, None]
    x = torch.where(f, x * sx, x)
    y = torch.where(f[..., None], y * sy, y)
    return x, y


def train(cfg: TrainConfig, *, progress: bool = True) -> dict:
    """Run the whole training; returns a summary. Writes the best checkpoint to `cfg.out`."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()

    train_scenes, val_scenes = load_sources(cfg)
    q, r = cfg.kalman_q, cfg.kalman_r
    if q <= 0 or r <= 0:
        q, r = tune_prior(train_scenes, cfg.horizons, cfg.seed)
    print(f"prior: Kalman q {q:.4g} m^2/s^3, r {r:.4g} m")
    fcfg = FeatureConfig(
        horizons=tuple(cfg.horizons),
        kalman_q=q,
        kalman_r=r,
        neighbours=cfg.neighbours,
        nb_radius=cfg.nb_radius,
        nb_cell_cap=cfg.nb_cell_cap,
    )

    def scene_res(scenes: list[Scene]) -> list[tuple]:
        return [x for sc in scenes for x in residuals(sc.tracks, fcfg, scene=True, tick=cfg.tick)]

    train_res = {
        k: scene_res(v if k == "ethucy" and not cfg.noisy_ethucy else augment_noisy(v, cfg, rng))
        for k, v in train_scenes.items()
    }
    val_res = {k: scene_res(augment_noisy(v, cfg, rng)) for k, v in val_scenes.items()}
    train_tracks = {k: [tr for sc in v for tr in sc.tracks] for k, v in train_scenes.items()}
    scale_t = residual_scale([r for v in train_res.values() for r in v])
    fcfg = dataclasses.replace(fcfg, out_scale=scale_t)
    scale = np.asarray(scale_t, dtype=np.float32)
    # Sparse sources (ETH/UCY at 2.5 Hz) get short windows: their tracks are short.
    pools, val_pools = {}, {}
    for k in train_res:
        dts = np.concatenate([np.diff(tr.t) for tr in train_tracks[k] if len(tr) > 1])
        L = cfg.window if np.median(dts) < 0.2 else max(8, cfg.window // 4)
        B = cfg.burn_in if cfg.window == L else max(2, cfg.burn_in // 4)
        pools[k] = make_windows(train_res[k], scale, L, B)
        if k in val_res:
            val_pools[k] = make_windows(val_res[k], scale, L, B)
    print(f"windows: train { {k: len(w) for k, w in pools.items()} }, ", end="")
    print(f"val { {k: len(w) for k, w in val_pools.items()} }")
    print(f"residual scale per horizon (m): {np.round(scale, 3).tolist()}")
    summary = fit(pools, val_pools, fcfg, cfg, rng, progress=progress)
    summary["seconds"] = round(time.time() - t0, 1)
    return summary


def source_weights(spec: str, sources: list[str]) -> dict[str, float]:
    """Share of the batches per source from "name=w,…" (unnamed sources weigh 1), summing
    to 1. Raises ValueError for a malformed spec, an unknown source or a negative weight."""
    w = dict.fromkeys(sources, 1.0)
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, val = item.partition("=")
        if name not in w:
            raise ValueError(f"weights: unknown source {name!r} (sources: {', '.join(sources)})")
        w[name] = float(val)
        if not w[name] >= 0:
            raise ValueError(f"weights: {item!r} must be >= 0")
    total = sum(w.values())
    if total <= 0:
        raise ValueError("weights: all zero")
    return {k: v / total for k, v in w.items()}


def fit(
    pools: dict[str, Windows],
    val_pools: dict[str, Windows],
    fcfg: FeatureConfig,
    cfg: TrainConfig,
    rng: np.random.Generator,
    *,
    progress: bool = True,
) -> dict:
    """The optimisation loop. Validation score = mean over sources of GRU error / CV error;
    the best model is written to `cfg.out` (if set) and returned in the summary."""
    device = resolve_device(cfg.device)
    mcfg = ModelConfig(
        n_features=fcfg.n_features,
        hidden=cfg.hidden,
        layers=cfg.layers,
        head_hidden=cfg.head_hidden,
        n_horizons=fcfg.n_horizons,
        cell=cfg.cell,
        gate=cfg.gate,
    )
    model = MotionGRU(mcfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.balance:
        # Equal batches per source ("ethucy/x" and "ethucy/y" are one source "ethucy"),
        # then per pool within a source; small pools repeat.
        total = max(1, sum(len(w) for w in pools.values()) // cfg.batch)
        groups: dict[str, list[str]] = {}
        for k in pools:
            groups.setdefault(k.split("/")[0], []).append(k)
        weight = source_weights(cfg.weights, list(groups))
        batches = []
        for src, keys in groups.items():
            each = max(1, int(total * weight[src]) // len(keys))
            for k in keys:
                batches += [(k, (i * cfg.batch) % max(1, len(pools[k]))) for i in range(each)]
    else:
        batches = [(k, i) for k, w in pools.items() for i in range(0, len(w), cfg.batch)]
    per_epoch = min(len(batches), cfg.max_batches) if cfg.max_batches else len(batches)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=cfg.epochs * per_epoch, pct_start=0.1
    )
    scale_d = torch.tensor(fcfg.scales(), dtype=torch.float32, device=device)
    # The loss is relative to the prior's error per source and per horizon, so sparse,
    # precise data (ETH/UCY, centimetres) weighs as much as fast, noisy game motion
    # (decimetres), and the shortest horizon as much as the longest: the model must beat
    # the Kalman prior everywhere.
    inv_cv = {
        k: torch.tensor(
            1.0 / np.maximum(cv_error_by_horizon(w, fcfg.scales()), 1e-4),
            dtype=torch.float32,
            device=device,
        )
        for k, w in pools.items()
    }
    best, best_epoch, best_state, history = math.inf, -1, None, []
    # One progress bar for the whole run (reset per epoch): a Ctrl-C can then never land in
    # a bar's constructor (tqdm then complains at exit). Only on a terminal.
    bar = tqdm(total=per_epoch, disable=not (progress and sys.stderr.isatty()), leave=False)
    for epoch in range(cfg.epochs):
        model.train()
        perms = {k: rng.permutation(len(w)) for k, w in pools.items()}
        order = rng.permutation(len(batches))[:per_epoch]
        bar.reset(total=per_epoch)
        bar.set_description(f"epoch {epoch + 1}/{cfg.epochs}", refresh=False)
        run_loss = 0.0
        for j in order:
            k, i = batches[j]
            idx = np.take(perms[k], np.arange(i, i + cfg.batch), mode="wrap")
            w = pools[k]
            x = torch.from_numpy(w.x[idx]).to(device)
            y = torch.from_numpy(w.y[idx]).to(device)
            m = torch.from_numpy(w.m[idx]).to(device)
            if cfg.mirror:
                x, y = mirror_batch(x, y, torch.rand(len(idx), device=device) < 0.5, fcfg)
            pred, _ = model(x)
            loss = displacement(pred, y, m, scale_d, inv_cv[k])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            sched.step()
            lv = loss.item()
            run_loss = 0.98 * run_loss + 0.02 * lv if run_loss else lv
            bar.set_postfix(loss=f"{run_loss:.4f}", refresh=False)
            bar.update(1)
        val = {k: evaluate_windows(model, w, scale_d, device) for k, w in val_pools.items()}
        # Error relative to the prior: mean over sources of the mean over a source's pools.
        by_source: dict[str, list[float]] = {}
        for k, (g, c) in val.items():
            by_source.setdefault(k.split("/")[0], []).append(g / c)
        score = float(np.mean([np.mean(v) for v in by_source.values()]))
        history.append({"epoch": epoch + 1, "val": val, "score": score})
        line = " ".join(f"{k}: {g:.4f} (prior {c:.4f})" for k, (g, c) in val.items())
        improved = score < best
        if improved:
            best, best_epoch = score, epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if cfg.out:
                meta = {
                    "train_config": dataclasses.asdict(cfg),
                    "epoch": epoch + 1,
                    "val": {k: {"gru": g, "prior": c} for k, (g, c) in val.items()},
                }
                save_checkpoint(cfg.out, model.cpu(), fcfg, name=cfg.name, meta=meta)
                model.to(device)
        print(
            f"epoch {epoch + 1}: val {line} | score {score:.4f}{' *' if improved else ''}",
            flush=True,
        )
        if epoch + 1 - best_epoch >= cfg.patience:
            print(f"early stop: no improvement for {cfg.patience} epochs")
            break
    bar.close()
    model.load_state_dict(best_state)
    return {
        "out": cfg.out,
        "best_epoch": best_epoch,
        "best_score": best,
        "history": history,
        "model": model.cpu().eval(),
    }


# -----------------------------------------------------------------------------------------
# CLI


@cli.command("python -m training.train")
def main(argv: list[str] | None = None) -> None:
    with cli.user_errors((ValueError, TypeError), "bad configuration", "check --preset and flags"):
        cfg = config_from_args(argv)
    model_cli.check_device(cfg.device)
    t0 = time.time()
    try:
        summary = train(cfg)
    except KeyboardInterrupt:
        out = Path(cfg.out) if cfg.out else None
        kept = out is not None and out.exists() and out.stat().st_mtime >= t0
        raise cli.Interrupted(
            f"the best checkpoint so far is in {out}" if kept else "no checkpoint written"
        ) from None
    summary.pop("model")
    Path(cfg.out).with_suffix(".json").write_text(json.dumps(summary, indent=2))
    print(
        f"best epoch {summary['best_epoch']} score {summary['best_score']:.4f} "
        f"(GRU error / prior error on validation) -> {cfg.out} in {summary['seconds']} s"
    )


if __name__ == "__main__":
    main()
