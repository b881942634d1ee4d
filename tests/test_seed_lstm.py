import functools

import numpy as np
import pytest
import torch

from training.baselines import horizon_errors, segment_ids
from training.datasets import Track
from training.seed_lstm import (
    FORMAT,
    SeedConfig,
    SeedLSTM,
    SeedLSTMPredictor,
    load_seed,
    main,
    make_examples,
    save_seed,
    train_seed,
    window_ends,
)
from training.simulate import simulate

H = (0.2, 0.5, 1.0)
OBS = 5


def reset_track():
    """A 10 Hz walk with a 2 s gap before sample 40 and a 50 m teleport at sample 80."""
    t = np.arange(120) / 10.0
    t[40:] += 2.0
    p = np.stack([1.2 * t, np.sin(t), 0.3 + 0.01 * t], axis=1)
    p[80:] += np.array([50.0, 0.0, 0.0])
    return t, p


def untrained(obs=OBS, horizons=H) -> SeedLSTMPredictor:
    torch.manual_seed(7)
    cfg = SeedConfig(obs=obs, hidden=16, horizons=horizons)
    return SeedLSTMPredictor(SeedLSTM(16, 1, len(horizons)), [5.0, -1.0], [10.0, 3.0], cfg)


def hold_rows(t, p, obs):
    seg = segment_ids(t, p)
    since = np.arange(len(t)) - np.searchsorted(seg, seg, side="left")
    return since < obs - 1


def test_window_ends_restart_at_resets():
    t, p = reset_track()
    assert segment_ids(t, p)[[0, 40, 80]].tolist() == [0, 1, 2]  # the fixture's resets
    ends = window_ends(t, p, OBS)
    expected = [k for k in range(120) if k % 40 >= OBS - 1]
    assert ends.tolist() == expected
    assert window_ends(t[:3], p[:3], OBS).size == 0
    assert window_ends(t, p, 1).tolist() == list(range(120))


def test_shape_dtype_z_and_hold_rule():
    t, p = reset_track()
    pred = untrained()
    out = pred(t, p, np.array(H))
    assert out.shape == (120, len(H), 3) and out.dtype == np.float64
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[..., 2], np.repeat(p[:, 2:3], len(H), axis=1))
    held = hold_rows(t, p, OBS)
    assert held.sum() == 3 * (OBS - 1)
    np.testing.assert_array_equal(out[held], np.repeat(p[held, None, :], len(H), axis=1))
    # the model rows are not a hold (an untrained net is nowhere near the last position)
    assert np.all(np.abs(out[~held, :, :2] - p[~held, None, :2]).max(axis=(1, 2)) > 1e-3)


def test_short_and_empty_tracks_hold():
    pred = untrained()
    t = np.arange(3) / 10.0
    p = np.array([[0.0, 0.0, 1.0], [0.1, 0.0, 1.0], [0.2, 0.0, 1.0]])
    np.testing.assert_array_equal(pred(t, p, H), np.repeat(p[:, None], len(H), axis=1))
    assert pred(np.zeros(0), np.zeros((0, 3)), H).shape == (0, len(H), 3)


def test_causal():
    t, p = reset_track()
    pred = untrained()
    base = pred(t, p, H)
    for j in (10, 45, 100):
        q = p.copy()
        q[j, :2] += [0.3, -0.2]  # small change: same segments
        out = pred(t, q, H)
        np.testing.assert_allclose(out[:j], base[:j], rtol=0, atol=1e-6)
        assert np.abs(out[j] - base[j]).max() > 1e-4  # and it can fail: row j does change
        q[j:, 0] += 100.0  # a teleport at j: a new segment, later rows hold
        np.testing.assert_allclose(pred(t, q, H)[:j], base[:j], rtol=0, atol=1e-6)
        u = t.copy()
        u[j:] += 5.0  # a time gap at j
        np.testing.assert_allclose(pred(u, p, H)[:j], base[:j], rtol=0, atol=1e-6)


def test_ignores_timestamps_within_a_segment():
    t, p = reset_track()
    pred = untrained()
    u = t.copy()
    u[1:40] += np.linspace(0.0, 0.02, 39)  # different timing, same resets
    np.testing.assert_allclose(pred(u, p, H), pred(t, p, H), rtol=0, atol=1e-9)


def test_horizon_mismatch_raises():
    t, p = reset_track()
    pred = untrained()
    with pytest.raises(ValueError, match="horizons"):
        pred(t, p, np.array([0.2, 0.5]))
    with pytest.raises(ValueError, match="horizons"):
        pred(t, p, np.array([0.2, 0.5, 0.9]))
    with pytest.raises(ValueError, match="horizons"):
        pred.many([], np.array([1.0]))
    with pytest.raises(ValueError):
        pred(t, p[:, :2], H)  # malformed p


def test_many_matches_single_calls():
    t, p = reset_track()
    pred = untrained()
    streams = [(t, p), (t[:50], p[:50] * 0.5), (t[:2], p[:2])]
    for (tt, pp), out in zip(streams, pred.many(streams, H), strict=True):
        np.testing.assert_allclose(out, pred(tt, pp, H), rtol=0, atol=1e-6)


