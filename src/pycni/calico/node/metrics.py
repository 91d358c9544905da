"""calico-node's Prometheus metrics (prometheus-client), off unless
FELIX_PROMETHEUSMETRICSENABLED=true, served on FELIX_PROMETHEUSMETRICSHOST (all addresses
when empty):FELIX_PROMETHEUSMETRICSPORT (9091), as felix serves its own. Felix's names where
felix has the metric; calico_node_* for the rest. Components may register their own metrics
in `registry` (NodeContext.registry), e.g. the policy component's programming latency.
prometheus-client is imported only when metrics are on: it comes with `pycni[calico]`. The
address is bound before calico-node registers the node or starts anything (main.py): an
address in use is an error at start, with nothing configured.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from pycni import metrics
from pycni.metrics import MetricsError

__all__ = ["Metrics", "MetricsError"]


class Metrics(metrics.DaemonMetrics):
    SETTING = "FELIX_PROMETHEUSMETRICSHOST / FELIX_PROMETHEUSMETRICSPORT"
    EXTRA = "calico"

    def __init__(self) -> None:
        super().__init__()
        Counter, Gauge = self.prometheus.Counter, self.prometheus.Gauge
        r = self.registry
        self.local_endpoints = Gauge("felix_active_local_endpoints", "Number of active endpoints on this host.", registry=r)
        self.cluster_hosts = Gauge("felix_cluster_num_hosts", "Total number of Calico hosts in the cluster.", registry=r)
        self.cluster_endpoints = Gauge(
            "felix_cluster_num_workload_endpoints", "Total number of workload endpoints in the cluster.", registry=r
        )
        self.resyncs = FelixCounter(
            self.prometheus, "felix_resyncs_started", "Number of times Felix has started resyncing with the datastore.", r
        )
        self.dataplane_failures = FelixCounter(
            self.prometheus, "felix_int_dataplane_failures", "Number of times dataplane updates failed and will be retried.", r
        )
        # felix's: one update from the datastore applied to the whole dataplane (every component:
        # routes, policy, NAT); calico_node_policy_apply_seconds is the policy table's share.
        self.apply_time = self.prometheus.Summary(
            "felix_int_dataplane_apply_time_seconds", "Time in seconds that it took to apply a dataplane update.", registry=r
        )
        self.routes = Gauge("calico_node_routes", "Routes calico-node has programmed, by kind.", ["kind"], registry=r)
        # Calico's BGP metric (calico-node's BIRD statistics): its name, labels and values.
        self.bgp_peers = Gauge(
            "bgp_peers", "Total number of peers with a specific BGP connection status.", ["ip_version", "status"], registry=r
        )
        self.datastore_errors = Counter("calico_node_datastore_errors", "Failed datastore requests and lost watches.", registry=r)
        self.component_errors = Counter(
            "calico_node_component_errors", "Failures of a dataplane component.", ["component"], registry=r
        )

    def dataplane_applied(self, seconds: float) -> None:
        self.apply_time.observe(seconds)

    def datastore_error(self) -> None:
        self.datastore_errors.inc()

    def component_error(self, name: str) -> None:
        self.dataplane_failures.inc()
        self.component_errors.labels(component=name).inc()


class FelixCounter:
    """A counter under felix's own name. prometheus-client exposes a Counter as NAME_total;
    felix's Go client exposes NAME, and that is what dashboards and alerts query. So the
    series is served untyped (OpenMetrics "unknown"), which rate() and increase() read alike."""

    def __init__(self, prometheus: Any, name: str, documentation: str, registry: Any) -> None:
        self._family = prometheus.metrics_core.UnknownMetricFamily
        self.name, self.documentation = name, documentation
        self._value = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    def describe(self) -> Iterator[Any]:
        yield self._family(self.name, self.documentation)

    def collect(self) -> Iterator[Any]:
        with self._lock:
            value = self._value
        yield self._family(self.name, self.documentation, value=value)
