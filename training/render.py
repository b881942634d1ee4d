"""Render error of an observer drawing a remote avatar through a simulated network.

The sender thins the track to `send_rate`, the network drops a fraction `loss` and delays the
rest by `latency`; the server runs each path predictor on the received stream; the observer
renders at `fps` by hold, snapshot interpolation, or by following the newest predicted path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from training.baselines import out_of_reach
from training.datasets import Track

PathPredictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass
class NetworkConfig:
    """Simulated network and observer. Times in seconds, rates in Hz."""

    latency: float = 0.1  # one-way, sender sample -> observer receipt
    send_rate: float = 10.0
    loss: float = 0.02
    fps: float = 60.0
    interp_delay: float = 0.1
    max_extrapolate: float = 0.5  # past the last horizon, then hold
    seed: int = 0


def received_stream(
    track: Track, net: NetworkConfig, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Indices (ascending, int64) of the track's samples that reach the observer.

    A sample is sent when its time is >= the last sent time + 1/send_rate - 1e-6 (the first
    sample is always sent); each sent one is lost with probability `net.loss`, drawn from
    `rng` (default ``np.random.default_rng(net.seed)``). Raises ValueError if send_rate <= 0.
    """
    if net.send_rate <= 0:
        raise ValueError("send_rate must be > 0")
    rng = np.random.default_rng(net.seed) if rng is None else rng
    t = np.asarray(track.t, dtype=np.float64)
    period = 1.0 / net.send_rate - 1e-6
    sent: list[int] = []
    i = 0
    while i < t.size:
        sent.append(i)
        i = max(i + 1, int(np.searchsorted(t, t[i] + period, side="left")))
    idx = np.asarray(sent, dtype=np.int64)
    return idx[rng.random(idx.size) >= net.loss]


def positions_along_paths(
    p0: np.ndarray,
    paths: np.ndarray,
    horizons: np.ndarray,
    d: np.ndarray,
    max_extrapolate: float,
) -> np.ndarray:
    """Positions (M, 3) at elapsed time `d` (M,) >= 0 along M paths.

    Each path is piecewise linear through (0, p0[m]), (h_1, paths[m, 0]), ..., (h_H,
    paths[m, H-1]); past h_H it continues with the last segment's velocity for at most
    `max_extrapolate` s, then holds. `horizons` must be positive and strictly increasing
    (ValueError otherwise); `p0` (M, 3), `paths` (M, H, 3).
    """
    h = np.asarray(horizons, dtype=np.float64)
    if h.ndim != 1 or h.size == 0 or h[0] <= 0 or np.any(np.diff(h) <= 0):
        raise ValueError("horizons must be a non-empty, positive, strictly increasing 1-D array")
    knots = np.concatenate([[0.0], h])
    pts = np.concatenate([np.asarray(p0, dtype=np.float64)[:, None, :], paths], axis=1)
    d = np.minimum(np.maximum(np.asarray(d, dtype=np.float64), 0.0), h[-1] + max_extrapolate)
    seg = np.clip(np.searchsorted(knots, d, side="right") - 1, 0, h.size - 1)
    w = (d - knots[seg]) / (knots[seg + 1] - knots[seg])
    m = np.arange(pts.shape[0])
    a, b = pts[m, seg], pts[m, seg + 1]
    return a + w[:, None] * (b - a)


def render_errors(
    track: Track,
    paths_by_method: Mapping[str, PathPredictor],
    horizons: np.ndarray,
    net: NetworkConfig,
    rng: np.random.Generator | None = None,
    max_speed: float = 20.0,
    received: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per-frame 3D render errors (NaN-free 1-D arrays) for "hold", "interp" and each method.

    Frames run from the first arrival (tr[0] + latency) to `track.end` every 1/fps s; the
    frame's newest received sample j has ``tr[j] + latency <= tau``. "hold" draws pr[j];
    "interp" interpolates the received samples at ``tau - latency - interp_delay`` (clamped to
    the first/newest received); each path method (run on the received stream, see
    `training.baselines`) draws its path from j at ``tau - tr[j]`` (`positions_along_paths`).
    A method named "hold" replaces the built-in one; "interp" is reserved (ValueError).
    `horizons` must be positive and increasing. Empty arrays if nothing is received in time.
    Frames whose truth is farther from the newest received sample than `max_speed` allows
    (a teleport not yet received) are left out for every method. `received`: the indices
    of the samples that reach the observer, when the caller drew them already
    (`received_stream`; then `rng` is unused), so that predictors run on them beforehand.
    """
    if "interp" in paths_by_method:
        raise ValueError('"interp" is a reserved method name')
    h = np.asarray(horizons, dtype=np.float64)
    idx = received_stream(track, net, rng) if received is None else np.asarray(received)
    tr = np.asarray(track.t, dtype=np.float64)[idx]
    pr = np.asarray(track.p, dtype=np.float64)[idx]
    if tr.size == 0 or tr[0] + net.latency > track.end + 1e-9:
        return {k: np.zeros(0) for k in ("hold", "interp", *paths_by_method)}

    t0 = tr[0] + net.latency
    tau = t0 + np.arange(int(np.floor((track.end - t0) * net.fps + 1e-9)) + 1) / net.fps
    truth = track.truth_at(tau)
    j = np.maximum(np.searchsorted(tr + net.latency, tau, side="right") - 1, 0)
    # Frames after a teleport the observer has not heard of yet are unpredictable for
    # every method alike (the avatar is out of physical reach): left out.
    valid = ~np.isnan(truth).any(axis=1) & ~out_of_reach(truth, pr[j], tau - tr[j], max_speed)

    def err(pos: np.ndarray) -> np.ndarray:
        return np.linalg.norm(pos[valid] - truth[valid], axis=1)

    out = {"hold": err(pr[j])}

    s = tau - net.latency - net.interp_delay
    i = np.searchsorted(tr, s, side="right") - 1
    lo = np.clip(i, 0, j)
    hi = np.minimum(lo + 1, j)
    span = tr[hi] - tr[lo]
    w = np.where(hi > lo, (s - tr[lo]) / np.where(span > 0, span, 1.0), 0.0)
    w = np.clip(w, 0.0, 1.0)
    out["interp"] = err(pr[lo] + w[:, None] * (pr[hi] - pr[lo]))

    for name, predict in paths_by_method.items():
        paths = np.asarray(predict(tr, pr, h), dtype=np.float64)
        if paths.shape != (tr.size, h.size, 3):
            raise ValueError(f"{name}: paths shape {paths.shape} != {(tr.size, h.size, 3)}")
        pos = positions_along_paths(pr[j], paths[j], h, tau - tr[j], net.max_extrapolate)
        out[name] = err(pos)
    return out


def summarise(errors: Mapping[str, list[np.ndarray]]) -> dict[str, dict]:
    """Per method ``{"mean", "p95", "n"}`` over the concatenated errors (NaN stats if n == 0)."""
    res = {}
    for name, arrs in errors.items():
        e = np.concatenate([np.ravel(a) for a in arrs]) if len(arrs) else np.zeros(0)
        n = int(e.size)
        res[name] = {
            "mean": float(e.mean()) if n else float("nan"),
            "p95": float(np.percentile(e, 95)) if n else float("nan"),
            "n": n,
        }
    return res
