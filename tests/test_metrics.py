"""Prometheus metrics of one server (server.serve.metrics): `Metrics(source).exposition()`
over a hand-made source, and end to end on a real server (127.0.0.1, port 0) per transport."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.core import protocol as P
from server.core.blend import EXPERTS
from server.core.engine import TickEngine
from server.core.stats import Stats
from server.core.world import World
from server.serve.metrics import Metrics
from tests.app_helpers import Client, fetch
from tests.servers import running
from tests.world_helpers import hello


def scrape(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value of one exposition."""
    kind, body = metrics.exposition()
    assert kind.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }


def source(**kw) -> SimpleNamespace:
    return SimpleNamespace(
        **{"stats": Stats(), "world": None, "cluster": None, "n_connections": 0, **kw}
    )


# -- Metrics on its own --------------------------------------------------------------------


def test_exposition_has_the_counters_of_the_stats():
    stats = Stats(
        frames_in=7, bytes_in=700, frames_out=11, bytes_out=1100, dropped=3, overruns=2,
        ticks=50, tick_errors=1, rate_dropped=4, origin_refused=5, resumed=6, replaced=8,
        expired=9, reloads_ok=10, reloads_failed=12, errors={"too_slow": 2, "bad_msgpack": 1},
    )  # fmt: skip
    got = scrape(Metrics(source(stats=stats, n_connections=2)))
    for name, value in {
        "avatar_frames_in_total": 7, "avatar_bytes_in_total": 700,
        "avatar_frames_out_total": 11, "avatar_bytes_out_total": 1100,
        "avatar_frames_dropped_total": 3, "avatar_tick_overruns_total": 2,
        "avatar_ticks_total": 50, "avatar_tick_errors_total": 1,
        "avatar_messages_rate_dropped_total": 4, "avatar_origin_refused_total": 5,
        "avatar_resumed_total": 6, "avatar_replaced_total": 8, "avatar_expired_total": 9,
        "avatar_model_reloads_total": 10, "avatar_model_reloads_failed_total": 12,
    }.items():  # fmt: skip
        assert got[(name, ())] == value, name
    errors = {k[1][0][1]: v for k, v in got.items() if k[0] == "avatar_protocol_errors_total"}
    assert set(errors) == set(P.ERROR_CODES)  # every code, 0 until it happens
    assert errors["too_slow"] == 2 and errors["bad_msgpack"] == 1
    assert sum(errors.values()) == 3
    # no world yet: zero gauges; every open connection is pending
    assert got[("avatar_avatars", ())] == 0 and got[("avatar_rooms", ())] == 0
    assert got[("avatar_connections", (("kind", "pending"),))] == 2
    assert not any(k[0].startswith("avatar_directory") for k in got)  # not a cluster worker


def test_counters_are_read_at_scrape_time():
    stats = Stats()
    metrics = Metrics(source(stats=stats))
    assert scrape(metrics)[("avatar_ticks_total", ())] == 0
    stats.ticks = 3
    stats.errors["too_slow"] = 1
    got = scrape(metrics)
    assert got[("avatar_ticks_total", ())] == 3
    assert got[("avatar_protocol_errors_total", (("code", "too_slow"),))] == 1


def test_world_gauges_connections_and_cluster_counters():
    world = World(TickEngine(None, device="cpu", capacity=2))
    a = world.admit(hello(room="r", avatar="a"), 0.0)
    world.admit(hello(room="r", avatar="b"), 0.0)
    world.admit(hello(room="s"), 0.0)
    world.begin_tick()
    world.detach(a, 1.0)
    cluster = SimpleNamespace(
        available=False, peers=[("p1", "ws://a/", 0.5), ("p2", "ws://b/", 0.1)],
        directory=SimpleNamespace(errors=4), outages=2, moved=5, moved_away=6, refused=7,
    )  # fmt: skip
    got = scrape(Metrics(source(world=world, cluster=cluster, n_connections=4)))
    conns = {k[1][0][1]: v for k, v in got.items() if k[0] == "avatar_connections"}
    assert conns == {"player": 1, "spectator": 1, "pending": 2}
    assert got[("avatar_detached", ())] == 1 and got[("avatar_avatars", ())] == 2
    assert got[("avatar_rooms", ())] == 2
    assert got[("avatar_directory_available", ())] == 0.0
    assert got[("avatar_cluster_workers", ())] == 2
    for name, value in {
        "avatar_directory_errors_total": 4, "avatar_directory_outages_total": 2,
        "avatar_hellos_moved_total": 5, "avatar_clients_moved_away_total": 6,
        "avatar_hellos_refused_no_directory_total": 7,
    }.items():  # fmt: skip
        assert got[(name, ())] == value, name


def test_info_gauge_names_the_model_serving_now_and_histograms_observe():
    metrics = Metrics(source())
    metrics.set_model("m1", "cpu")
    metrics.set_model("m2", "cuda:0")
    metrics.tick_seconds.observe(0.004)
    metrics.step_seconds.observe(0.0005)
    got = scrape(metrics)
    info = {k: v for k, v in got.items() if k[0] == "avatar_server_info"}
    assert info == {("avatar_server_info", (("device", "cuda:0"), ("model", "m2"))): 1.0}
    assert got[("avatar_tick_seconds_count", ())] == 1
    assert got[("avatar_tick_seconds_bucket", (("le", "0.005"),))] == 1
    assert got[("avatar_tick_seconds_bucket", (("le", "0.003"),))] == 0
    assert got[("avatar_model_step_seconds_sum", ())] == pytest.approx(0.0005)


# -- end to end ----------------------------------------------------------------------------


@pytest.mark.usefixtures("transport")
async def test_metrics_name_the_counters_gauges_and_histograms():
    async with running() as srv:
        c = await Client.open(srv, avatar="a")
        await c.pos(0, 1.0, (0, 0))
        await c.state_where(lambda s: len(s) == 1)
        body = await fetch(srv, "/metrics")
        for name in (
            'avatar_connections{kind="player"} 1.0',
            "avatar_avatars 1.0",
            "avatar_tick_seconds_bucket",
            "avatar_model_step_seconds_count",
            "avatar_ticks_total",
            "avatar_frames_out_total",
            "avatar_bytes_in_total",
            "avatar_tick_overruns_total",
            "avatar_frames_dropped_total",
            'avatar_server_info{device="cpu"',
        ):
            assert name in body, name
        await c.close()


@pytest.mark.usefixtures("transport")
async def test_metrics_show_the_blend_weights_per_expert():
    """/metrics has a gauge histogram per expert of the weights the blend gives the avatars
    now; every avatar counted once per expert, and the weights of one avatar sum to 1."""
    async with running() as srv:
        a = await Client.open(srv, avatar="a")
        b = await Client.open(srv, avatar="b")
        for k in range(8):
            await a.pos(k, 0.05 * k, (0.1 * k, 0, 0))
            await b.pos(k, 0.05 * k, (0, 0.1 * k, 0))
        await a.state_where(lambda s: len(s) == 2 and (s.seq == 7).all())
        body = await fetch(srv, "/metrics")
        total = 0.0
        for name in EXPERTS:
            assert f'avatar_expert_weight_bucket{{expert="{name}",le="+Inf"}} 2.0' in body
            line = next(
                ln
                for ln in body.splitlines()
                if ln.startswith(f'avatar_expert_weight_gsum{{expert="{name}"}}')
            )
            total += float(line.split()[-1])
        assert total == pytest.approx(2.0)  # two avatars, each's weights sum to one
        await a.close()
        await b.close()
