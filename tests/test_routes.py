"""`client_demo.routes`: the demo's /demo/compare and /demo/truth for the viewer."""

import json
import math

from client_demo.scoring import METHODS


def test_compare_route_serves_the_table():
    import time
    from types import SimpleNamespace

    import numpy as np

    from client_demo.routes import compare_route
    from client_demo.scoring import Meter

    meter = Meter()
    for i, m in enumerate(METHODS):
        meter.add(m, np.full(10, 0.1 * (i + 1)), np.ones(10, bool))
    client = SimpleNamespace(bytes_in=5_000, records_in=100, welcome=SimpleNamespace(v=2))
    bots = [SimpleNamespace(client=client, relay_bytes=9_000, relay_records=400, view_bytes=1_000)]
    started = [time.monotonic() - 10.0]
    status, kind, body = compare_route(meter, bots, started, "/demo/compare?room=demo", "demo")
    got = json.loads(body)
    assert status == 200 and kind == "application/json" and got["bots"] == 1
    assert got["elapsed_s"] >= 10.0
    rows = {r["method"]: r for r in got["methods"]}
    assert list(rows) == list(METHODS) and rows["gru"]["feed"] == "v2"
    assert rows["kalman"]["mean"] == 0.2 and rows["kalman"]["n"] == 10
    assert 0.49 < rows["gru"]["kB_per_s"] <= 0.5 and 9.9 < rows["gru"]["records_per_s"] <= 10
    assert 0.99 < rows["hold"]["kB_per_s"] <= 1.0 and 39 < rows["hold"]["records_per_s"] <= 40
    assert compare_route(meter, bots, started, "/demo/compare?room=x", "demo")[0] == 404
    status, _, body = compare_route(Meter(), [], [], "/demo/compare", "demo")  # not started
    assert status == 200 and all(r["n"] == 0 for r in json.loads(body)["methods"])


def test_truth_route_serves_the_bots_of_its_room():
    import time
    from types import SimpleNamespace

    from client_demo.players import Motion
    from client_demo.routes import truth_route

    motion = Motion(2, seed=1, world=20.0, t0=time.monotonic())
    bots = [SimpleNamespace(name=f"bot{i:02d}", index=i) for i in range(2)]
    server = SimpleNamespace(clock=lambda: 123.0)
    status, kind, body = truth_route(server, motion, bots, "/demo/truth?room=demo", "demo")
    got = json.loads(body)
    assert status == 200 and kind == "application/json" and got["server_time"] == 123.0
    assert set(got["avatars"]) == {"bot00", "bot01"}
    assert all(len(p) == 3 and all(math.isfinite(v) for v in p) for p in got["avatars"].values())
    assert truth_route(server, motion, bots, "/demo/truth?room=other", "demo")[0] == 404
