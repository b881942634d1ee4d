"""`python -m client_demo` end to end: an embedded server, bots, every method compared."""

import json
import math

from client_demo.__main__ import main
from client_demo.scoring import METHODS


def check_comparison(out: dict, bots: int) -> None:
    """Every method scored, on the same draws (equal n), and a downlink for each."""
    for key in ("render_error", "render_error_all"):
        assert list(out[key]) == list(METHODS) == ["gru", "kalman", "cv", "interp", "hold"]
        ns = {m: out[key][m]["n"] for m in METHODS}
        assert len(set(ns.values())) == 1 and ns["gru"] > 0, ns  # one row of errors per draw
    for m in METHODS:
        e = out["render_error"][m]
        assert math.isfinite(e["mean"]) and e["p95"] >= e["mean"] >= 0, (m, e)
    assert out["render_error_all"]["gru"]["n"] >= out["render_error"]["gru"]["n"]
    down = out["downlink"]
    assert list(down) == list(METHODS)
    assert down["gru"]["feed"] == f"v{out['protocol']}"
    relay = down["cv"]
    assert all(down[m] == relay for m in METHODS[1:]) and relay["feed"] == "relay"
    for d in down.values():
        assert d["kB_per_s"] > 0 and d["records_per_s"] > 0, down
    # the relay: every avatar of the view in a frame every 20 Hz tick, 20 bytes a record
    # plus about 60 of framing (and the view's join/leave)
    assert relay["records_per_s"] > 0.8 * bots * 20, relay
    framing = relay["kB_per_s"] * 1000 - 20 * relay["records_per_s"]
    assert 50 * 20 < framing < 100 * 20, relay
    assert out["downlink_records_per_s"] == down["gru"]["records_per_s"]
    assert out["kalman"]["q"] > 0 and out["kalman"]["r"] > 0


def test_demo_runs_end_to_end_and_writes_json(tmp_path, capsys):
    out_file = tmp_path / "demo.json"
    out = main(
        ["--port", "0", "--bots", "4", "--duration", "2", "--warmup", "0.5", "--send-rate",
         "10", "--latency", "0.05", "--json", str(out_file), "--quiet", "--protocol", "1"]
    )  # fmt: skip
    assert "viewer: http://127.0.0.1:" in capsys.readouterr().out
    saved = json.loads(out_file.read_text())
    assert out == saved and saved["bots"] == 4 and saved["protocol"] == 1
    check_comparison(saved, 4)
    assert 5 < saved["uplink_msgs_per_s"] <= 12  # a 10 Hz fixed rate
    assert saved["kalman"]["tuned"]  # tuned as the offline evaluation tunes it
    # v1: every bot sees all 4 in every 20 Hz frame, with the paths: more than the relay
    assert saved["downlink_records_per_s"] > 0.8 * 4 * 20
    assert saved["downlink"]["gru"]["kB_per_s"] > saved["downlink"]["cv"]["kB_per_s"]


def test_demo_on_protocol_2_compares_every_method_on_the_same_draws():
    out = main(
        ["--port", "0", "--bots", "4", "--duration", "2.5", "--warmup", "0.5", "--send-rate",
         "10", "--latency", "0.05", "--quiet", "--kalman-q", "100", "--kalman-r", "0.001"]
    )  # fmt: skip
    assert out["protocol"] == 2
    check_comparison(out, 4)
    assert out["kalman"] == {"q": 100.0, "r": 0.001, "tuned": False}
    assert out["render_error"]["gru"]["mean"] < 1.0
    # a record only for a new sample that left its path (or a heartbeat): at most the
    # 10 Hz samples of 4 avatars, where the relay sends 4 x 20 a second
    gru, relay = out["downlink"]["gru"], out["downlink"]["kalman"]
    assert 0 < gru["records_per_s"] <= 0.6 * 4 * 20 < relay["records_per_s"]


def test_threshold_policy_sends_less_than_its_max_rate(tmp_path):
    out = main(
        ["--port", "0", "--bots", "3", "--duration", "2", "--warmup", "1", "--send-policy",
         "threshold", "--threshold", "0.2", "--quiet", "--kalman-q", "10", "--kalman-r", "0.01"]
    )  # fmt: skip
    assert 0 < out["uplink_msgs_per_s"] < 30
