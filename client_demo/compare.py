"""The methods compared: the Kalman baseline's tuning, the scoreboard and its live table.

`tune_kalman` tunes the relay feed's Kalman filter as `training.evaluate` tunes its
baseline; `scoreboard` is one row per method (render error, downlink per receiver), served
at /demo/compare and drawn by `table` once a second.
"""

from __future__ import annotations

import argparse

import numpy as np
from rich.table import Table

from client_demo.players import Bot, make_policy
from client_demo.scoring import METHODS, Meter
from training.baselines import KalmanCV
from training.realmotion import Scene, thin_to_ticks
from training.sim_config import SimConfig
from training.simulate import simulate

TUNE_USERS, TUNE_SECONDS, TUNE_SEED = 16, 30.0, 104_729  # held-out users for the Kalman tuning


def tune_kalman(args: argparse.Namespace, horizons: np.ndarray, tick_hz: float) -> KalmanCV:
    """The Kalman filter tuned as `training.evaluate` tunes its baseline (`KalmanCV.tune`:
    the (q, r) grid, mean error over every sample and horizon) on what the relay would
    deliver from held-out users of the demo's simulator: their motion sampled at 60 Hz,
    sent by the demo's send policy, thinned to the newest sample per server tick."""
    cfg = SimConfig(world_size=args.world, teleport_per_min=0.2)
    tracks = simulate(TUNE_USERS, TUNE_SECONDS, seed=args.seed + TUNE_SEED, config=cfg)
    seen = []
    for tr in tracks:
        t = np.arange(tr.start, tr.end, 1 / 60)
        p = tr.truth_at(t)
        policy, keep = make_policy(args, horizons), []
        for k in range(len(t)):
            if np.isfinite(p[k]).all() and policy.should_send(t[k], p[k]):
                policy.sent(t[k], p[k], k)
                keep.append(k)
        seen.append(tr.observed(t[keep], p[keep]))
    return KalmanCV.tune(thin_to_ticks(Scene("tune", seen), 1.0 / tick_hz).tracks, horizons)


def scoreboard(meter: Meter, bots: list[Bot], elapsed: float) -> list[dict]:
    """One row per method: its feed, render error (mean, p95, n) and downlink per receiver
    (kB/s, records/s; None before any time has passed)."""
    per = len(bots) * elapsed
    gru_v = bots[0].client.welcome.v if bots and bots[0].client.welcome else None

    def rate(total: float, scale: float = 1.0) -> float | None:
        return total / per / scale if per > 0 else None

    gru_bytes = sum(b.client.bytes_in for b in bots)
    relay_bytes = sum(b.relay_bytes + b.view_bytes for b in bots)
    rows = []
    for m in METHODS:
        s = meter.errors[m].summary()
        gru = m == "gru"
        rows.append(
            {
                "method": m,
                "feed": f"v{gru_v}" if gru else "relay",
                **s,
                "kB_per_s": rate(gru_bytes if gru else relay_bytes, 1000.0),
                "records_per_s": rate(
                    sum(b.client.records_in if gru else b.relay_records for b in bots)
                ),
            }
        )
    return rows


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(meter: Meter, bots: list[Bot], elapsed: float, kalman: KalmanCV | None) -> Table:
    """The live table: one row per method, render error and downlink per receiver."""
    up = sum(b.sent for b in bots) / max(elapsed, 1e-9) / len(bots)
    rows = scoreboard(meter, bots, elapsed)
    n = rows[0]["n"]
    kf = f" · kalman q {kalman.q:.3g} r {kalman.r:.3g}" if kalman is not None else ""
    t = Table(
        title=f"t = {elapsed:.0f} s · {len(bots)} bots · {n:,} draws each · uplink {up:.1f} msg/s",
        title_justify="left",
        caption=f"render error in m vs truth, the same draws for every method;\n"
        f"downlink per receiver{kf}",
        caption_justify="left",
    )
    cols = ("method", "feed", "mean", "p95", "last 1 s", "x gru", "kB/s", "rec/s")
    for col in cols:
        t.add_column(col, justify="left" if col in ("method", "feed") else "right")
    g = rows[0]["mean"]
    for r in rows:
        last = meter.take_recent(r["method"])
        ratio = r["mean"] / g if r["mean"] is not None and g else None
        t.add_row(
            r["method"],
            r["feed"],
            _fmt(r["mean"], ".3f"),
            _fmt(r["p95"], ".3f"),
            _fmt(last["mean"], ".3f"),
            _fmt(ratio, ".2f"),
            _fmt(r["kB_per_s"], ".1f"),
            _fmt(r["records_per_s"], ".0f"),
        )
    return t
