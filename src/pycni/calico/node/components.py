"""The components calico-node runs, in the order the loop hands them each batch.

Adding one is appending a factory to `FACTORIES`: it gets the NodeContext and the
NodeConfig and returns a Component (or None when it does not apply to this node). Order
matters only where one part needs another's kernel objects: the VXLAN device before the
routes through it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from pycni.calico import model
from pycni.calico.datastore import KV, WatchEvent
from pycni.calico.node import ipip
from pycni.calico.node.bird.component import BirdComponent
from pycni.calico.node.component import Component, NodeContext
from pycni.calico.node.config import NodeConfig
from pycni.calico.node.metrics import Metrics
from pycni.calico.node.nat import NATComponent
from pycni.calico.node.policy.component import PolicyComponent
from pycni.calico.node.routes import RoutesComponent
from pycni.calico.node.view import NODES_PREFIX
from pycni.calico.node.vxlan import VXLANComponent
from pycni.calico.resources import WORKLOAD_ENDPOINT

Factory = Callable[[NodeContext, NodeConfig], Component | None]


def _vxlan(ctx: NodeContext, cfg: NodeConfig) -> Component | None:
    return VXLANComponent(ctx, cfg.vxlan_vni, cfg.vxlan_port, cfg.vxlan_mtu) if ctx.backend != "none" else None


def _routes(ctx: NodeContext, cfg: NodeConfig) -> Component | None:
    return RoutesComponent(ctx) if ctx.backend != "none" else None


def _bird(ctx: NodeContext, cfg: NodeConfig) -> Component | None:
    if ctx.backend != "bird":
        return None
    return BirdComponent(
        ctx, cfg.confd_dir, cfg.run_dir, {4: cfg.bird_binary, 6: cfg.bird6_binary}, cfg.env.get("CALICO_ROUTER_ID", "")
    )


FACTORIES: list[Factory] = [
    _vxlan,
    _routes,
    lambda ctx, cfg: NATComponent(ctx),
    lambda ctx, cfg: PolicyComponent(ctx, cfg.policy),
    lambda ctx, cfg: ipip.IPIPComponent() if ctx.backend != "none" else None,
    _bird,
]


def build(ctx: NodeContext, cfg: NodeConfig) -> list[Component]:
    return [c for factory in FACTORIES if (c := factory(ctx, cfg)) is not None]


WEPS_PREFIX = model.resource_prefix(WORKLOAD_ENDPOINT.plural)
# Calico's `bgp_peers` statuses (BIRD's BGP states, and Down for a protocol that is down).
BGP_STATUSES = ("Idle", "Connect", "Active", "OpenSent", "OpenConfirm", "Established", "Close", "Down", "Passive")


class MetricsComponent:
    """Keeps the gauges current: endpoints (local and cluster), hosts, routes, BGP peers."""

    name: str = "metrics"
    prefixes: tuple[str, ...] = (WEPS_PREFIX, NODES_PREFIX)

    def __init__(self, ctx: NodeContext, metrics: Metrics, components: Sequence[Component]) -> None:
        self.ctx, self.metrics, self.components = ctx, metrics, components
        self.endpoint_nodes: dict[str, str] = {}
        self.nodes: set[str] = set()

    def _apply(self, key: str, value: str | None) -> None:
        if key.startswith(NODES_PREFIX):
            name = key[len(NODES_PREFIX) :]
            if value is None:
                self.nodes.discard(name)
            else:
                self.nodes.add(name)
            return
        if value is None:
            self.endpoint_nodes.pop(key, None)
            return
        try:
            self.endpoint_nodes[key] = str((json.loads(value).get("spec") or {}).get("node", ""))
        except ValueError:
            self.endpoint_nodes.pop(key, None)

    def resync(self, listing: Sequence[KV]) -> None:
        self.endpoint_nodes.clear()
        self.nodes.clear()
        for kv in listing:
            self._apply(kv.key, kv.value)
        self.metrics.resyncs.inc()
        self.reconcile()

    def on_events(self, events: Sequence[WatchEvent]) -> None:
        for e in events:
            self._apply(e.key, e.value if e.kind == "put" else None)
        self.reconcile()

    def reconcile(self) -> None:
        m = self.metrics
        m.cluster_hosts.set(len(self.nodes))
        m.cluster_endpoints.set(len(self.endpoint_nodes))
        m.local_endpoints.set(sum(1 for n in self.endpoint_nodes.values() if n == self.ctx.nodename))
        for comp in self.components:
            if isinstance(comp, RoutesComponent):
                m.routes.labels(kind="vxlan").set(max(comp.programmed, 0))
            if isinstance(comp, BirdComponent):
                for version in comp.birds:
                    states = dict.fromkeys(BGP_STATUSES, 0)
                    try:
                        for peer in comp.peers(version):
                            status = peer.bgp_state if peer.state != "down" else "Down"
                            states[status] = states.get(status, 0) + 1
                    except Exception:  # noqa: BLE001 - BIRD restarting: no figures this time
                        continue
                    for status, count in states.items():
                        m.bgp_peers.labels(ip_version=f"IPv{version}", status=status).set(count)

    def ready(self) -> str:
        return ""

    def close(self, *, cleanup: bool = False) -> None:
        pass
