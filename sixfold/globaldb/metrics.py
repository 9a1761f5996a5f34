"""The replicator's Prometheus metrics (`--metrics-listen`): a secondary region's replication
lag and position, read from the replicator when scraped (nothing is counted on the shipping path).

    sixfold_replication_lag_ms{region, stat="last|p50|p99"}  primary commit durable -> readable here
    sixfold_region_vdl{region}                               this region's VDL (readers read at it)
    sixfold_primary_vdl_heard{region}                        the highest primary VDL heard of
    sixfold_region_behind_lsns{region}                       the difference
    sixfold_primary_unheard_seconds{region}                  since the primary's storage last answered
    sixfold_replicator_health{region, health}                1 for the current health (ok, catching-up, ...)
"""

from __future__ import annotations

import time
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily


class ReplicatorCollector:
    def __init__(self, replicator, region: str) -> None:
        self.r, self.region = replicator, region

    def collect(self):
        r, region = self.r, self.region
        lag = GaugeMetricFamily("sixfold_replication_lag_ms", "Replication lag: a primary commit durable in the "
                                "primary region until readable in this one (ms)", labels=["region", "stat"])
        lag.add_metric([region, "last"], r.lag_ms_last)
        lag.add_metric([region, "p50"], r.lag.percentile(0.5))
        lag.add_metric([region, "p99"], r.lag.percentile(0.99))
        yield lag
        vdl = r.mirror.vdl if r.started.is_set() else 0
        for name, text, value in (
                ("sixfold_region_vdl", "This region's VDL: its readers read at it", vdl),
                ("sixfold_primary_vdl_heard", "The highest primary VDL this region's replicator heard of",
                 r.source_vdl),
                ("sixfold_region_behind_lsns", "Primary VDL heard of minus this region's VDL",
                 max(0, r.source_vdl - vdl)),
                ("sixfold_primary_unheard_seconds", "Seconds since the primary region's storage last answered",
                 time.time() - r.source_seen_unix_s if r.source_seen_unix_s else float("nan"))):
            family = GaugeMetricFamily(name, text, labels=["region"])
            family.add_metric([region], value)
            yield family
        health = GaugeMetricFamily("sixfold_replicator_health", "1 for the replicator's current health",
                                   labels=["region", "health"])
        health.add_metric([region, r.health()], 1)
        yield health


def serve_metrics(listen: str, collector: ReplicatorCollector) -> None:
    """A Prometheus text endpoint at http://LISTEN/metrics (a daemon thread)."""
    registry = CollectorRegistry()
    registry.register(collector)
    host, port = listen.rsplit(":", 1)
    start_http_server(int(port), addr=host, registry=registry)
