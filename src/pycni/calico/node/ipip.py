"""IPIP (pools with ipipMode Always or CrossSubnet): the `tunl0` device and the routes of
remote blocks through it, as felix's ipip manager programs them.

This kernel has no CONFIG_NET_IPIP: creating `tunl0` fails, and so an IPIP pool is a clear
error naming the option, at start (the default pool) and later (a pool added while running,
reported through readiness). The routes are still computed here, from the same view as
VXLAN's, so the code path is built and unit-tested for a kernel that has the module.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pycni.calico.datastore import KV, WatchEvent
from pycni.calico.node.view import POOLS_PREFIX, ClusterView, NodeInfo, sort_networks
from pycni.calico.pools import Pool

DEVICE = "tunl0"
OVERHEAD = 20
KERNEL_OPTION = "CONFIG_NET_IPIP"
MISSING = (
    f"this kernel has no IPIP tunnels ({KERNEL_OPTION}): IPIP pools cannot be used; set ipipMode Never and use vxlanMode instead"
)


class IPIPUnsupported(RuntimeError):
    def __init__(self, detail: str = "") -> None:
        super().__init__(MISSING + (f" ({detail})" if detail else ""))


def uses_ipip(pool: Pool) -> bool:
    return pool.version == 4 and pool.ipip_mode in ("Always", "CrossSubnet") and not pool.disabled


def kernel_supports_ipip() -> bool:
    """Whether an ipip link can be made in this network namespace (tunl0 exists once the module is in)."""
    from pycni.net import netlink

    with netlink.route() as ipr:
        if ipr.link_lookup(ifname=DEVICE):
            return True
        probe = "pcnipipprobe"
        try:
            ipr.link("add", ifname=probe, kind="ipip")
        except netlink.netlink_error() as exc:
            if netlink.is_errno(exc, errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
                return False
            raise
        for index in ipr.link_lookup(ifname=probe):
            ipr.link("del", index=index)
        return True


def require_ipip() -> None:
    if not kernel_supports_ipip():
        raise IPIPUnsupported()


@dataclass(frozen=True)
class IPIPRoute:
    dst: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    #: "tunl0" (encapsulated, onlink) or "" (CrossSubnet: straight over the underlay)
    device: str


def wanted_routes(view: ClusterView, me: NodeInfo) -> list[IPIPRoute]:
    """Routes to every remote block of an IPIP pool: through tunl0 to the node's address, or
    (CrossSubnet, same subnet) directly to it."""
    out: list[IPIPRoute] = []
    for cidr in sort_networks(view.blocks):
        block = view.blocks[cidr]
        pool = view.pool_of(cidr)
        if pool is None or not uses_ipip(pool) or not block.host or block.host == me.name:
            continue
        node = view.nodes.get(block.host)
        if node is None or node.ipv4 is None or not isinstance(cidr, ipaddress.IPv4Network):
            continue
        direct = pool.ipip_mode == "CrossSubnet" and me.ipv4 is not None and node.ipv4.ip in me.ipv4.network
        out.append(IPIPRoute(cidr, node.ipv4.ip, "" if direct else DEVICE))
    return out


class IPIPComponent:
    """Reports an IPIP pool this kernel cannot serve (not ready, naming CONFIG_NET_IPIP);
    where the kernel has IPIP the routes component programs the tunl0 routes."""

    name: str = "ipip"
    prefixes: tuple[str, ...] = (POOLS_PREFIX,)

    def __init__(self) -> None:
        self.view = ClusterView()
        self.supported: bool | None = None
        self.problem = ""

    def resync(self, listing: Sequence[KV]) -> None:
        self.view.load(listing)
        self.reconcile()

    def on_events(self, events: Sequence[WatchEvent]) -> None:
        if self.view.apply_events(events):
            self.reconcile()

    def reconcile(self) -> None:
        pools = sorted(p.name for p in self.view.pools.values() if uses_ipip(p))
        if not pools:
            self.problem = ""
            return
        if self.supported is None:
            self.supported = kernel_supports_ipip()
        if self.supported:
            self.problem = ""
            return
        problem = f"IPPool {', '.join(pools)} uses ipipMode: {MISSING}"
        if problem != self.problem:
            logging.getLogger("calico-node").error("%s", problem)
        self.problem = problem

    def ready(self) -> str:
        return self.problem

    def close(self, *, cleanup: bool = False) -> None:
        pass
