"""Which interface carries traffic between nodes, and which address the other nodes use
(flannel's ipmatch.LookupExtIface): `--iface` (a name or an address, repeatable, first match
wins), then `--iface-regex` (matched against addresses, then names), then `--iface-can-reach`
(the interface of the route to that address), else the interface of the default route.
`--public-ip` / `--public-ipv6` override the advertised address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any

from pycni.net import netlink


class InterfaceError(RuntimeError):
    pass


@dataclass(frozen=True)
class ExtIface:
    name: str
    index: int
    mtu: int
    address: ipaddress.IPv4Address | None  # the interface's own
    address6: ipaddress.IPv6Address | None
    public_ip: ipaddress.IPv4Address | None  # what the lease advertises
    public_ipv6: ipaddress.IPv6Address | None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # its on-link prefixes


@dataclass(frozen=True)
class _Link:
    name: str
    index: int
    mtu: int
    addrs: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]


def _links(ipr: Any) -> list[_Link]:
    addrs: dict[int, list[Any]] = {}
    for msg in ipr.get_addr():
        if msg["scope"] != 0:  # global addresses only, as flannel's GetInterfaceIP4Addrs
            continue
        local = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        addrs.setdefault(msg["index"], []).append(ipaddress.ip_interface(f"{local}/{msg['prefixlen']}"))
    out = []
    for link in ipr.get_links():
        index = link["index"]
        out.append(_Link(link.get_attr("IFLA_IFNAME"), index, int(link.get_attr("IFLA_MTU") or 0), tuple(addrs.get(index, []))))
    return out


def _first(link: _Link, version: int) -> Any:
    return next((a.ip for a in link.addrs if a.version == version), None)


def _route_oif(ipr: Any, dst: str) -> tuple[int, str]:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    try:
        found = ipr.route("get", dst=dst, family=family)
    except netlink.netlink_error() as exc:
        raise InterfaceError(f"no route to {dst}: {exc}") from None
    return int(found[0].get_attr("RTA_OIF") or 0), str(found[0].get_attr("RTA_PREFSRC") or "")


def _default_oif(ipr: Any, version: int) -> int:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    for msg in netlink.routes(ipr, family, table=254):
        if msg["dst_len"] == 0 and msg.get_attr("RTA_OIF"):
            return int(msg.get_attr("RTA_OIF"))
    raise InterfaceError(f"no default IPv{version} route: pass --iface to name the interface between nodes")


def lookup(
    ifaces: list[str], regexes: list[str], can_reach: str, public_ip: str, public_ipv6: str, ipv4: bool, ipv6: bool
) -> ExtIface:
    with netlink.route() as ipr:
        links = _links(ipr)
        chosen: _Link | None = None
        picked4: Any = None
        picked6: Any = None
        tried: list[str] = []
        for spec in ifaces:
            try:
                addr = ipaddress.ip_address(spec)
            except ValueError:
                addr = None
            for link in links:
                if (addr is None and link.name == spec) or (addr is not None and any(a.ip == addr for a in link.addrs)):
                    chosen = link
                    if addr is not None:
                        picked4, picked6 = (addr, None) if addr.version == 4 else (None, addr)
                    break
            if chosen is not None:
                break
            tried.append(f"--iface {spec}")
        if chosen is None:
            for pattern in regexes:
                try:
                    regex = re.compile(pattern)
                except re.error as exc:
                    raise InterfaceError(f"--iface-regex {pattern!r} is not a regular expression: {exc}") from None
                for link in links:
                    match = next((a.ip for a in link.addrs if a.version == (4 if ipv4 else 6) and regex.search(str(a.ip))), None)
                    if match is not None:
                        chosen, picked4 = link, match if match.version == 4 else None
                        break
                if chosen is None:
                    chosen = next((link for link in links if regex.search(link.name)), None)
                if chosen is not None:
                    break
                tried.append(f"--iface-regex {pattern}")
        if chosen is None and can_reach:
            index, src = _route_oif(ipr, can_reach)
            chosen = next((link for link in links if link.index == index), None)
            if src:
                picked4 = ipaddress.ip_address(src) if ":" not in src else None
            if chosen is None:
                tried.append(f"--iface-can-reach {can_reach}")
        if chosen is None and (ifaces or regexes or can_reach):
            available = ", ".join(f"{link.name}:{[str(a.ip) for a in link.addrs]}" for link in links)
            raise InterfaceError(f"no interface matches {' or '.join(tried)} (interfaces: {available})")
        if chosen is None:
            index = _default_oif(ipr, 4 if ipv4 else 6)
            chosen = next(link for link in links if link.index == index)
    address = picked4 or (_first(chosen, 4) if ipv4 else None)
    address6 = picked6 or (_first(chosen, 6) if ipv6 else None)
    if ipv4 and address is None:
        raise InterfaceError(f"interface {chosen.name} has no global IPv4 address")
    if ipv6 and address6 is None:
        raise InterfaceError(f"interface {chosen.name} has no global IPv6 address (EnableIPv6 is true)")
    try:
        ext4 = ipaddress.IPv4Address(public_ip) if public_ip else address
        ext6 = ipaddress.IPv6Address(public_ipv6) if public_ipv6 else address6
    except ValueError as exc:
        raise InterfaceError(f"--public-ip/--public-ipv6: {exc}") from None
    if chosen.mtu == 0:
        raise InterfaceError(f"failed to determine the MTU of {chosen.name}")
    return ExtIface(chosen.name, chosen.index, chosen.mtu, address, address6, ext4, ext6, tuple(a.network for a in chosen.addrs))
