"""`client_demo.reckoning.DeadReckoner`: drawing remote avatars by gru, cv, hold, interp."""

import itertools

import numpy as np
import pytest

from client_demo.reckoning import DeadReckoner

H = [0.1, 0.2, 0.3, 0.4]
A0 = 1_700_000_000.0  # server times read like Unix time: a difference is good to ~2.4e-7 s,
TOL = 1e-5  # so a velocity from two anchors 0.05 s apart is good to ~5e-6 (relative)
POS = np.array([1.0, 2.0, 0.5])


def curved_offsets(h=H, scale=1.0):
    """Offsets on a curve (not a line), so interpolation and extrapolation are distinguishable."""
    h = np.asarray(h)
    return scale * np.stack([1.5 * h, 2.0 * h**2, -0.1 * h], axis=1)


# ---------------------------------------------------------------------------------------
# DeadReckoner: "gru"


def gru(**kw):
    dr = DeadReckoner(H, "gru", **kw)
    dr.update("a", A0, POS, curved_offsets(), A0 + 0.1)
    return dr


def test_gru_knots_midway_and_before_anchor():
    dr = gru()
    off = curved_offsets()
    knots = np.vstack([POS, POS + off])
    times = [0.0, *H]
    for tk, pk in zip(times, knots, strict=True):
        np.testing.assert_allclose(dr.position_at("a", A0 + tk), pk, atol=1e-6)
    for i in range(len(H)):
        mid = A0 + (times[i] + times[i + 1]) / 2
        np.testing.assert_allclose(
            dr.position_at("a", mid), (knots[i] + knots[i + 1]) / 2, atol=1e-6
        )
    for dt in (0.01, 0.05, 3.0):
        np.testing.assert_allclose(dr.position_at("a", A0 - dt), POS)
    assert dr.position_at("a", A0).dtype == np.float64


def test_gru_bounded_extrapolation_then_hold():
    dr = gru(extrapolate=0.5)
    off = curved_offsets()
    v = (off[-1] - off[-2]) / (H[-1] - H[-2])
    last = POS + off[-1]
    np.testing.assert_allclose(dr.position_at("a", A0 + H[-1] + 0.2), last + 0.2 * v, atol=1e-6)
    held = last + 0.5 * v
    for dt in (0.5, 0.7, 5.0):
        np.testing.assert_allclose(dr.position_at("a", A0 + H[-1] + dt), held, atol=1e-6)
    dr0 = gru(extrapolate=0.0)
    np.testing.assert_allclose(dr0.position_at("a", A0 + H[-1] + 0.3), last, atol=1e-6)


def test_gru_repeat_and_older_anchor_are_no_ops():
    dr = gru(convergence=0.2)
    a1, now1 = A0 + 0.05, A0 + 0.15
    dr.update("a", a1, POS + [0.3, 0.0, 0.0], curved_offsets(scale=-1.0), now1)  # blending
    ts = A0 + np.linspace(0.0, 0.8, 33)
    before = np.array([dr.position_at("a", t) for t in ts])
    # the server repeats the latest prediction every tick (anchor jitters by < 1 ms)
    for anchor in (a1, a1 + 0.0004, a1 - 0.0004):
        dr.update("a", anchor, POS + [9.0, 9.0, 9.0], curved_offsets(scale=3.0), now1 + 0.05)
    dr.update("a", A0, POS - 5.0, curved_offsets(), now1 + 0.1)  # older anchor
    after = np.array([dr.position_at("a", t) for t in ts])
    np.testing.assert_array_equal(after, before)
    # a genuinely newer one does change things
    dr.update("a", a1 + 0.05, POS + [9.0, 9.0, 9.0], curved_offsets(), now1 + 0.05)
    assert not np.allclose(dr.position_at("a", ts[-1]), before[-1])


def path_only(anchor, pos, off, mode="gru"):
    """A reckoner that knows only this path (a first update never blends)."""
    dr = DeadReckoner(H, mode)
    dr.update("x", anchor, pos, off, anchor)
    return dr


def test_gru_blending_continuous_then_converges():
    conv = 0.2
    dr = gru(convergence=conv)
    a1, now = A0 + 0.05, A0 + 0.17
    p1, off1 = POS + [0.4, -0.3, 0.0], curved_offsets(scale=-1.0)
    shown = dr.position_at("a", now)
    dr.update("a", a1, p1, off1, now)
    np.testing.assert_allclose(dr.position_at("a", now), shown, atol=1e-9)  # no jump
    new = path_only(a1, p1, off1)
    assert np.linalg.norm(shown - new.position_at("x", now)) > 0.3  # there was a gap to close
    for dt in (conv, conv + 0.01, conv + 0.3):
        np.testing.assert_allclose(
            dr.position_at("a", now + dt), new.position_at("x", now + dt), atol=1e-9
        )
    ts = now + np.linspace(0.0, conv, 21)
    gap = [np.linalg.norm(dr.position_at("a", t) - new.position_at("x", t)) for t in ts]
    assert all(g1 <= g0 + 1e-12 for g0, g1 in itertools.pairwise(gap))
    assert gap[0] > 0.3 and gap[-1] < 1e-9
    for i, u in ((5, 0.25), (10, 0.5), (15, 0.75)):  # the gap shrinks by 1 - smoothstep(u)
        assert gap[i] == pytest.approx(gap[0] * (1 - u * u * (3 - 2 * u)), rel=1e-4)
    # small steps early: no snap at the start of the blend either
    step0 = np.linalg.norm(dr.position_at("a", now + 0.005) - dr.position_at("a", now))
    assert step0 < 0.05


