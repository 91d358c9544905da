"""The kernel objects calico-node owns, read and written through netlink in its own network
namespace: routes of its protocol, and the static neighbours and FDB entries of its VXLAN
devices. Each `sync_*` takes the wanted set, reads what the kernel has, and applies only the
difference, so calling it again with the same set does nothing.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pycni.net import netlink

log = logging.getLogger("calico-node")

#: felix's dataplanedefs.DefaultRouteProto: the protocol of every route felix (and we) program
ROUTE_PROTO = 80
#: BIRD's routes (RTPROT_BIRD), owned by the BIRD calico-node runs
BIRD_PROTO = 12
MAIN_TABLE = 254
RTN_UNICAST, RTN_BLACKHOLE = 1, 6
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Route:
    dst: Network
    blackhole: bool = False
    gateway: Address | None = None
    device: str = ""
    onlink: bool = False
    mtu: int = 0


@dataclass(frozen=True)
class _KernelRoute:
    dst: Network
    blackhole: bool
    gateway: Address | None
    oif: int
    onlink: bool


def family_of(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def link_index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def kernel_routes(ipr: Any, version: int, proto: int = ROUTE_PROTO) -> dict[Network, _KernelRoute]:
    out: dict[Network, _KernelRoute] = {}
    for msg in netlink.routes(ipr, family_of(version), table=MAIN_TABLE):
        if msg["proto"] != proto:
            continue
        dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
        net = ipaddress.ip_network(f"{dst}/{msg['dst_len']}")
        gw = msg.get_attr("RTA_GATEWAY")
        out[net] = _KernelRoute(
            net,
            msg["type"] == RTN_BLACKHOLE,
            ipaddress.ip_address(gw) if gw else None,
            int(msg.get_attr("RTA_OIF") or 0),
            bool(msg["flags"] & RTNH_F_ONLINK),
        )
    return out


def sync_routes(ipr: Any, version: int, wanted: Iterable[Route]) -> tuple[int, int]:
    """Make our protocol's routes of `version` in the main table exactly `wanted`. Routes of a
    device that does not exist are skipped. Returns (written, deleted)."""
    indexes: dict[str, int | None] = {}
    want: dict[Network, tuple[Route, int]] = {}
    for route in wanted:
        oif = 0
        if route.device:
            if route.device not in indexes:
                indexes[route.device] = link_index(ipr, route.device)
            found = indexes[route.device]
            if found is None:
                continue
            oif = found
        want[route.dst] = (route, oif)
    have = kernel_routes(ipr, version)
    written = deleted = 0
    for dst, current in have.items():
        if dst not in want:
            _delete(ipr, current)
            deleted += 1
    for dst, (route, oif) in want.items():
        existing = have.get(dst)
        if existing is not None and existing == _KernelRoute(dst, route.blackhole, route.gateway, oif, route.onlink):
            continue
        kwargs: dict[str, Any] = {"dst": str(dst), "proto": ROUTE_PROTO, "table": MAIN_TABLE, "family": family_of(version)}
        if route.blackhole:
            kwargs["type"] = RTN_BLACKHOLE
        else:
            if route.gateway is not None:
                kwargs["gateway"] = str(route.gateway)
            if oif:
                kwargs["oif"] = oif
            if route.onlink:
                kwargs["flags"] = RTNH_F_ONLINK
        if route.mtu:
            kwargs["metrics"] = {"attrs": [["RTAX_MTU", route.mtu]]}
        try:
            if existing is not None and existing.blackhole != route.blackhole:
                _delete(ipr, existing)
            ipr.route("replace", **kwargs)
            written += 1
        except netlink.netlink_error() as exc:
            log.warning("Failed to program route %s: %s", dst, exc)
    return written, deleted


def _delete(ipr: Any, route: _KernelRoute) -> None:
    kwargs: dict[str, Any] = {
        "dst": str(route.dst),
        "proto": ROUTE_PROTO,
        "table": MAIN_TABLE,
        "family": family_of(route.dst.version),
    }
    if route.blackhole:
        kwargs["type"] = RTN_BLACKHOLE
    try:
        ipr.route("del", **kwargs)
    except netlink.netlink_error() as exc:
        if not netlink.is_errno(exc, errno.ESRCH, errno.ENOENT):
            raise


def delete_routes(ipr: Any, version: int) -> None:
    for route in kernel_routes(ipr, version).values():
        _delete(ipr, route)


def sync_neighbours(ipr: Any, index: int, version: int, wanted: dict[Address, str]) -> tuple[int, int]:
    """The device's permanent neighbours (ARP / NDP) are exactly `wanted` (address -> MAC)."""
    have: dict[Address, str] = {}
    for msg in ipr.neigh("dump", ifindex=index, family=family_of(version)):
        if msg["ifindex"] != index or not msg["state"] & NUD_PERMANENT:
            continue
        have[ipaddress.ip_address(msg.get_attr("NDA_DST"))] = str(msg.get_attr("NDA_LLADDR") or "").lower()
    written = deleted = 0
    for addr in have.keys() - wanted.keys():
        ipr.neigh("del", dst=str(addr), ifindex=index, family=family_of(version))
        deleted += 1
    for addr, mac in wanted.items():
        if have.get(addr) != mac.lower():
            ipr.neigh("replace", dst=str(addr), lladdr=mac, ifindex=index, state=NUD_PERMANENT, family=family_of(version))
            written += 1
    return written, deleted


def sync_fdb(ipr: Any, index: int, wanted: dict[str, Address]) -> tuple[int, int]:
    """The VXLAN device's forwarding entries are exactly `wanted` (MAC -> remote VTEP address)."""
    have: dict[str, str] = {}
    for msg in ipr.fdb("dump", ifindex=index):
        if msg["ifindex"] != index or msg["family"] != AF_BRIDGE:
            continue
        mac, dst = str(msg.get_attr("NDA_LLADDR") or "").lower(), msg.get_attr("NDA_DST")
        if mac and dst and mac != "00:00:00:00:00:00":
            have[mac] = str(dst)
    written = deleted = 0
    want = {mac.lower(): str(dst) for mac, dst in wanted.items()}
    for mac in have.keys() - want.keys():
        try:
            ipr.fdb("del", ifindex=index, lladdr=mac, dst=have[mac], state=NUD_PERMANENT, flags=NTF_SELF)
        except netlink.netlink_error() as exc:
            if not netlink.is_errno(exc, errno.ENOENT):
                raise
        deleted += 1
    for mac, dst in want.items():
        if have.get(mac) != dst:
            ipr.fdb("replace", ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT, flags=NTF_SELF)
            written += 1
    return written, deleted