def test_make_examples_targets_and_masks():
    t = np.arange(30) / 10.0
    truth = np.stack([t, 2 * t, np.zeros_like(t)], axis=1)
    tr = Track("a", t, truth.copy(), truth_t=t.copy(), truth_p=truth.copy())
    mean, std = np.array([1.0, 2.0]), np.array([2.0, 4.0])
    x, y, m = make_examples([tr], OBS, np.array(H), mean, std)
    n = 30 - (OBS - 1)
    assert x.shape == (n, OBS, 2) and y.shape == (n, len(H), 2) and m.shape == (n, len(H))
    np.testing.assert_allclose(x[0], (truth[:OBS, :2] - mean) / std, atol=1e-6)
    k = OBS - 1 + 3  # window ending at sample 7, horizon 0.5 s → truth at t = 1.2
    np.testing.assert_allclose(y[3, 1], (np.array([1.2, 2.4]) - mean) / std, atol=1e-6)
    assert t[k] + H[-1] <= t[-1] and m[3].all()
    assert not m[-1].any() and np.all(y[-1] == 0)  # past the end: masked
    # a teleport ahead is masked, not trained on
    jump = tr.truth_p.copy()
    jump[20:, 0] += 100.0
    tj = Track("b", t, jump.copy(), truth_t=t.copy(), truth_p=jump)
    _, _, mj = make_examples([tj], OBS, np.array(H), mean, std)
    end = OBS - 1 + np.arange(mj.shape[0])
    assert not mj[(end < 20) & (end >= 15)][:, -1].any()  # 1 s ahead crosses the jump


@functools.cache
def _tiny_tracks() -> tuple[Track, ...]:
    return tuple(simulate(5, 8.0, seed=5))


def tiny_tracks() -> list[Track]:
    return list(_tiny_tracks())


def tiny_cfg(**kw):
    return SeedConfig(obs=4, hidden=8, epochs=2, batch=128, seed=3, val_frac=0.25, **kw)


def test_tiny_training_writes_loadable_checkpoint(tmp_path):
    out = tmp_path / "sub" / "seed.pt"
    logs = []
    pred, summary = train_seed(tiny_cfg(), tiny_tracks(), out=out, log=logs.append)
    assert out.is_file() and [f.name for f in out.parent.iterdir()] == ["seed.pt"]
    assert len(summary["history"]) == 2 and np.isfinite(summary["val_mse"])
    assert summary["train_windows"] > 0 and summary["val_windows"] > 0
    assert any("epoch 2/2" in s and "val mse" in s for s in logs)
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == FORMAT and raw["config"]["obs"] == 4
    loaded = load_seed(out)
    assert loaded.config == pred.config
    tr = tiny_tracks()[0]
    h = loaded.horizons
    paths = loaded(tr.t, tr.p, h)
    assert paths.shape == (len(tr.t), h.size, 3) and np.all(np.isfinite(paths))
    np.testing.assert_array_equal(paths, pred(tr.t, tr.p, h))  # round trip: identical
    err = horizon_errors(tr, paths, h)
    assert np.nanmax(err) < 1e3


def test_training_is_deterministic_and_seed_matters():
    a, _ = train_seed(tiny_cfg(), tiny_tracks(), log=None)
    b, _ = train_seed(tiny_cfg(), tiny_tracks(), log=None)
    c, _ = train_seed(tiny_cfg(lr=1e-3 * 1.5), tiny_tracks(), log=None)
    sa, sb, sc = (x.model.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_save_load_roundtrip_untrained(tmp_path):
    pred = untrained()
    save_seed(pred, tmp_path / "u.pt")
    back = load_seed(tmp_path / "u.pt")
    t, p = reset_track()
    np.testing.assert_array_equal(back(t, p, H), pred(t, p, H))
    np.testing.assert_array_equal(back.mean, pred.mean)
    assert back.config.horizons == H


def test_load_rejects_other_checkpoints(tmp_path):
    torch.save({"format": "gru", "state_dict": {}}, tmp_path / "g.pt")
    with pytest.raises(ValueError, match="seed-lstm"):
        load_seed(tmp_path / "g.pt")


def test_cli_on_csv(tmp_path, capsys):
    rows = ["user_id,timestamp,x,y"]
    for u in range(6):
        for k in range(40):
            rows.append(f"u{u},{k * 0.1:.1f},{u + 0.8 * k * 0.1:.3f},{np.sin(k * 0.1 + u):.3f}")
    csv = tmp_path / "logs.csv"
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "cli.pt"
    rc = main(["--out", str(out), "--data", str(csv), "--epochs", "1", "--obs", "4"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "epoch 1/1" in text and f"wrote {out}" in text
    pred = load_seed(out)
    assert pred.config.obs == 4 and pred.config.epochs == 1
    assert torch.load(out, weights_only=True)["data"] == [str(csv)]
    with pytest.raises(SystemExit) as e:  # one line naming the file, exit 1 (server.cli)
        main(["--out", str(out), "--data", str(tmp_path / "missing.csv")])
    assert e.value.code == 1 and "missing.csv" in capsys.readouterr().err


def test_config_validation():
    with pytest.raises(ValueError):
        SeedConfig(obs=0).validate()
    with pytest.raises(ValueError):
        SeedConfig(horizons=()).validate()
    with pytest.raises(ValueError):
        SeedConfig(lr=0).validate()
