"""What every part of calico-node's dataplane is to the daemon's main loop.

The loop lists the datastore once, then follows one watch on `/calico/` from that revision;
each event is handed to the components whose `prefixes` match its key. A component keeps
its own view of the resources it needs and reconciles the kernel with it: it computes the
wanted state (routes, neighbours, FDB entries, nftables sets and chains) from its view,
compares it with what the kernel has, and applies the difference, touching only what it owns
(its route protocol, its nftables table). Reconciliation is level-triggered: `on_events` may
simply mark the view dirty and reconcile, and `resync` (at start, after the watch was lost,
and periodically) rebuilds the view from a full listing. Components never talk to each other
except through `NodeContext`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pycni.calico.datastore import KV, WatchEvent


@dataclass
class NodeContext:
    """What the daemon knows about the node it runs on, shared with every component."""

    nodename: str
    #: the node's underlay addresses (IPv4/IPv6 with prefix, "" when none)
    ipv4: str = ""
    ipv6: str = ""
    #: the underlay interface those addresses are on
    interface: str = ""
    #: "bird", "vxlan" or "none" (CALICO_NETWORKING_BACKEND)
    backend: str = "bird"
    #: the MTU written to /var/lib/calico/mtu for the CNI plugin
    mtu: int = 1500
    #: per-component readiness problems (component name -> message); empty when ready
    problems: dict[str, str] = field(default_factory=dict)
    #: a prometheus_client CollectorRegistry to register a component's metrics in, None when
    #: metrics are off (FELIX_PROMETHEUSMETRICSENABLED)
    registry: Any = None


class Component(Protocol):
    """One part of the node's dataplane, driven by the main loop."""

    #: short name, used in logs, metrics and readiness messages
    name: str
    #: datastore key prefixes this component follows
    prefixes: tuple[str, ...]

    def resync(self, listing: Sequence[KV]) -> None:
        """Rebuild the view from a full listing of the keys under `prefixes`, then reconcile."""

    def on_events(self, events: Sequence[WatchEvent]) -> None:
        """Apply a batch of changes (in revision order) to the view, then reconcile."""

    def reconcile(self) -> None:
        """Make the kernel match the view (also called periodically, to repair drift)."""

    def ready(self) -> str:
        """ "" when the component's dataplane is programmed, else what is wrong."""

    def close(self, *, cleanup: bool = False) -> None:
        """Stop; with `cleanup`, also remove everything the component made in the kernel."""