def test_gru_blend_of_a_blend_is_continuous():
    dr = gru(convergence=0.3)
    dr.update("a", A0 + 0.05, POS + 1.0, curved_offsets(scale=-1.0), A0 + 0.15)
    now = A0 + 0.25  # mid-blend
    shown = dr.position_at("a", now)
    dr.update("a", A0 + 0.10, POS - 1.0, curved_offsets(scale=2.0), now)
    np.testing.assert_allclose(dr.position_at("a", now), shown, atol=1e-9)


def test_gru_convergence_zero_snaps():
    dr = gru(convergence=0.0)
    a1, now = A0 + 0.05, A0 + 0.17
    p1, off1 = POS + [0.4, -0.3, 0.0], curved_offsets(scale=-1.0)
    dr.update("a", a1, p1, off1, now)
    new = path_only(a1, p1, off1)
    for t in (now, now + 0.01, now + 0.1):
        np.testing.assert_allclose(dr.position_at("a", t), new.position_at("x", t), atol=1e-9)


def test_positions_at_matches_position_at(rng):
    for mode in DeadReckoner.MODES:
        dr = DeadReckoner(H, mode)
        keys = list(range(20))
        for k in keys:
            for j in range(3):
                a = A0 + 0.05 * j + 0.001 * k
                dr.update(k, a, rng.normal(size=3), rng.normal(size=(len(H), 3)), a + 0.1)
        assert len(dr) == 20 and 7 in dr and set(dr.keys()) == set(keys)
        for t in (A0 + 0.12, A0 + 0.3, A0 + 2.0):
            want = np.array([dr.position_at(k, t) for k in keys[::-1]])
            np.testing.assert_array_equal(dr.positions_at(keys[::-1], t), want)
            out = np.full((20, 3), np.nan)
            assert dr.positions_at(keys[::-1], t, out=out) is out
            np.testing.assert_array_equal(out, want)
        assert dr.positions_at([], A0).shape == (0, 3)
        dr.remove(3)
        dr.remove("never-seen")
        assert 3 not in dr and len(dr) == 19
        with pytest.raises(KeyError):
            dr.position_at(3, A0)


def test_position_at_returns_a_copy():
    dr = gru()
    p = dr.position_at("a", A0 - 1.0)
    p[:] = 99.0
    np.testing.assert_allclose(dr.position_at("a", A0 - 1.0), POS)


def test_bad_arguments():
    with pytest.raises(ValueError):
        DeadReckoner(H, "kalman")
    for bad in ([], [0.2, 0.1], [0.0, 0.1], [0.1, float("inf")]):
        with pytest.raises(ValueError):
            DeadReckoner(bad)
    for kw in ({"extrapolate": -1}, {"convergence": -0.1}, {"interp_delay": -1}, {"history": 1}):
        with pytest.raises(ValueError):
            DeadReckoner(H, **kw)
    dr = DeadReckoner(H)
    with pytest.raises(ValueError):
        dr.update("a", A0, POS, np.zeros((len(H) + 1, 3)), A0)
    with pytest.raises(ValueError):
        dr.update("a", A0, [1.0], np.zeros((len(H), 3)), A0)
    with pytest.raises(ValueError):
        dr.update("a", float("nan"), POS, np.zeros((len(H), 3)), A0)
    assert "a" not in dr


def test_dims_two_offsets_mean_zero_z():
    dr = DeadReckoner(H)
    off = curved_offsets()
    dr.update("a", A0, POS, off[:, :2], A0)
    np.testing.assert_allclose(dr.position_at("a", A0 + H[1]), POS + [off[1, 0], off[1, 1], 0.0])


# ---------------------------------------------------------------------------------------
# DeadReckoner: "cv", "hold", "interp"


def test_cv_extrapolates_then_holds():
    dr = DeadReckoner(H, "cv", extrapolate=0.5, convergence=0.0)
    junk = np.full((len(H), 3), 50.0)  # offsets are ignored
    dr.update("a", A0, POS, junk, A0 + 0.1)
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.5), POS)  # one sample: no velocity
    p1 = POS + [0.075, -0.025, 0.0]  # 0.05 s later: v = (1.5, -0.5, 0)
    dr.update("a", A0 + 0.05, p1, junk, A0 + 0.15)
    v = np.array([1.5, -0.5, 0.0])
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.05 + 0.3), p1 + 0.3 * v, atol=TOL)
    span = H[-1] + 0.5
    for dt in (span, span + 0.2, 10.0):
        np.testing.assert_allclose(dr.position_at("a", A0 + 0.05 + dt), p1 + span * v, atol=TOL)
    np.testing.assert_allclose(dr.position_at("a", A0), p1)  # before the anchor
    # two samples more than 1 s apart: no velocity
    dr.update("a", A0 + 1.2, p1 + 3.0, junk, A0 + 1.3)
    np.testing.assert_allclose(dr.position_at("a", A0 + 1.7), p1 + 3.0)


