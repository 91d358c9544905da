"""Calico's dataplane for one workload (its DoNetworking), as an attachment
(`pycni.net.attachment`): ADD applies it, CHECK compares the kernel with it, DEL removes it.

    host                                     container
    caliXXXX (ee:ee:ee:ee:ee:ee) ───veth─── eth0  10.0.0.5/32, fd00::5/128
    10.0.0.5/32 dev caliXXXX scope link       169.254.1.1 dev eth0 scope link
    proxy_arp=1, proxy_delay=0, forwarding=1, default via 169.254.1.1 dev eth0
    route_localnet=1, proxy_ndp=1 (IPv6)      default via <caliXXXX's fe80::> dev eth0 (IPv6)

The container reaches everything through the host: the gateway 169.254.1.1 exists
nowhere, the host answers ARP for it (proxy_arp) and routes each workload by its
/32, which no other interface may route. As Calico does, the veth is created from
the container's side with its peer placed in the host namespace in the same request,
and a host veth left by an earlier sandbox of the same pod is replaced.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pycni.net import attachment, sysctl
from pycni.net.attachment import Address, Attachment, Creation, Link, Route, Settings, Sysctl, VethAttachment

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = ipaddress.IPv4Address("169.254.1.1")
GATEWAY_V6 = ipaddress.IPv6Address("fe80::ecee:eeff:feee:eeee")  # the link-local of HOST_MAC, as results name it
DEFAULT_ROUTES: list[IPNetwork] = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
RT_SCOPE_LINK = 253
ALIAS_PREFIX = "pycni-calico "  # the host veth's alias: whose workload it is


@dataclass
class Workload:
    """Everything DoNetworking sets up for one workload."""

    netns: str
    ifname: str
    host_veth: str
    mtu: int
    addresses: list[IPInterface]
    routes: list[IPNetwork] = field(default_factory=lambda: list(DEFAULT_ROUTES))
    num_queues: int = 1
    allow_ip_forwarding: bool = False
    owner: str = ""  # the workload (namespace.pod, or the container ID), in the host veth's alias

    @property
    def alias(self) -> str:
        return ALIAS_PREFIX + self.owner

    @property
    def host_addresses(self) -> list[IPInterface]:
        """The workload's addresses as Calico programs them: /32 and /128."""
        return [ipaddress.ip_interface(f"{a.ip}/{a.max_prefixlen}") for a in self.addresses]

    def has(self, version: int) -> bool:
        return any(a.version == version for a in self.addresses)


def describe(w: Workload, container_mac: str = "") -> VethAttachment:
    """The workload's attachment; `container_mac` is what CHECK expects ("" at ADD)."""
    att = Attachment()
    queues = {"num_tx_queues": w.num_queues, "num_rx_queues": w.num_queues}
    container, host = att.veth(
        Link(
            w.ifname,
            ns=w.netns,
            creation=Creation(create=dict(queues)),
            settings=Settings(mtu=w.mtu, mac=container_mac, check_mtu=True),
        ),
        Link(
            w.host_veth,
            alias=w.alias,
            creation=Creation(create=dict(queues), replace=True),
            settings=Settings(mtu=w.mtu, mac=HOST_MAC, check_mtu=True),
        ),
    )
    _sysctls(w, att, container, host)
    att.addresses += [Address(container, address) for address in w.host_addresses]
    if w.has(4):
        att.routes.append(Route(ipaddress.ip_network(f"{GATEWAY_V4}/32"), scope=RT_SCOPE_LINK, link=container))
    for dst in w.routes:
        if dst.version == 4 and w.has(4):
            att.routes.append(Route(dst, gw=GATEWAY_V4, link=container))
        elif dst.version == 6 and w.has(6):
            att.routes.append(Route(dst, link=container, via_link_local=host))
    for address in w.host_addresses:
        att.routes.append(Route(address.network, scope=RT_SCOPE_LINK, link=host, exclusive=True))
    return VethAttachment(att, host=host, container=container)


def _sysctls(w: Workload, att: Attachment, container: Link, host: Link) -> None:
    """Calico's sysctls; a failure fails ADD and CHECK compares them (except the two that
    only make ADD faster or quieter)."""

    def on(link: Link, family: int, name: str, value: str, check: bool = True) -> None:
        att.sysctls.append(Sysctl(sysctl.conf_key(family, "{link}", name), value, link=link, strict=True, check=check))

    def in_container(key: str, value: str, check: bool = True) -> None:
        att.sysctls.append(Sysctl(key, value, ns=w.netns, strict=True, check=check))

    if w.has(6):
        # The host end needs IPv6 for its link-local next hop; DAD would delay both ends by a second.
        on(host, 6, "disable_ipv6", "0", check=False)
        on(host, 6, "accept_dad", "0", check=False)
        for scope in ("all", "default", "lo"):
            in_container(sysctl.conf_key(6, scope, "disable_ipv6"), "0", check=False)
        on(container, 6, "accept_dad", "0", check=False)
    if w.has(4):
        on(host, 4, "route_localnet", "1")
        att.sysctls.append(Sysctl("net/ipv4/neigh/{link}/proxy_delay", "0", link=host, strict=True, check=True))
        on(host, 4, "proxy_arp", "1")
        on(host, 4, "forwarding", "1")
    if w.has(6):
        on(host, 6, "proxy_ndp", "1")
        on(host, 6, "forwarding", "1")
    # Router advertisements are not for the host end (best effort: the host may have no IPv6).
    att.sysctls.append(Sysctl(sysctl.conf_key(6, "{link}", "accept_ra"), "0", link=host))
    forwarding = "1" if w.allow_ip_forwarding else "0"
    if w.has(4):
        in_container("net/ipv4/ip_forward", forwarding)
    if w.has(6):
        in_container("net/ipv6/conf/all/forwarding", forwarding)


def remove(netns: str, ifname: str) -> None:
    """DEL: the container's interface, found by name, whatever it is (its veth peer and the
    host routes go with it); a missing namespace or interface is fine. The host end is not
    looked up by name: a newer sandbox of the same pod may own that name by now."""
    if netns:
        att = Attachment()
        att.add(Link(ifname, ns=netns, kind=""))
        attachment.remove(att)
