"""A result's addresses and routes for one interface, as attachment entries.

This is what the reference's `ipam.ConfigureIface` does, described instead of done,
so that ADD applies it and CHECK compares with it: each address on the link; IPv6
enabled on `lo` and the link when it gets an IPv6 address; each route through the
link, via the first gateway of its family when the route has none; and, when an
IPv6 gateway exists, routes wait until duplicate address detection has finished.
"""

from __future__ import annotations

from pycni.net import sysctl
from pycni.net.attachment import Address, Attachment, Link, Route, Sysctl
from pycni.spec import result as res

RT_SCOPE_UNIVERSE = 0


def first_gateways(ips: list[res.IPConfig]) -> dict[int, res.IPAddress]:
    """The first gateway of each family, as the reference picks them."""
    gateways: dict[int, res.IPAddress] = {}
    for ip in ips:
        if ip.gateway is not None:
            gateways.setdefault(ip.gateway.version, ip.gateway)
    return gateways


def configure(att: Attachment, link: Link, ips: list[res.IPConfig], routes: list[res.Route]) -> None:
    """Add `ips` (addresses of `link`) and `routes` (through `link`) to the attachment."""
    add_addresses(att, link, ips)
    add_routes(att, link, ips, routes)


def add_addresses(att: Attachment, link: Link, ips: list[res.IPConfig], noprefixroute: bool = False) -> list[Address]:
    if any(ip.address.version == 6 for ip in ips):
        if link.ns is not None:  # a container's lo; never the host's
            att.sysctls.append(Sysctl(sysctl.conf_key(6, "lo", "disable_ipv6"), "0", ns=link.ns))
        att.sysctls.append(Sysctl(sysctl.conf_key(6, "{link}", "disable_ipv6"), "0", link=link))
    added = [Address(link, ip.address, noprefixroute=noprefixroute) for ip in ips]
    att.addresses += added
    if 6 in first_gateways(ips):
        link.settings.settle = True
    return added


def add_routes(att: Attachment, link: Link, ips: list[res.IPConfig], routes: list[res.Route]) -> None:
    gateways = first_gateways(ips)
    for route in routes:
        gw = route.gw if route.gw is not None else gateways.get(route.dst.version)
        att.routes.append(
            Route(
                route.dst.network,
                link=link,
                gw=gw,
                scope=route.scope if route.scope is not None else RT_SCOPE_UNIVERSE,
                table=route.table,
                priority=route.priority,
                mtu=route.mtu,
                advmss=route.advmss,
            )
        )