def test_cv_blends_like_gru():
    dr = DeadReckoner(H, "cv", convergence=0.2)
    z = np.zeros((len(H), 3))
    dr.update("a", A0, POS, z, A0 + 0.1)
    dr.update("a", A0 + 0.05, POS + [0.075, 0.0, 0.0], z, A0 + 0.15)  # v = 1.5 x
    now = A0 + 0.20
    shown = dr.position_at("a", now)
    dr.update("a", A0 + 0.10, POS + [0.075, 0.2, 0.0], z, now)  # v = 4 y, a jump sideways
    np.testing.assert_allclose(dr.position_at("a", now), shown, atol=1e-9)
    expect = POS + [0.075, 0.2, 0.0] + [0.0, 4.0 * 0.35, 0.0]
    np.testing.assert_allclose(dr.position_at("a", now + 0.25), expect, atol=TOL)


def test_hold_shows_newest_without_blending():
    dr = DeadReckoner(H, "hold", convergence=0.5)
    z = np.zeros((len(H), 3))
    dr.update("a", A0, POS, z, A0 + 0.1)
    dr.update("a", A0 + 0.05, POS + 1.0, z, A0 + 0.15)
    for t in (A0 - 1.0, A0 + 0.15, A0 + 9.0):
        np.testing.assert_allclose(dr.position_at("a", t), POS + 1.0)
    dr.update("a", A0 + 0.01, POS - 7.0, z, A0 + 0.2)  # older: ignored
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.3), POS + 1.0)


def test_interp_renders_in_the_past_and_clamps():
    dr = DeadReckoner(H, "interp", interp_delay=0.1, history=3, convergence=0.5)
    z = np.zeros((len(H), 3))
    ps = [POS + [k, 2.0 * k, 0.0] for k in range(6)]
    for k in range(3):
        dr.update("a", A0 + 0.1 * k, ps[k], z, A0 + 0.1 * k + 0.05)
    # each sample arrived 0.05 s after its time: t renders t - 0.05 - 0.1 (the playout delay)
    # t = 0.30 renders 0.15: midway between samples 1 and 2
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.30), (ps[1] + ps[2]) / 2, atol=TOL)
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.18), 0.7 * ps[0] + 0.3 * ps[1], atol=TOL)
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.10), ps[0])  # before the oldest
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.5), ps[2])  # after the newest: hold
    for k in range(3, 6):  # history=3 keeps samples 3..5
        dr.update("a", A0 + 0.1 * k, ps[k], z, A0 + 0.1 * k + 0.05)
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.15), ps[3])
    np.testing.assert_allclose(dr.position_at("a", A0 + 0.60), (ps[4] + ps[5]) / 2, atol=TOL)
    # slower arrivals move the playout back by the same amount
    late = DeadReckoner(H, "interp", interp_delay=0.1, history=3)
    for k in range(3):
        late.update("a", A0 + 0.1 * k, ps[k], z, A0 + 0.1 * k + 0.15)
    np.testing.assert_allclose(late.position_at("a", A0 + 0.40), (ps[1] + ps[2]) / 2, atol=TOL)


# ---------------------------------------------------------------------------------------
# Scenario: the plumbing ranks the methods as it should on a curve


def test_scenario_circle_true_future_beats_cv_beats_hold():
    r, speed, latency, tick = 5.0, 1.5, 0.1, 0.05
    w = speed / r
    horizons = np.round(np.arange(1, 11) * 0.1, 10)

    def truth(t):
        t = np.asarray(t, dtype=float) - A0
        return np.stack([r * np.cos(w * t), r * np.sin(w * t), np.zeros_like(t)], axis=-1)

    anchors = A0 + np.arange(0, 12.0, tick)
    renders = A0 + np.arange(1.0, 11.0, 1 / 30)
    errs = {}
    for mode in ("gru", "cv", "hold", "interp"):
        dr = DeadReckoner(horizons, mode)
        j, e = 0, []
        for t in renders:
            while j < len(anchors) and anchors[j] + latency <= t:
                a = anchors[j]
                p = truth(a)
                dr.update("b", a, p, truth(a + horizons) - p, a + latency)
                j += 1
            e.append(np.linalg.norm(dr.position_at("b", t) - truth(t)))
        errs[mode] = float(np.mean(e))
    assert errs["gru"] < 0.5 * errs["cv"]
    assert errs["cv"] < 0.2 * errs["hold"]
    assert errs["hold"] > speed * latency  # at least the latency's worth behind
    assert errs["interp"] > speed * latency
