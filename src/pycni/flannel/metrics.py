"""flanneld's Prometheus metrics, off unless `--metrics-address HOST:PORT` (or
FLANNELD_METRICS_ADDRESS) is given; separate from the healthz server, as Calico keeps felix's
metrics port apart from its health port.

flannel itself has no Prometheus metrics, so the names are pycni's, under `flannel_`: the
subnet leases in etcd, the routes flanneld keeps, each dataplane pass (its time, its
failures), the lease's expiry and its renewals. prometheus-client is imported only with
metrics on (`pip install 'pycni[metrics]'`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from pycni import metrics
from pycni.metrics import MetricsError

if TYPE_CHECKING:
    from pycni.flannel.kernel import Outcome, Wanted
    from pycni.flannel.watcher import LeaseWatcher

__all__ = ["FlannelMetrics", "MetricsError"]


class Daemon(Protocol):
    """What the metrics read from flanneld's daemon (daemon.Flanneld, which imports this module)."""

    metrics: FlannelMetrics | None
    watcher: LeaseWatcher
    expires: float  # time.monotonic() when its lease expires


class FlannelMetrics(metrics.DaemonMetrics):
    SETTING = "--metrics-address / FLANNELD_METRICS_ADDRESS"

    def __init__(self) -> None:
        super().__init__()
        p, r = self.prometheus, self.registry
        self.leases = p.Gauge("flannel_subnet_leases", "Subnet leases in etcd, this node's included.", registry=r)
        self.routes = p.Gauge(
            "flannel_routes", "Routes flanneld keeps to other nodes' subnets, by IP version.", ["ip_version"], registry=r
        )
        self.syncs = p.Histogram(
            "flannel_dataplane_sync_duration_seconds", "Time of one pass comparing the kernel with the leases.",
            buckets=metrics.HISTOGRAM_BUCKETS, registry=r,
        )  # fmt: skip
        self.changes = p.Counter(
            "flannel_dataplane_changes", "Kernel objects (devices, neighbours, FDB entries, routes) written or removed.",
            ["action"], registry=r,
        )  # fmt: skip
        self.failures = p.Counter(
            "flannel_dataplane_failures", "Dataplane passes that failed in part or whole (retried).", registry=r
        )
        self.expiry = p.Gauge(
            "flannel_lease_expiry_timestamp_seconds", "When this node's lease expires (Unix time; +Inf for a reservation).",
            registry=r,
        )  # fmt: skip
        self.renewals = p.Counter("flannel_lease_renewals", "Renewals of this node's lease.", registry=r)
        self.renewal_failures = p.Counter(
            "flannel_lease_renewal_failures", "Renewals of this node's lease that failed (retried in a minute).", registry=r
        )

    def attach(self, daemon: Daemon) -> None:
        """Gauges read from the daemon at each scrape, and its hooks."""
        daemon.metrics = self
        self.leases.set_function(lambda: len(daemon.watcher.snapshot()))
        self.expiry.set_function(lambda: time.time() + (daemon.expires - time.monotonic()))

    # -- hooks in the daemon ----------------------------------------------------------
    def synced(self, wanted: Wanted, outcome: Outcome, seconds: float, versions: tuple[int, ...]) -> None:
        self.syncs.observe(seconds)
        for version in versions:
            count = sum(1 for route in wanted.routes if route.dst.version == version)
            self.routes.labels(ip_version=str(version)).set(count)
        self.changes.labels(action="written").inc(outcome.written)
        self.changes.labels(action="deleted").inc(outcome.deleted)
        if outcome.failures:
            self.failures.inc()
