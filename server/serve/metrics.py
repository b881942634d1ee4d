"""Prometheus metrics of one server process: counters, gauges and histograms.

`Metrics(server)` registers a collector that reads the server's `Stats`, world and cluster
membership at scrape time (nothing is computed on the hot path beyond the counters), plus
the tick and model-step histograms and the model info gauge the tick loop updates.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)

from server.core import protocol as P
from server.core.blend import EXPERTS
from server.core.engine import TickEngine
from server.core.stats import Stats
from server.core.world import World

if TYPE_CHECKING:
    from server.cluster.member import ClusterMember

_MS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12.5, 15, 20, 25, 30, 40, 50, 75, 100)
TICK_BUCKETS = tuple(ms / 1000 for ms in _MS[1:]) + (0.25, 0.5, 1.0)
STEP_BUCKETS = tuple(ms / 1000 for ms in _MS)


class MetricsSource(Protocol):
    """What the metrics read of the server at scrape time."""

    stats: Stats
    world: World | None
    cluster: ClusterMember | None
    n_connections: int


WEIGHT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _expert_weights(engine: TickEngine) -> object:
    """The blend's weight of each expert over the avatars now (averaged over horizons)."""
    from prometheus_client.core import GaugeHistogramMetricFamily

    fam = GaugeHistogramMetricFamily(
        "avatar_expert_weight",
        "Avatars by the weight the online blend gives each expert now (server.core.blend)",
        labels=["expert"],
    )
    slots = engine.live_slots()
    weights = engine.predictions().weights[slots]
    for e, name in enumerate(EXPERTS):
        counts = np.searchsorted(np.sort(weights[:, e]), WEIGHT_BUCKETS, side="right")
        buckets = [(f"{b:g}", int(c)) for b, c in zip(WEIGHT_BUCKETS, counts, strict=True)]
        buckets.append(("+Inf", len(slots)))
        fam.add_metric([name], buckets, gsum_value=float(weights[:, e].sum()))
    return fam


class _StatsCollector:
    """The counters and gauges read at scrape time from the server's own tables."""

    def __init__(self, server: MetricsSource) -> None:
        self.server = server

    def collect(self) -> Iterator[object]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s, w = self.server.stats, self.server.world
        for name, doc, value in (
            ("avatar_frames_in", "WebSocket frames received", s.frames_in),
            ("avatar_bytes_in", "Bytes of WebSocket payload received", s.bytes_in),
            ("avatar_frames_out", "WebSocket frames sent", s.frames_out),
            ("avatar_bytes_out", "Bytes of WebSocket payload sent", s.bytes_out),
            ("avatar_frames_dropped", "State frames dropped for slow clients", s.dropped),
            ("avatar_tick_overruns", "Tick deadlines missed", s.overruns),
            ("avatar_ticks", "Ticks run", s.ticks),
            ("avatar_tick_errors", "Ticks that raised (logged)", s.tick_errors),
            ("avatar_messages_rate_dropped", "Messages dropped by the rate limit", s.rate_dropped),
            ("avatar_origin_refused", "Handshakes refused for their Origin", s.origin_refused),
            ("avatar_resumed", "Reconnects that resumed their avatar", s.resumed),
            ("avatar_replaced", "Connections replaced by a newer one", s.replaced),
            ("avatar_expired", "Detached avatars removed after the grace period", s.expired),
            ("avatar_model_reloads", "Model reloads applied", s.reloads_ok),
            ("avatar_model_reloads_failed", "Model reloads refused", s.reloads_failed),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        errors = CounterMetricFamily(
            "avatar_protocol_errors", "Protocol errors by code", labels=["code"]
        )
        for code in P.ERROR_CODES:
            errors.add_metric([code], s.errors.get(code, 0))
        yield errors
        records = CounterMetricFamily(
            "avatar_state_records",
            "Avatar records sent in state frames, by the viewer's protocol version",
            labels=["version"],
        )
        for v in P.VERSIONS:
            records.add_metric([str(v)], w.fanout.records_sent.get(v, 0) if w else 0)
        yield records
        yield CounterMetricFamily(
            "avatar_state_frames_skipped",
            "Ticks on which a v2 client got no state frame: nothing in its view was due",
            value=w.fanout.frames_skipped if w else 0,
        )
        yield CounterMetricFamily(
            "avatar_dr_resends",
            "Avatar records due by the downlink dead-reckoning rule (off path, heartbeat, new)",
            value=w.fanout.dr_resends if w else 0,
        )
        conns = GaugeMetricFamily("avatar_connections", "Open connections by kind", labels=["kind"])
        n_players = w.n_players - w.n_detached if w else 0
        n_spect = w.n_spectators if w else 0
        conns.add_metric(["player"], n_players)
        conns.add_metric(["spectator"], n_spect)
        conns.add_metric(["pending"], self.server.n_connections - n_players - n_spect)
        yield conns
        yield GaugeMetricFamily(
            "avatar_detached",
            "Avatars waiting for a resume (connection dropped, within the grace period)",
            value=w.n_detached if w else 0,
        )
        yield GaugeMetricFamily(
            "avatar_avatars", "Avatars in the engine", value=len(w.engine) if w else 0
        )
        if w is not None and w.engine.blend is not None and w.engine.model is not None:
            yield _expert_weights(w.engine)
        yield GaugeMetricFamily(
            "avatar_rooms", "Rooms with members", value=len(w.rooms) if w else 0
        )
        c = self.server.cluster
        if c is not None:  # a cluster worker (--redis)
            yield GaugeMetricFamily(
                "avatar_directory_available",
                "1 while the room directory (Redis) answers, 0 while it does not",
                value=1.0 if c.available else 0.0,
            )
            yield GaugeMetricFamily(
                "avatar_cluster_workers",
                "Live workers taking rooms in this worker's view (its last heartbeat)",
                value=len(c.peers),
            )
            for name, doc, value in (
                ("avatar_directory_errors", "Room directory calls that failed", c.directory.errors),
                (
                    "avatar_directory_outages",
                    "Times the room directory became unreachable",
                    c.outages,
                ),
                (
                    "avatar_hellos_moved",
                    "Hellos answered with moved (room served elsewhere)",
                    c.moved,
                ),
                (
                    "avatar_clients_moved_away",
                    "Clients closed with 4001 to look their room up again (drain, room lost)",
                    c.moved_away,
                ),
                (
                    "avatar_hellos_refused_no_directory",
                    "Hellos for new rooms refused while the directory was unreachable",
                    c.refused,
                ),
            ):
                yield CounterMetricFamily(name, doc, value=value)


class Metrics:
    """The server's registry: its counters (read at scrape time), the tick and step
    histograms and the model info gauge."""

    def __init__(self, server: MetricsSource) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(server))
        self.tick_seconds = Histogram(
            "avatar_tick_seconds",
            "Tick duration: input flush, model step, fan-out and socket writes",
            buckets=TICK_BUCKETS,
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "avatar_model_step_seconds",
            "Engine step (features, GRU, decode) per tick",
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.info = Gauge(
            "avatar_server_info",
            "Constant 1, labelled with the model version and device",
            ["model", "device"],
            registry=self.registry,
        )

    def set_model(self, version: str, device: str) -> None:
        """Label the info gauge with the model now serving."""
        self.info.clear()
        self.info.labels(version, device).set(1)

    def exposition(self) -> tuple[str, bytes]:
        """The content type and body of a /metrics scrape."""
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)
