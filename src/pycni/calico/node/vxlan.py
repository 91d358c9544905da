"""The VXLAN device and what it needs to reach the other nodes, as felix's vxlan manager keeps it.

    vxlan.calico   VNI 4096 (FELIX_VXLANVNI), UDP 4789 (FELIX_VXLANPORT), local address the
                   node's, over the node's underlay interface, MTU 50 below it
                   (FELIX_VXLANMTU), MAC spec.vxlanTunnelMACAddr (or felix's derivation),
                   the node's tunnel address /32, up
    neighbours     a permanent ARP entry per remote VTEP: tunnel address -> its MAC
    FDB            a permanent entry per remote VTEP: its MAC -> its node's underlay address

The device exists while a VXLAN pool is enabled and this node has a tunnel address; it is
removed (with its neighbours and FDB entries) otherwise. The routes through it are
`routes.py`'s. IPv4 only: an IPv6 VXLAN pool is routed by BIRD (bird6) or not at all.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pycni.calico.datastore import KV, WatchEvent
from pycni.calico.node import kernel
from pycni.calico.node.component import NodeContext
from pycni.calico.node.startup import vxlan_mac
from pycni.calico.node.view import NODES_PREFIX, POOLS_PREFIX, ClusterView, NodeInfo
from pycni.net import netlink

log = logging.getLogger("calico-node")

DEVICE = "vxlan.calico"


@dataclass(frozen=True)
class Device:
    vni: int
    port: int
    local: ipaddress.IPv4Address
    parent: str
    mac: str
    mtu: int
    address: ipaddress.IPv4Address


def vtep_mac(node: NodeInfo) -> str:
    return (node.vxlan_mac or vxlan_mac(node.name)).lower()


def vxlan_enabled(view: ClusterView) -> bool:
    return any(p.version == 4 and p.vxlan_mode in ("Always", "CrossSubnet") and not p.disabled for p in view.pools.values())


class VXLANComponent:
    name: str = "vxlan"
    prefixes: tuple[str, ...] = (NODES_PREFIX, POOLS_PREFIX)

    def __init__(self, ctx: NodeContext, vni: int = 4096, port: int = 4789, mtu: int = 0) -> None:
        self.ctx = ctx
        self.vni, self.port, self.mtu = vni, port, mtu
        self.view = ClusterView()
        self.problem = "not programmed yet"
        self.vteps = 0

    # -- wanted state ----------------------------------------------------------------------

    def wanted_device(self) -> Device | None:
        me = self.view.nodes.get(self.ctx.nodename)
        if self.ctx.backend == "none" or me is None or me.vxlan_addr is None or me.ipv4 is None:
            return None
        if not vxlan_enabled(self.view) or not self.ctx.interface:
            return None
        mtu = self.mtu or max(self.ctx.mtu, 0)
        return Device(self.vni, self.port, me.ipv4.ip, self.ctx.interface, vtep_mac(me), mtu, me.vxlan_addr)

    def wanted_peers(self) -> tuple[dict[kernel.Address, str], dict[str, kernel.Address]]:
        arp: dict[kernel.Address, str] = {}
        fdb: dict[str, kernel.Address] = {}
        for node in self.view.nodes.values():
            if node.name == self.ctx.nodename or node.vxlan_addr is None or node.ipv4 is None:
                continue
            mac = vtep_mac(node)
            arp[node.vxlan_addr] = mac
            fdb[mac] = node.ipv4.ip
        return arp, fdb

    # -- the contract ------------------------------------------------------------------------

    def resync(self, listing: Sequence[KV]) -> None:
        self.view.load(listing)
        self.reconcile()

    def on_events(self, events: Sequence[WatchEvent]) -> None:
        if self.view.apply_events(events):
            self.reconcile()

    def reconcile(self) -> None:
        want = self.wanted_device()
        with netlink.route() as ipr:
            if want is None:
                self._remove(ipr)
                self.problem, self.vteps = "", 0
                return
            index = self._ensure_device(ipr, want)
            arp, fdb = self.wanted_peers()
            kernel.sync_neighbours(ipr, index, 4, arp)
            kernel.sync_fdb(ipr, index, fdb)
            self.vteps = len(fdb)
        self.problem = ""

    def ready(self) -> str:
        return self.problem

    def close(self, *, cleanup: bool = False) -> None:
        if cleanup:
            with netlink.route() as ipr:
                self._remove(ipr)

    # -- the device ------------------------------------------------------------------------

    def _remove(self, ipr: Any) -> None:
        index = kernel.link_index(ipr, DEVICE)
        if index is not None:
            log.info("Removing %s: no VXLAN pool or no tunnel address for this node", DEVICE)
            ipr.link("del", index=index)

    def _ensure_device(self, ipr: Any, want: Device) -> int:
        parent = kernel.link_index(ipr, want.parent)
        if parent is None:
            self.problem = f"underlay interface {want.parent} is gone"
            raise RuntimeError(self.problem)
        index = kernel.link_index(ipr, DEVICE)
        if index is not None and not self._compatible(ipr, index, want, parent):
            log.info("Re-creating %s: its VNI, port, local address or parent changed", DEVICE)
            ipr.link("del", index=index)
            index = None
        if index is None:
            log.info("Creating %s (VNI %d, port %d, local %s, parent %s)", DEVICE, want.vni, want.port, want.local, want.parent)
            try:
                ipr.link(
                    "add", ifname=DEVICE, kind="vxlan", vxlan_id=want.vni, vxlan_port=want.port,
                    vxlan_local=str(want.local), vxlan_link=parent, address=want.mac, mtu=want.mtu,
                )  # fmt: skip
            except netlink.netlink_error() as exc:
                if netlink.is_errno(exc, errno.EOPNOTSUPP):
                    raise RuntimeError("this kernel has no VXLAN devices (CONFIG_VXLAN)") from None
                raise
            index = kernel.link_index(ipr, DEVICE)
            assert index is not None
        link = ipr.get_links(index)[0]
        if str(link.get_attr("IFLA_ADDRESS")).lower() != want.mac:
            ipr.link("set", index=index, address=want.mac)
        if int(link.get_attr("IFLA_MTU")) != want.mtu:
            ipr.link("set", index=index, mtu=want.mtu)
        have = {
            (m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS"), m["prefixlen"])
            for m in ipr.get_addr(index=index, family=kernel.family_of(4))
        }
        for addr, plen in have - {(str(want.address), 32)}:
            ipr.addr("del", index=index, address=addr, prefixlen=plen)
        if (str(want.address), 32) not in have:
            ipr.addr("add", index=index, address=str(want.address), prefixlen=32)
        if link.get_attr("IFLA_OPERSTATE") != "UP" and not link["flags"] & 1:
            ipr.link("set", index=index, state="up")
        return index

    @staticmethod
    def _compatible(ipr: Any, index: int, want: Device, parent: int) -> bool:
        link = ipr.get_links(index)[0]
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
            return False
        data = info.get_attr("IFLA_INFO_DATA")
        return bool(
            data.get_attr("IFLA_VXLAN_ID") == want.vni
            and data.get_attr("IFLA_VXLAN_PORT") == want.port
            and data.get_attr("IFLA_VXLAN_LOCAL") == str(want.local)
            and data.get_attr("IFLA_VXLAN_LINK") == parent
        )
