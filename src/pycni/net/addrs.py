"""Addresses and routes through one pyroute2 socket.

Routes are added with protocol "boot", as the Go reference (vishvananda/netlink) does,
so `ip route` shows the same table for both; pyroute2 would say "static".
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pycni.net import links, netlink
from pycni.net.links import kernel_error
from pycni.spec.errors import CNIError, Code

if TYPE_CHECKING:
    from pycni.net.netlink import IPRoute

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IFA_F_NOPREFIXROUTE = 0x200
IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
IFF_LOWER_UP = 0x10000
RT_TABLE_MAIN = 254


def family_of(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def list_addresses(ipr: IPRoute, index: int) -> list[IPInterface]:
    """The addresses on a link, host bits kept (link-local IPv6 included)."""
    out: list[IPInterface] = []
    for msg in netlink.link_addresses(ipr, index):
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        out.append(ipaddress.ip_interface(f"{local}/{msg['prefixlen']}"))
    return out


def add_address(
    ipr: IPRoute, index: int, address: IPInterface, link_name: str, noprefixroute: bool = False, nodad: bool = False
) -> bool:
    """Add an address; False when the link already had it."""
    extra: dict[str, Any] = {}
    if address.version == 4:
        extra["broadcast"] = str(address.network.broadcast_address) if address.network.prefixlen < 31 else None
    flags = (IFA_F_NOPREFIXROUTE if noprefixroute else 0) | (IFA_F_NODAD if nodad else 0)
    if flags:
        extra["flags"] = flags
    try:
        ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen, **extra)
    except Exception as exc:  # noqa: BLE001
        if netlink.is_errno(exc, errno.EEXIST):
            return False
        raise kernel_error(exc, f"failed to add IP addr {address} to {link_name!r}") from None
    return True


def delete_address(ipr: IPRoute, index: int, address: IPInterface) -> bool:
    try:
        ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
    except Exception as exc:  # noqa: BLE001
        if netlink.is_errno(exc, errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
            return False
        raise kernel_error(exc, f"deleting address {address}") from None
    return True


def settle(ipr: IPRoute, index: int, link_name: str, timeout: float = 10.0) -> None:
    """Wait until no IPv6 address of the link is tentative (DAD finished), as the reference
    does before adding routes; a failed DAD (a duplicate address) is an error. A link without
    carrier (a tap no VM has opened yet, a macvlan on a master whose cable is out) is not
    waited for: its DAD starts only when the carrier comes, and the reference's 10 s wait
    would end in a timeout."""
    links = ipr.get_links(index)
    if links and not links[0]["flags"] & IFF_LOWER_UP:
        return
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        tentative = False
        for msg in netlink.link_addresses(ipr, index, socket.AF_INET6):
            flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
            if flags & IFA_F_DADFAILED:
                duplicate = msg.get_attr("IFA_ADDRESS")
                raise CNIError(Code.CONFLICT, f"{link_name}: duplicate address detection failed for {duplicate}")
            tentative = tentative or bool(flags & IFA_F_TENTATIVE)
        if not tentative:
            return
        if time.monotonic() >= deadline:
            raise CNIError(Code.KERNEL, f"{link_name}: IPv6 addresses still tentative after {timeout:g}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass(eq=False)
class RouteFields:
    """What a route is, in the kernel's terms (for adding and for finding)."""

    dst: IPNetwork
    gw: IPAddress | None = None
    oif: int = 0
    src: IPAddress | None = None
    scope: int | None = None
    table: int | None = None
    priority: int = 0
    mtu: int = 0
    advmss: int = 0

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "family": family_of(self.dst.version),
            "dst": str(self.dst.network_address),
            "dst_len": self.dst.prefixlen,
            "proto": "boot",
        }
        if self.gw is not None:
            out["gateway"] = str(self.gw)
        if self.oif:
            out["oif"] = self.oif
        if self.src is not None:
            out["prefsrc"] = str(self.src)
        if self.scope is not None:
            out["scope"] = self.scope
        if self.table is not None:
            out["table"] = self.table
        if self.priority:
            out["priority"] = self.priority
        metrics = {k: v for k, v in (("RTAX_MTU", self.mtu), ("RTAX_ADVMSS", self.advmss)) if v}
        if metrics:
            out["metrics"] = {"attrs": [[k, v] for k, v in metrics.items()]}
        return out


