"""What flanneld owns in the kernel, and how it is brought to the wanted state.

Owned, and nothing else:
- its VXLAN devices (`flannel.<VNI>`, `flannel-v6.<VNI>`): the device itself, its addresses,
  and every permanent neighbour and FDB entry on it;
- routes of protocol `ROUTE_PROTO` in the main table. flannel writes its routes with the
  default protocol (boot), which it shares with every static route an operator adds, so it
  cannot tell its routes from anyone's; ours carry a protocol of their own, a route is deleted
  only with that protocol (the kernel matches it), and a wanted route whose destination
  already has a route of another protocol is left alone and reported, never replaced.

`sync` reads what the kernel has, compares it with the wanted state and sends only the
difference, batched (pycni.net.nlbatch): neighbours, then FDB entries, then routes when adding
(flannel's order: the kernel would otherwise resolve the route's gateway before its static
entry exists), the reverse when removing.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from pycni.net import netlink, nlbatch, sysctl

log = logging.getLogger("flanneld")

#: the protocol of flanneld's routes (`ip route show proto 70`): no other daemon uses it
ROUTE_PROTO = 70
MAIN_TABLE = 254
RTN_UNICAST = 1
RTNH_F_ONLINK = 4
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class KernelError(RuntimeError):
    pass


@dataclass(frozen=True)
class Route:
    dst: Network
    gateway: Address
    device: str = ""  # "": the kernel picks the interface (DirectRouting's plain route)
    onlink: bool = False


@dataclass(frozen=True)
class VxlanDevice:
    name: str
    vni: int
    port: int
    local: Address
    parent: int  # the external interface's index
    mtu: int
    mac: str
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    learning: bool = False
    gbp: bool = False


@dataclass
class Wanted:
    devices: list[VxlanDevice] = field(default_factory=list)
    neighbours: dict[str, dict[Address, str]] = field(default_factory=dict)  # device -> address -> MAC
    fdb: dict[str, dict[str, Address]] = field(default_factory=dict)  # device -> MAC -> remote address
    routes: list[Route] = field(default_factory=list)


@dataclass
class Outcome:
    written: int = 0
    deleted: int = 0
    failures: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # wanted routes another route's destination holds


def family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _msgs() -> tuple[Any, Any]:
    netlink._load_pyroute2()
    from pyroute2.netlink.rtnl.ndmsg import ndmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    return ndmsg, rtmsg


# -- the VXLAN device ------------------------------------------------------------------------


def _index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def _incompatible(ipr: Any, index: int, want: VxlanDevice) -> str:
    link = ipr.get_links(index)[0]
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return "not a VXLAN device"
    data = info.get_attr("IFLA_INFO_DATA")
    local = data.get_attr("IFLA_VXLAN_LOCAL") if want.local.version == 4 else data.get_attr("IFLA_VXLAN_LOCAL6")
    checks = (
        ("VNI", data.get_attr("IFLA_VXLAN_ID"), want.vni),
        ("port", data.get_attr("IFLA_VXLAN_PORT"), want.port),
        ("local address", str(local) if local else "", str(want.local)),
        ("parent", data.get_attr("IFLA_VXLAN_LINK"), want.parent),
        ("gbp", bool(data.get_attr("IFLA_VXLAN_GBP")), want.gbp),
    )
    for what, have, wanted in checks:
        if have != wanted:
            return f"{what} {have} instead of {wanted}"
    return ""


def ensure_device(ipr: Any, want: VxlanDevice) -> int:
    """The device as wanted (created, or re-created when its VNI, port, local address or parent
    differ); its index."""
    index = _index(ipr, want.name)
    if index is not None:
        problem = _incompatible(ipr, index, want)
        if problem:
            log.warning("%s exists with an incompatible configuration (%s): re-creating it", want.name, problem)
            ipr.link("del", index=index)
            index = None
    if index is None:
        log.info(
            "Creating %s (VNI %d, port %d, local %s, MTU %d, MAC %s)",
            want.name,
            want.vni,
            want.port,
            want.local,
            want.mtu,
            want.mac,
        )
        local = {"vxlan_local": str(want.local)} if want.local.version == 4 else {"vxlan_local6": str(want.local)}
        try:
            ipr.link(
                "add", ifname=want.name, kind="vxlan", vxlan_id=want.vni, vxlan_port=want.port, vxlan_link=want.parent,
                vxlan_learning=int(want.learning), address=want.mac, mtu=want.mtu, **local,
                **({"vxlan_gbp": True} if want.gbp else {}),
            )  # fmt: skip
        except netlink.netlink_error() as exc:
            if netlink.is_errno(exc, errno.EOPNOTSUPP):
                raise KernelError("this kernel has no VXLAN devices (CONFIG_VXLAN)") from None
            raise KernelError(f"cannot create {want.name}: {exc}") from None
        index = _index(ipr, want.name)
        if index is None:
            raise KernelError(f"{want.name} vanished right after it was created")
    link = ipr.get_links(index)[0]
    if str(link.get_attr("IFLA_ADDRESS")).lower() != want.mac:
        ipr.link("set", index=index, address=want.mac)
    if int(link.get_attr("IFLA_MTU")) != want.mtu:
        ipr.link("set", index=index, mtu=want.mtu)
    if want.address.version == 6:
        sysctl.write(f"net/ipv6/conf/{want.name}/accept_ra", "0")
    fam = family(want.address.version)
    have = {(m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS"), m["prefixlen"]) for m in ipr.get_addr(index=index, family=fam)}
    target = (str(want.address.ip), want.address.network.prefixlen)
    for addr, plen in have - {target}:
        if not (want.address.version == 6 and ipaddress.ip_address(addr).is_link_local):
            ipr.addr("del", index=index, address=addr, prefixlen=plen)
    if target not in have:
        ipr.addr(
            "add", index=index, address=target[0], prefixlen=target[1], **({"flags": 0x02} if want.address.version == 6 else {})
        )
    if not link["flags"] & 1:
        ipr.link("set", index=index, state="up")
    return index


def remove_device(ipr: Any, name: str) -> None:
    index = _index(ipr, name)
    if index is not None:
        ipr.link("del", index=index)


# -- reading what the kernel has -----------------------------------------------------------


def _neighbours(ipr: Any, index: int, version: int) -> dict[Address, str]:
    out: dict[Address, str] = {}
    for msg in ipr.neigh("dump", ifindex=index, family=family(version)):
        if msg["ifindex"] == index and msg["state"] & NUD_PERMANENT and msg.get_attr("NDA_DST"):
            out[ipaddress.ip_address(msg.get_attr("NDA_DST"))] = str(msg.get_attr("NDA_LLADDR") or "").lower()
    return out


def _fdb(ipr: Any, index: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for msg in ipr.fdb("dump", ifindex=index):
        if msg["ifindex"] != index or msg["family"] != AF_BRIDGE:
            continue
        mac, dst = str(msg.get_attr("NDA_LLADDR") or "").lower(), msg.get_attr("NDA_DST")
        if mac and dst and mac != "00:00:00:00:00:00":
            out[mac] = str(dst)
    return out


@dataclass(frozen=True)
class _Have:
    gateway: str
    oif: int
    onlink: bool
    proto: int


def _routes(ipr: Any, version: int) -> dict[Network, list[_Have]]:
    out: dict[Network, list[_Have]] = {}
    for msg in netlink.routes(ipr, family(version), table=MAIN_TABLE):
        if msg.get_attr("RTA_PRIORITY"):
            continue  # a route with a metric is another route than ours (metric 0)
        dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if version == 4 else "::")
        net = ipaddress.ip_network(f"{dst}/{msg['dst_len']}")
        have = _Have(
            str(msg.get_attr("RTA_GATEWAY") or ""),
            int(msg.get_attr("RTA_OIF") or 0),
            bool(msg["flags"] & RTNH_F_ONLINK),
            msg["proto"],
        )
        out.setdefault(net, []).append(have)
    return out


# -- requests --------------------------------------------------------------------------------


def _neigh(index: int, addr: Address, mac: str | None) -> Any:
    ndmsg, _ = _msgs()
    msg = ndmsg()
    msg["family"] = family(addr.version)
    msg["ifindex"] = index
    msg["state"] = NUD_PERMANENT
    msg["ndm_type"] = RTN_UNICAST
    msg["attrs"] = [("NDA_DST", str(addr))] + ([("NDA_LLADDR", mac)] if mac else [])
    return msg


def _fdb_msg(index: int, mac: str, dst: str) -> Any:
    ndmsg, _ = _msgs()
    msg = ndmsg()
    msg["family"] = AF_BRIDGE
    msg["ifindex"] = index
    msg["state"] = NUD_PERMANENT
    msg["flags"] = NTF_SELF
    msg["attrs"] = [("NDA_LLADDR", mac), ("NDA_DST", dst)]
    return msg


def _route_msg(route: Route | None, dst: Network, oif: int) -> Any:
    _, rtmsg = _msgs()
    msg = rtmsg()
    msg["family"] = family(dst.version)
    msg["dst_len"] = dst.prefixlen
    msg["table"] = MAIN_TABLE
    msg["proto"] = ROUTE_PROTO
    msg["type"] = RTN_UNICAST
    attrs: list[tuple[str, Any]] = [("RTA_DST", str(dst.network_address))]
    if route is not None:
        msg["flags"] = RTNH_F_ONLINK if route.onlink else 0
        attrs.append(("RTA_GATEWAY", str(route.gateway)))
        if oif:
            attrs.append(("RTA_OIF", oif))
    msg["attrs"] = attrs
    return msg


def sync(wanted: Wanted, versions: tuple[int, ...] = (4, 6)) -> Outcome:
    """Bring the devices, neighbours, FDB entries and routes to `wanted`."""
    outcome = Outcome()
    adds_neigh: list[nlbatch.Request] = []
    adds_fdb: list[nlbatch.Request] = []
    adds_route: list[nlbatch.Request] = []
    dels_route: list[nlbatch.Request] = []
    dels_fdb: list[nlbatch.Request] = []
    dels_neigh: list[nlbatch.Request] = []
    gone = (errno.ENOENT, errno.ESRCH)
    with netlink.route() as ipr:
        indexes: dict[str, int] = {}
        for device in wanted.devices:
            indexes[device.name] = ensure_device(ipr, device)
        for device in wanted.devices:
            index = indexes[device.name]
            want_n = wanted.neighbours.get(device.name, {})
            have_n = _neighbours(ipr, index, device.address.version)
            for addr, mac in want_n.items():
                if have_n.get(addr) != mac:
                    adds_neigh.append(
                        nlbatch.Request(
                            _neigh(index, addr, mac),
                            nlbatch.RTM_NEWNEIGH,
                            nlbatch.REPLACE,
                            f"neighbour {addr} {mac} on {device.name}",
                        )
                    )
            for addr in have_n.keys() - want_n.keys():
                dels_neigh.append(
                    nlbatch.Request(_neigh(index, addr, None), nlbatch.RTM_DELNEIGH, 0, f"delete neighbour {addr}", gone)
                )
            want_f = {mac: str(remote) for mac, remote in wanted.fdb.get(device.name, {}).items()}
            have_f = _fdb(ipr, index)
            for mac, remote in want_f.items():
                if have_f.get(mac) != remote:
                    adds_fdb.append(
                        nlbatch.Request(
                            _fdb_msg(index, mac, remote),  # replace: a MAC now behind another node moves
                            nlbatch.RTM_NEWNEIGH,
                            nlbatch.REPLACE,
                            f"FDB {mac} -> {remote} on {device.name}",
                        )
                    )
            for mac in have_f.keys() - want_f.keys():
                dels_fdb.append(
                    nlbatch.Request(_fdb_msg(index, mac, have_f[mac]), nlbatch.RTM_DELNEIGH, 0, f"delete FDB {mac}", gone)
                )
        for version in versions:
            have_r = _routes(ipr, version)
            want_r = {r.dst: r for r in wanted.routes if r.dst.version == version}
            for dst, route in want_r.items():
                oif = 0
                if route.device:
                    found = indexes.get(route.device) or _index(ipr, route.device)
                    if found is None:
                        outcome.failures.append(f"route {dst}: device {route.device} is missing")
                        continue
                    oif = found
                present = have_r.get(dst, [])
                foreign = [h for h in present if h.proto != ROUTE_PROTO]
                if foreign:
                    outcome.blocked.append(f"{dst} (a route of protocol {foreign[0].proto} has that destination)")
                    continue
                mine = next((h for h in present if h.proto == ROUTE_PROTO), None)
                if (
                    mine is not None
                    and mine.gateway == str(route.gateway)
                    and mine.onlink == route.onlink
                    and (not oif or mine.oif == oif)
                ):
                    continue
                adds_route.append(
                    nlbatch.Request(
                        _route_msg(route, dst, oif), nlbatch.RTM_NEWROUTE, nlbatch.REPLACE, f"route {dst} via {route.gateway}"
                    )
                )
            for dst, present in have_r.items():
                if dst not in want_r and any(h.proto == ROUTE_PROTO for h in present):
                    dels_route.append(
                        nlbatch.Request(_route_msg(None, dst, 0), nlbatch.RTM_DELROUTE, 0, f"delete route {dst}", gone)
                    )
    batch = dels_route + adds_neigh + adds_fdb + adds_route + dels_fdb + dels_neigh
    failures = nlbatch.run(batch)
    outcome.failures += [str(f) for f in failures]
    outcome.written = len(adds_neigh) + len(adds_fdb) + len(adds_route)
    outcome.deleted = len(dels_route) + len(dels_fdb) + len(dels_neigh)
    return outcome


def remove_routes(versions: tuple[int, ...] = (4, 6)) -> None:
    """Delete every route of flanneld's protocol (at `--cleanup`)."""
    requests = []
    with netlink.route() as ipr:
        for version in versions:
            for dst, present in _routes(ipr, version).items():
                if any(h.proto == ROUTE_PROTO for h in present):
                    requests.append(
                        nlbatch.Request(
                            _route_msg(None, dst, 0), nlbatch.RTM_DELROUTE, 0, f"delete route {dst}", (errno.ENOENT, errno.ESRCH)
                        )
                    )
    nlbatch.run(requests)
