"""Calico's dataplane for one workload (its DoNetworking), described once and applied,
checked or removed from that description.

    host                                     container
    caliXXXX (ee:ee:ee:ee:ee:ee) ───veth─── eth0  10.0.0.5/32, fd00::5/128
    10.0.0.5/32 dev caliXXXX scope link       169.254.1.1 dev eth0 scope link
    proxy_arp=1, proxy_delay=0, forwarding=1, default via 169.254.1.1 dev eth0
    route_localnet=1, proxy_ndp=1 (IPv6)      default via <caliXXXX's fe80::> dev eth0 (IPv6)

The container reaches everything through the host: the gateway 169.254.1.1 exists
nowhere, the host answers ARP for it (proxy_arp) and routes each workload by its
/32. The veth is created with its peer directly in the container namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from pycni.net import netlink, netns, sysctl
from pycni.spec.errors import CNIError, Code

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = ipaddress.IPv4Address("169.254.1.1")
DEFAULT_ROUTES: list[IPNetwork] = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
RT_SCOPE_LINK = 253
RT_SCOPE_UNIVERSE = 0
RTPROT_BOOT = 3  # what `ip route add` and Go's netlink use
IFF_UP = 0x1
ALIAS_PREFIX = "pycni-calico "
_LL_WAIT = 50  # x 20 ms for the host veth's IPv6 link-local address


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

    def host_sysctls(self) -> list[tuple[str, str]]:
        name = self.host_veth
        out = []
        if self.has(4):
            out += [
                (f"net/ipv4/conf/{name}/route_localnet", "1"),
                (f"net/ipv4/neigh/{name}/proxy_delay", "0"),
                (f"net/ipv4/conf/{name}/proxy_arp", "1"),
                (f"net/ipv4/conf/{name}/forwarding", "1"),
            ]
        if self.has(6):
            out += [
                (f"net/ipv6/conf/{name}/proxy_ndp", "1"),
                (f"net/ipv6/conf/{name}/forwarding", "1"),
            ]
        return out

    def container_sysctls(self) -> list[tuple[str, str]]:
        value = "1" if self.allow_ip_forwarding else "0"
        out = []
        if self.has(4):
            out.append(("net/ipv4/ip_forward", value))
        if self.has(6):
            out.append(("net/ipv6/conf/all/forwarding", value))
        return out


def _nl_errors() -> tuple[type[BaseException], ...]:
    """What a netlink call raises: pyroute2's NetlinkError, or OSError from the socket."""
    return (netlink.netlink_error(), OSError)


def _kernel_error(what: str, exc: BaseException) -> CNIError:
    code = netlink.error_code(exc)
    detail = f"{errno.errorcode.get(code, code)}: {exc}" if code is not None else str(exc)
    return CNIError(Code.KERNEL, f"{what}: {detail}")


def _link(ipr: Any, name: str) -> Any | None:
    found = ipr.link_lookup(ifname=name)
    return ipr.get_links(found[0])[0] if found else None


def _link_local(ipr: Any, index: int) -> ipaddress.IPv6Address | None:
    for msg in ipr.get_addr(family=socket.AF_INET6, index=index):
        addr = ipaddress.IPv6Address(msg.get_attr("IFA_ADDRESS"))
        if addr.is_link_local:
            return addr
    return None


# -- ADD ---------------------------------------------------------------------------


