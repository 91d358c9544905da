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
        self.resyncs = Counter(
            "felix_resyncs_started", "Number of times Felix has started resyncing with the datastore.", registry=r
        )
        self.routes = Gauge("calico_node_routes", "Routes calico-node has programmed, by kind.", ["kind"], registry=r)
        self.bgp_peers = Gauge(
            "calico_node_bgp_peers", "BGP peers of this node's BIRD, by state.", ["ip_version", "state"], registry=r
        )
        self.datastore_errors = Counter("calico_node_datastore_errors", "Failed datastore requests and lost watches.", registry=r)
        self.component_errors = Counter(
            "calico_node_component_errors", "Failures of a dataplane component.", ["component"], registry=r
        )

    def datastore_error(self) -> None:
        self.datastore_errors.inc()

    def component_error(self, name: str) -> None:
        self.component_errors.labels(component=name).inc()
