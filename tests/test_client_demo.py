import json
import math

from client_demo.__main__ import METHODS, main


def test_demo_runs_end_to_end_and_writes_json(tmp_path, capsys):
    out_file = tmp_path / "demo.json"
    out = main(
        ["--port", "0", "--bots", "4", "--duration", "3", "--warmup", "1", "--send-rate", "10",
         "--latency", "0.05", "--json", str(out_file), "--quiet", "--protocol", "1"]
    )  # fmt: skip
    assert "viewer: http://127.0.0.1:" in capsys.readouterr().out
    saved = json.loads(out_file.read_text())
    assert saved["render_error"].keys() == set(METHODS)
    for m in METHODS:
        e = saved["render_error"][m]
        assert e["n"] > 0 and math.isfinite(e["mean"]) and e["p95"] >= e["mean"] >= 0
    assert 5 < saved["uplink_msgs_per_s"] <= 12  # a 10 Hz fixed rate
    assert saved["downlink_bytes_per_s"] > 0 and saved["bots"] == 4 and out == saved
    # v1: every bot sees all 4 in every 20 Hz frame
    assert saved["protocol"] == 1 and saved["downlink_records_per_s"] > 0.8 * 4 * 20


def test_demo_on_protocol_2_scores_the_paths_and_sends_fewer_records():
    out = main(
        ["--port", "0", "--bots", "4", "--duration", "3", "--warmup", "1", "--send-rate", "10",
         "--latency", "0.05", "--quiet"]
    )  # fmt: skip
    assert out["protocol"] == 2 and list(out["render_error"]) == ["gru"]
    e = out["render_error"]["gru"]
    assert e["n"] > 0 and math.isfinite(e["mean"]) and e["mean"] < 1.0
    # a record only for a new sample that left its path (or a heartbeat): at most the
    # 10 Hz samples of 4 avatars, where v1 sends 4 x 20 a second
    assert 0 < out["downlink_records_per_s"] <= 0.6 * 4 * 20


def test_threshold_policy_sends_less_than_its_max_rate(tmp_path):
    out = main(
        ["--port", "0", "--bots", "3", "--duration", "2", "--warmup", "1", "--send-policy",
         "threshold", "--threshold", "0.2", "--quiet"]
    )  # fmt: skip
    assert 0 < out["uplink_msgs_per_s"] < 30


def test_error_stats_match_numpy_in_bounded_memory():
    import numpy as np

    from client_demo.__main__ import ErrorStats

    rng = np.random.default_rng(0)
    s = ErrorStats()
    assert s.summary() == {"mean": None, "p95": None, "n": 0}
    chunks = [rng.exponential(0.2, 1000) for _ in range(20)] + [np.array([50.0])]
    for c in chunks:
        s.add(c)
    e = np.concatenate(chunks)
    out = s.summary()
    assert out["n"] == len(e) and abs(out["mean"] - e.mean()) < 1e-9
    assert abs(out["p95"] - np.percentile(e, 95)) <= 0.0011
    assert s.hist.nbytes < 200_000


def test_truth_route_serves_the_bots_of_its_room():
    import time
    from types import SimpleNamespace

    from client_demo.__main__ import Motion, truth_route

    motion = Motion(2, seed=1, world=20.0, t0=time.monotonic())
    bots = [SimpleNamespace(name=f"bot{i:02d}", index=i) for i in range(2)]
    server = SimpleNamespace(clock=lambda: 123.0)
    status, kind, body = truth_route(server, motion, bots, "/demo/truth?room=demo", "demo")
    got = json.loads(body)
    assert status == 200 and kind == "application/json" and got["server_time"] == 123.0
    assert set(got["avatars"]) == {"bot00", "bot01"}
    assert all(len(p) == 3 and all(math.isfinite(v) for v in p) for p in got["avatars"].values())
    assert truth_route(server, motion, bots, "/demo/truth?room=other", "demo")[0] == 404
