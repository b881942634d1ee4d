"""The classical prior, vectorised over rows: a constant-velocity Kalman filter.

Per row: position and velocity per axis (x, y, z independent) with one shared 2x2
covariance (position variance, cross term, velocity variance) — the filter of
`training.baselines.KalmanCV`, which is this module's test oracle. Process model: white
noise acceleration of spectral density `q` (m^2/s^3); measurement noise std `r` (m).
A reset puts the position at the sample, the velocity at zero with std `init_vel_std`.
Pure numpy, no per-row Python.
"""

from __future__ import annotations

import numpy as np


def kalman_step(
    old: np.ndarray,
    new: np.ndarray,
    z: np.ndarray,
    dt: np.ndarray,
    reset: np.ndarray,
    q: float,
    r: float,
    init_vel_std: float,
) -> None:
    """One predict + update for n rows, written into `new`.

    `old` and `new` are (9, n) field-major: position xyz, velocity xyz, covariance
    (p00, p01, p11). `z` (3, n) the samples, `dt` (n,) seconds since each row's previous
    sample (> 0), `reset` (n,) bool rows that start over. `new` must not alias `old`.
    """
    p00, p01, p11 = old[6], old[7], old[8]
    a00 = p00 + dt * (2.0 * p01 + dt * p11) + q * dt**3 / 3.0
    a01 = p01 + dt * p11 + q * dt * dt / 2.0
    a11 = p11 + q * dt
    s = a00 + r * r
    k0 = a00 / s
    k1 = a01 / s
    pred = old[0:3] + dt * old[3:6]
    e = z - pred
    np.add(pred, k0 * e, out=new[0:3])
    np.add(old[3:6], k1 * e, out=new[3:6])
    new[6] = (1.0 - k0) * a00
    new[7] = (1.0 - k0) * a01
    new[8] = a11 - k1 * a01
    if reset.any():
        new[0:3, reset] = z[:, reset]
        new[3:6, reset] = 0.0
        new[6, reset] = r * r
        new[7, reset] = 0.0
        new[8, reset] = init_vel_std * init_vel_std