def add_route(ipr: IPRoute, route: RouteFields, link_name: str, exclusive: bool = False) -> None:
    """Add a route; an identical one already there is fine, one with the same destination and
    another gateway becomes an additional next hop (the reference's RouteAddEcmp) unless
    `exclusive`: then a route to that destination through another device is a conflict
    naming the device."""
    spec = route.spec()
    try:
        ipr.route("add", **spec)
        return
    except Exception as exc:  # noqa: BLE001
        if not netlink.is_errno(exc, errno.EEXIST):
            raise kernel_error(exc, f"failed to add route '{route.dst} via {route.gw} dev {link_name}'") from None
    if find_route(ipr, route) is not None:
        return
    if exclusive:
        owner = route_owner(ipr, route)
        raise CNIError(
            Code.CONFLICT,
            f"route {route.dst} already exists for an interface other than {link_name!r}: it goes to {owner}",
            f"{owner} owns the route to {route.dst}: remove that route or release the address it routes",
        )
    try:
        ipr.route("append", **spec)
    except Exception as exc:  # noqa: BLE001
        if not netlink.is_errno(exc, errno.EEXIST):
            raise kernel_error(exc, f"failed to add route '{route.dst} via {route.gw} dev {link_name}'") from None


def delete_route(ipr: IPRoute, route: RouteFields) -> bool:
    try:
        ipr.route("del", **route.spec())
    except Exception as exc:  # noqa: BLE001
        if netlink.is_errno(exc, errno.ESRCH, errno.ENOENT, errno.ENODEV):
            return False
        raise kernel_error(exc, f"deleting route to {route.dst}") from None
    return True


def _hops(msg: Any) -> list[tuple[str | None, int]]:
    """(gateway, oif) of each next hop of a route message."""
    multipath = msg.get_attr("RTA_MULTIPATH")
    if multipath:
        return [(hop.get_attr("RTA_GATEWAY"), hop["oif"]) for hop in multipath]
    return [(msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_OIF") or 0)]


def find_route(ipr: IPRoute, route: RouteFields, any_table: bool = False) -> Any:
    """The kernel route matching `route` (destination, and gateway/oif when given), or None.

    With `any_table`, every routing table is searched (a later plugin may have moved
    routes to another table, as sbr does)."""
    table = route.table if route.table is not None else RT_TABLE_MAIN
    dst = str(route.dst.network_address)
    candidates = netlink.routes(ipr, family_of(route.dst.version), None if any_table else table, route.oif or None)
    for msg in candidates:
        msg_table = msg.get_attr("RTA_TABLE") or msg["table"]
        if not any_table and msg_table != table:
            continue
        if msg["dst_len"] != route.dst.prefixlen:
            continue
        msg_dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if route.dst.version == 4 else "::")
        if ipaddress.ip_address(msg_dst) != ipaddress.ip_address(dst):
            continue
        for gw, oif in _hops(msg):
            if route.gw is not None and (gw is None or ipaddress.ip_address(gw) != route.gw):
                continue
            if route.oif and oif != route.oif:
                continue
            return msg
    return None


def default_route_index(ipr: IPRoute) -> int:
    """The interface of the first default route of the main table, IPv4 before IPv6 (the
    reference's choice of a master); its first next hop's when it has several; 0 when none."""
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in netlink.routes(ipr, family, table=RT_TABLE_MAIN):
            if msg["dst_len"] != 0 or msg["type"] != 1:  # RTN_UNICAST default routes only
                continue
            for _gw, oif in _hops(msg):
                if oif:
                    return int(oif)
    return 0


def route_owner(ipr: IPRoute, route: RouteFields) -> str:
    """The name of the device the route to `route.dst` (in its table) goes through, "" when
    there is no such route ("unknown" when its device cannot be named)."""
    msg = find_route(ipr, RouteFields(route.dst, table=route.table))
    if msg is None:
        return ""
    oif = _hops(msg)[0][1]
    found = links.by_index(ipr, oif) if oif else None
    return links.name(found) if found is not None else "unknown"


def link_local(ipr: IPRoute, index: int) -> IPAddress | None:
    """The link's IPv6 link-local address, or None."""
    for msg in netlink.link_addresses(ipr, index, socket.AF_INET6):
        address = ipaddress.IPv6Address(msg.get_attr("IFA_ADDRESS"))
        if address.is_link_local:
            return address
    return None


def wait_link_local(ipr: IPRoute, index: int, link_name: str, timeout: float = 1.0) -> IPAddress:
    """The link's IPv6 link-local address, waiting for the kernel to give it one (it does
    once the link is up and has a carrier)."""
    deadline = time.monotonic() + timeout
    while True:
        address = link_local(ipr, index)
        if address is not None:
            return address
        if time.monotonic() >= deadline:
            raise CNIError(Code.KERNEL, f"{link_name} has no IPv6 link-local address after {timeout:g}s")
        time.sleep(0.01)