def apply(w: Workload, log: Any = None) -> str:
    """Create the workload's veth, addresses, routes and sysctls; return the container MAC.

    On failure everything created is removed again."""
    with netlink.route(None) as host:
        old = _link(host, w.host_veth)
        if old is not None:
            # Calico replaces a host veth left by an earlier sandbox of the same pod; not one of
            # another workload whose name is the same ("cali" + the first 11 characters of a
            # container ID, or of a hash): ours say whose they are in their alias.
            alias = str(old.get_attr("IFLA_IFALIAS") or "")
            if alias.startswith(ALIAS_PREFIX) and alias != w.alias:
                raise CNIError(
                    Code.CONFLICT,
                    f"host veth {w.host_veth} belongs to workload {alias[len(ALIAS_PREFIX) :]!r}, not {w.owner!r}",
                    "the two workloads' veth names collide; nothing was changed",
                )
            host.link("del", index=old["index"])
            if log is not None:
                log.info("Cleaning old hostVeth: %s", w.host_veth)
        with netlink.route(w.netns) as cont:
            if _link(cont, w.ifname) is not None:
                raise CNIError(Code.CONFLICT, f"container already has an interface named {w.ifname}")
        fd = netns.open_fd(w.netns)
        try:
            host.link(
                "add",
                ifname=w.host_veth,
                kind="veth",
                address=HOST_MAC,
                mtu=w.mtu,
                num_tx_queues=w.num_queues,
                num_rx_queues=w.num_queues,
                peer={
                    "ifname": w.ifname,
                    "net_ns_fd": fd,
                    "mtu": w.mtu,
                    "num_tx_queues": w.num_queues,
                    "num_rx_queues": w.num_queues,
                },
            )
        except _nl_errors() as exc:
            if netlink.is_errno(exc, errno.EEXIST):
                raise CNIError(Code.CONFLICT, f"cannot create veth {w.host_veth}: an interface with that name exists") from None
            raise _kernel_error(f"failed to create veth {w.host_veth} / {w.ifname}", exc) from None
        finally:
            os.close(fd)
        try:
            mac = _configure(w, host, log)
        except BaseException:
            found = _link(host, w.host_veth)
            if found is not None:
                host.link("del", index=found["index"])
            raise
    return mac


def _configure(w: Workload, host: Any, log: Any) -> str:
    host_index = host.link_lookup(ifname=w.host_veth)[0]
    if w.has(6):
        # The host end needs IPv6 for its link-local next hop; DAD would delay both ends by a second.
        sysctl.write_many([(f"net/ipv6/conf/{w.host_veth}/disable_ipv6", "0"), (f"net/ipv6/conf/{w.host_veth}/accept_dad", "0")])
        sysctl.write_many(
            [
                ("net/ipv6/conf/all/disable_ipv6", "0"),
                ("net/ipv6/conf/default/disable_ipv6", "0"),
                ("net/ipv6/conf/lo/disable_ipv6", "0"),
                (f"net/ipv6/conf/{w.ifname}/accept_dad", "0"),
            ],
            w.netns,
        )
    try:
        host.link("set", index=host_index, state="up", ifalias=w.alias)
    except _nl_errors() as exc:
        raise _kernel_error(f"failed to set {w.host_veth} up", exc) from None
    with netlink.route(w.netns) as cont:
        index = cont.link_lookup(ifname=w.ifname)[0]
        try:
            cont.link("set", index=index, state="up")
            mac = str(cont.get_links(index)[0].get_attr("IFLA_ADDRESS"))
            for addr in w.host_addresses:
                cont.addr("add", index=index, address=str(addr.ip), prefixlen=addr.network.prefixlen)
            if w.has(4):
                cont.route("add", dst=f"{GATEWAY_V4}/32", oif=index, scope=RT_SCOPE_LINK, proto=RTPROT_BOOT)
                for dst in (r for r in w.routes if r.version == 4):
                    cont.route("add", dst=str(dst), gateway=str(GATEWAY_V4), oif=index, proto=RTPROT_BOOT)
        except _nl_errors() as exc:
            if isinstance(exc, CNIError):
                raise
            raise _kernel_error(f"failed to configure {w.ifname} in {w.netns}", exc) from None
        if w.has(6):
            gateway = None
            for _ in range(_LL_WAIT):
                gateway = _link_local(host, host_index)
                if gateway is not None:
                    break
                time.sleep(0.02)
            if gateway is None:
                raise CNIError(Code.KERNEL, f"failed to get IPv6 addresses for host side of the veth pair ({w.host_veth})")
            try:
                for dst6 in (r for r in w.routes if r.version == 6):
                    cont.route("add", dst=str(dst6), gateway=str(gateway), oif=index, family=socket.AF_INET6, proto=RTPROT_BOOT)
            except _nl_errors() as exc:
                raise _kernel_error(f"failed to add IPv6 route via {gateway} in {w.netns}", exc) from None
    sysctl.write_many(w.container_sysctls(), w.netns)
    sysctl.write_many(w.host_sysctls())
    try:
        sysctl.write(f"net/ipv6/conf/{w.host_veth}/accept_ra", "0")
    except CNIError as exc:  # IPv6 disabled on the host: not needed then
        if log is not None:
            log.warning("failed to set net.ipv6.conf.%s.accept_ra=0: %s", w.host_veth, exc)
    _add_host_routes(w, host, host_index)
    if log is not None:
        log.info("Added veth %s (container %s, MAC %s) with addresses %s", w.host_veth, w.ifname, mac,
                 ", ".join(str(a) for a in w.host_addresses))  # fmt: skip
    return mac


