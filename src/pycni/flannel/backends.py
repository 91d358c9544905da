"""The two backends, as the wanted kernel state of a node given every lease in etcd.

vxlan (pkg/backend/vxlan): a device `flannel.<VNI>` (IPv6: `flannel-v6.<VNI>`) over the
external interface, local address the node's, UDP 8472 unless Port says otherwise, MTU 50
below the underlay's (or below Backend.MTU), the node's VTEP MAC, and the lease's `.0` address
as /32 (/128). For every remote vxlan lease:

    neighbour  <subnet .0> lladdr <its VtepMAC> PERMANENT            dev flannel.<VNI>
    FDB        <its VtepMAC> dst <its PublicIP> self permanent      dev flannel.<VNI>
    route      <subnet> via <subnet .0> dev flannel.<VNI> onlink

With DirectRouting, a peer on one of the external interface's own subnets gets the plain route
`<subnet> via <its PublicIP>` instead (no encapsulation), as flannel's ip.DirectRouting decides.

host-gw (pkg/backend/hostgw): for every remote host-gw lease, `<subnet> via <its PublicIP> dev
<external interface>`. Leases of another backend type are ignored, as flannel does.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from pycni.flannel.config import NetworkConfig
from pycni.flannel.iface import ExtIface
from pycni.flannel.kernel import Route, VxlanDevice, Wanted
from pycni.flannel.lease import Lease, VtepData

ENCAP_OVERHEAD = 50
ENCAP_OVERHEAD6 = 70  # VXLAN over IPv6: the kernel refuses a device MTU above the underlay's minus 70


def device_name(vni: int, version: int = 4) -> str:
    return f"flannel.{vni}" if version == 4 else f"flannel-v6.{vni}"


def new_mac() -> str:
    """A random locally administered unicast MAC (flannel's mac.NewHardwareAddr)."""
    octets = [random.randrange(256) for _ in range(6)]
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{o:02x}" for o in octets)


def device_mtu(config: NetworkConfig, ext: ExtIface, version: int = 4) -> int:
    return (config.backend.mtu or ext.mtu) - (ENCAP_OVERHEAD if version == 4 else ENCAP_OVERHEAD6)


def mtu(config: NetworkConfig, ext: ExtIface) -> int:
    """The MTU written to subnet.env: the VXLAN device's (flannel's), the smaller of the two with
    IPv6 (where flannel would give pods 20 bytes more than its IPv6 device carries)."""
    if config.backend.type == "vxlan":
        return device_mtu(config, ext, 6 if config.enable_ipv6 else 4)
    return ext.mtu


@dataclass(frozen=True)
class Local:
    """This node: its lease and the MACs of its VXLAN devices."""

    lease: Lease
    mac: str = ""
    mac6: str = ""


def attrs(config: NetworkConfig, ext: ExtIface, mac: str, mac6: str) -> tuple[VtepData | None, VtepData | None]:
    if config.backend.type != "vxlan":
        return None, None
    vni = config.backend.vni
    return VtepData(vni, mac), (VtepData(vni, mac6) if config.enable_ipv6 else None)


def _direct(ext: ExtIface, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
    return address is not None and any(address in net for net in ext.networks if net.version == address.version)


def wanted(config: NetworkConfig, ext: ExtIface, local: Local, leases: list[Lease]) -> Wanted:
    out = Wanted()
    kind = config.backend.type
    remote = [lease for lease in leases if lease.subnet != local.lease.subnet and lease.backend_type == kind]
    if kind == "host-gw":
        for lease in remote:
            out.routes.append(Route(lease.subnet, lease.public_ip, ext.name))
            if config.enable_ipv6 and lease.ipv6_subnet is not None and lease.public_ipv6 is not None:
                out.routes.append(Route(lease.ipv6_subnet, lease.public_ipv6, ext.name))
        return out
    backend = config.backend
    families: list[tuple[int, str, object, object]] = [(4, local.mac, local.lease.subnet, ext.address)]
    if config.enable_ipv6:
        families.append((6, local.mac6, local.lease.ipv6_subnet, ext.address6))
    for version, mac, subnet, underlay in families:
        assert isinstance(subnet, ipaddress.IPv4Network | ipaddress.IPv6Network)
        assert isinstance(underlay, ipaddress.IPv4Address | ipaddress.IPv6Address)
        name = device_name(backend.vni, version)
        address = ipaddress.ip_interface(f"{subnet.network_address}/{subnet.max_prefixlen}")
        out.devices.append(
            VxlanDevice(
                name,
                backend.vni,
                backend.udp_port,
                underlay,
                ext.index,
                device_mtu(config, ext, version),
                mac,
                address,
                backend.learning,
                backend.gbp,
            )
        )
        neighbours = out.neighbours.setdefault(name, {})
        fdb = out.fdb.setdefault(name, {})
        for lease in remote:
            dst = lease.subnet if version == 4 else lease.ipv6_subnet
            public = lease.public_ip if version == 4 else lease.public_ipv6
            vtep = lease.vtep if version == 4 else lease.vtep6
            if dst is None or public is None:
                continue
            if backend.direct_routing and _direct(ext, public):
                out.routes.append(Route(dst, public))
                continue
            if vtep is None:
                continue  # a vxlan lease without BackendData: nothing to reach it by
            neighbours[dst.network_address] = vtep.mac
            fdb[vtep.mac] = public
            out.routes.append(Route(dst, dst.network_address, name, onlink=True))
    return out
