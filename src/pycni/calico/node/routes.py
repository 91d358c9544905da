"""The routes felix programs for blocks of encapsulated pools, with its route protocol (80):

- every block of a VXLAN pool affine to another node: via that node's tunnel address, onlink,
  on vxlan.calico; with vxlanMode CrossSubnet and the node in this node's subnet, straight
  via its underlay address instead;
- an address borrowed from such a block by a node other than the block's: a /32 to that node;
- every block of a VXLAN pool affine to this node: a blackhole (its workloads have their own
  /32 routes; the rest of the block must not leak to the default route);
- the same for IPIP pools, through tunl0 (only where the kernel has IPIP: see ipip.py).

Blocks of pools without encapsulation are BIRD's (bird mode). Every route of protocol 80 in
the main table that is not wanted is removed; no other route is ever touched.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from pycni.calico import model
from pycni.calico.datastore import KV, WatchEvent
from pycni.calico.node import ipip, kernel
from pycni.calico.node.component import NodeContext
from pycni.calico.node.kernel import Route
from pycni.calico.node.view import NODES_PREFIX, POOLS_PREFIX, ClusterView, NodeInfo, sort_networks
from pycni.calico.node.vxlan import DEVICE
from pycni.calico.pools import Pool
from pycni.net import netlink

log = logging.getLogger("calico-node")


def _vxlan(pool: Pool | None) -> bool:
    return pool is not None and pool.version == 4 and pool.vxlan_mode in ("Always", "CrossSubnet") and not pool.disabled


def _to_node(dst: kernel.Network, pool: Pool, node: NodeInfo, me: NodeInfo) -> Route | None:
    if node.ipv4 is None:
        return None
    if pool.vxlan_mode == "CrossSubnet" and me.ipv4 is not None and node.ipv4.ip in me.ipv4.network:
        return Route(dst, gateway=node.ipv4.ip)
    if node.vxlan_addr is None:
        return None  # its VTEP is not known yet: the route comes with it
    return Route(dst, gateway=node.vxlan_addr, device=DEVICE, onlink=True)


def wanted_routes(view: ClusterView, nodename: str, ipip_ok: bool = False) -> list[Route]:
    me = view.nodes.get(nodename)
    if me is None:
        return []
    out: dict[kernel.Network, Route] = {}
    for cidr in sort_networks(view.blocks):
        block = view.blocks[cidr]
        pool = view.pool_of(cidr)
        if not _vxlan(pool) or pool is None:
            continue
        if block.host == nodename:
            out[cidr] = Route(cidr, blackhole=True)
        elif block.host in view.nodes:
            route = _to_node(cidr, pool, view.nodes[block.host], me)
            if route is not None:
                out[cidr] = route
        for ip, node in block.borrowed:
            if node == nodename or node not in view.nodes:
                continue
            dst = ipaddress.ip_network(f"{ip}/{cidr.max_prefixlen}")
            route = _to_node(dst, pool, view.nodes[node], me)
            if route is not None:
                out[dst] = route
    if ipip_ok:
        for r in ipip.wanted_routes(view, me):
            out[r.dst] = Route(r.dst, gateway=r.gateway, device=r.device, onlink=bool(r.device))
        for cidr, block in view.blocks.items():
            pool = view.pool_of(cidr)
            if pool is not None and ipip.uses_ipip(pool) and block.host == nodename:
                out[cidr] = Route(cidr, blackhole=True)
    return list(out.values())


class RoutesComponent:
    name: str = "routes"
    prefixes: tuple[str, ...] = (NODES_PREFIX, POOLS_PREFIX, model.BLOCKS_PREFIX)

    def __init__(self, ctx: NodeContext, ipip_ok: bool = False) -> None:
        self.ctx = ctx
        self.view = ClusterView()
        self.ipip_ok = ipip_ok
        self.programmed = -1
        self.problem = "not programmed yet"

    def resync(self, listing: Sequence[KV]) -> None:
        self.view.load(listing)
        self.reconcile()

    def on_events(self, events: Sequence[WatchEvent]) -> None:
        if self.view.apply_events(events):
            self.reconcile()

    def reconcile(self) -> None:
        wanted = [] if self.ctx.backend == "none" else wanted_routes(self.view, self.ctx.nodename, self.ipip_ok)
        with netlink.route() as ipr:
            written, deleted = kernel.sync_routes(ipr, 4, wanted)
        if written or deleted:
            log.info("Routes: %d written, %d removed, %d programmed", written, deleted, len(wanted))
        self.programmed = len(wanted)
        self.problem = ""

    def ready(self) -> str:
        return self.problem

    def close(self, *, cleanup: bool = False) -> None:
        if cleanup:
            with netlink.route() as ipr:
                kernel.delete_routes(ipr, 4)