def _route_owner(host: Any, dst: IPInterface) -> tuple[int, str] | None:
    family = socket.AF_INET if dst.version == 4 else socket.AF_INET6
    for route in host.get_routes(family=family, table=254):
        if route["dst_len"] == dst.network.prefixlen and route.get_attr("RTA_DST") == str(dst.ip):
            oif = route.get_attr("RTA_OIF")
            link = host.get_links(oif)[0] if oif else None
            return int(oif or 0), str(link.get_attr("IFLA_IFNAME")) if link is not None else "unknown"
    return None


def _add_host_routes(w: Workload, host: Any, host_index: int) -> None:
    for addr in w.host_addresses:
        family = socket.AF_INET if addr.version == 4 else socket.AF_INET6
        try:
            host.route("add", dst=str(addr), oif=host_index, scope=RT_SCOPE_LINK, family=family, proto=RTPROT_BOOT)
        except _nl_errors() as exc:
            if not netlink.is_errno(exc, errno.EEXIST):
                raise _kernel_error(f"failed to add route {addr} dev {w.host_veth}", exc) from None
            owner = _route_owner(host, addr)
            if owner is not None and owner[0] == host_index:
                continue  # already there (Felix may have added it first)
            name = owner[1] if owner else "unknown"
            raise CNIError(
                Code.CONFLICT,
                f"route {addr} already exists for an interface other than '{w.host_veth}': it goes to {name}",
                f"another workload or interface ({name}) owns {addr.ip}; release that address or remove the route",
            ) from None


# -- CHECK -------------------------------------------------------------------------


def _mismatch(msg: str) -> CNIError:
    return CNIError(Code.INVALID_NETWORK_CONFIG, msg)


def check(w: Workload, container_mac: str = "") -> None:
    """Compare the kernel's state with the description; CNIError naming the first difference."""
    with netlink.route(None) as host:
        link = _link(host, w.host_veth)
        if link is None:
            raise _mismatch(f"host veth {w.host_veth} does not exist")
        info = link.get_attr("IFLA_LINKINFO")
        if info is None or info.get_attr("IFLA_INFO_KIND") != "veth":
            raise _mismatch(f"host interface {w.host_veth} is not a veth")
        if not link["flags"] & IFF_UP:
            raise _mismatch(f"host veth {w.host_veth} is down")
        if str(link.get_attr("IFLA_ADDRESS")).lower() != HOST_MAC:
            raise _mismatch(f"host veth {w.host_veth} has MAC {link.get_attr('IFLA_ADDRESS')}, expected {HOST_MAC}")
        if int(link.get_attr("IFLA_MTU")) != w.mtu:
            raise _mismatch(f"host veth {w.host_veth} has MTU {link.get_attr('IFLA_MTU')}, expected {w.mtu}")
        host_index = int(link["index"])
        for addr in w.host_addresses:
            owner = _route_owner(host, addr)
            if owner is None:
                raise _mismatch(f"host route {addr} dev {w.host_veth} is missing")
            if owner[0] != host_index:
                raise _mismatch(f"host route {addr} goes to {owner[1]}, not {w.host_veth}")
        gateway6 = _link_local(host, host_index) if w.has(6) else None
    for key, value in w.host_sysctls():
        current = sysctl.read(key)
        if current != value:
            raise _mismatch(f"sysctl {key.replace('/', '.')} is {current}, expected {value}")
    if not netns.exists(w.netns):
        raise _mismatch(f"network namespace {w.netns} does not exist")
    with netlink.route(w.netns) as cont:
        clink = _link(cont, w.ifname)
        if clink is None:
            raise _mismatch(f"container interface {w.ifname} does not exist in {w.netns}")
        if clink.get_attr("IFLA_LINK") != host_index:
            raise _mismatch(f"container interface {w.ifname} is not the peer of {w.host_veth}")
        if not clink["flags"] & IFF_UP:
            raise _mismatch(f"container interface {w.ifname} is down")
        if container_mac and str(clink.get_attr("IFLA_ADDRESS")).lower() != container_mac.lower():
            raise _mismatch(f"container interface {w.ifname} has MAC {clink.get_attr('IFLA_ADDRESS')}, expected {container_mac}")
        if int(clink.get_attr("IFLA_MTU")) != w.mtu:
            raise _mismatch(f"container interface {w.ifname} has MTU {clink.get_attr('IFLA_MTU')}, expected {w.mtu}")
        index = int(clink["index"])
        present = {ipaddress.ip_interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}") for m in cont.get_addr(index=index)}
        for addr in w.host_addresses:
            if addr not in present:
                raise _mismatch(f"container interface {w.ifname} lacks address {addr}")
        routes = _routes(cont, index)
        if w.has(4):
            if (ipaddress.ip_network(f"{GATEWAY_V4}/32"), None, RT_SCOPE_LINK) not in routes:
                raise _mismatch(f"container route {GATEWAY_V4} dev {w.ifname} scope link is missing")
            for dst in (r for r in w.routes if r.version == 4):
                if (dst, GATEWAY_V4, RT_SCOPE_UNIVERSE) not in routes:
                    raise _mismatch(f"container route {dst} via {GATEWAY_V4} dev {w.ifname} is missing")
        if w.has(6):
            for dst6 in (r for r in w.routes if r.version == 6):
                if (dst6, gateway6, RT_SCOPE_UNIVERSE) not in routes:
                    raise _mismatch(f"container route {dst6} via {gateway6} dev {w.ifname} is missing")
    for key, value in w.container_sysctls():
        current = sysctl.read(key, w.netns)
        if current != value:
            raise _mismatch(f"container sysctl {key.replace('/', '.')} is {current}, expected {value}")


def _routes(ipr: Any, index: int) -> set[tuple[IPNetwork, Any, int]]:
    out: set[tuple[IPNetwork, Any, int]] = set()
    for family, any_net in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for route in ipr.get_routes(family=family, table=254):
            if route.get_attr("RTA_OIF") != index:
                continue
            dst = route.get_attr("RTA_DST") or any_net
            gw = route.get_attr("RTA_GATEWAY")
            out.add(
                (
                    ipaddress.ip_network(f"{dst}/{route['dst_len']}"),
                    ipaddress.ip_address(gw) if gw else None,
                    int(route["scope"]),
                )
            )
    return out


# -- DEL ---------------------------------------------------------------------------


def remove(netns_path: str, ifname: str, log: Any = None) -> None:
    """Delete the container's interface (its veth peer and host routes go with it).

    A missing namespace or interface is success. The host veth is not looked up by
    name: a newer sandbox of the same pod may own it by now."""
    if not netns_path:
        return
    try:
        with netlink.route(netns_path) as cont:
            link = _link(cont, ifname)
            if link is None:
                if log is not None:
                    log.info("Workload's veth was already gone.  Nothing to do.")
                return
            cont.link("del", index=link["index"])
    except netns.NetNSNotFound:
        if log is not None:
            log.info("Workload's netns already gone.  Nothing to do.")
        return
    except CNIError:
        raise
    except _nl_errors() as exc:
        if netlink.is_errno(exc, errno.ENODEV, errno.ENOENT):
            return
        raise _kernel_error(f"failed to clean up workload's veth {ifname} inside {netns_path}", exc) from None
    if log is not None:
        log.info("Deleted device %s in netns %s", ifname, netns_path)
