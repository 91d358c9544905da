"""Subnet leases as flannel keeps them in etcd (pkg/subnet, pkg/lease):

    key    <prefix>/subnets/10.244.3.0-24            (dual stack: 10.244.3.0-24&fd00:10:244:3::-64)
    value  {"PublicIP":"172.20.0.11","PublicIPv6":null,"BackendType":"vxlan",
            "BackendData":{"VNI":1,"VtepMAC":"5e:1a:0c:7f:33:21"}}
    bound to an etcd lease of 24 h, renewed by its owner

The value is written exactly as Go's json.Marshal writes flannel's LeaseAttrs (field order,
`null` for a missing PublicIPv6, BackendData omitted when empty), so flannel's flanneld and
ours can share one etcd.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

from pycni.spec import gokeys

SUBNET_TTL = 24 * 3600  # flannel's subnetTTL
_KEY = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")


@dataclass(frozen=True)
class VtepData:
    """The vxlan backend's BackendData (and BackendV6Data)."""

    vni: int
    mac: str


@dataclass(frozen=True)
class Lease:
    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    backend_type: str
    vtep: VtepData | None = None
    ipv6_subnet: ipaddress.IPv6Network | None = None
    public_ipv6: ipaddress.IPv6Address | None = None
    vtep6: VtepData | None = None
    etcd_lease: int = 0  # the etcd lease the key is bound to
    mod_revision: int = 0

    @property
    def key(self) -> str:
        return subnet_key(self.subnet, self.ipv6_subnet)

    def value(self) -> str:
        return attrs_json(self)


def subnet_key(subnet: ipaddress.IPv4Network, subnet6: ipaddress.IPv6Network | None = None) -> str:
    """flannel's MakeSubnetKey."""
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if subnet6 is not None:
        key += f"&{subnet6.network_address}-{subnet6.prefixlen}"
    return key


def parse_key(key: str) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network | None] | None:
    """flannel's ParseSubnetKey (on a whole etcd key or its last part); None when not a lease."""
    found = _KEY.search(key)
    if not found:
        return None
    try:
        if int(found.group(2)) > 31:
            return None
        subnet = ipaddress.IPv4Network(f"{found.group(1)}/{found.group(2)}")
        subnet6 = None
        if found.group(3):
            if int(found.group(4)) > 127:
                return None
            subnet6 = ipaddress.IPv6Network(f"{found.group(3)}/{found.group(4)}")
    except ValueError:
        return None
    return subnet, subnet6


def _vtep_json(data: VtepData) -> str:
    return json.dumps({"VNI": data.vni, "VtepMAC": data.mac}, separators=(",", ":"))


def attrs_json(lease: Lease) -> str:
    """LeaseAttrs as Go's json.Marshal writes it."""
    parts = [
        f'"PublicIP":"{lease.public_ip}"',
        f'"PublicIPv6":{json.dumps(str(lease.public_ipv6)) if lease.public_ipv6 else "null"}',
    ]
    if lease.backend_type:
        parts.append(f'"BackendType":{json.dumps(lease.backend_type)}')
    if lease.vtep is not None:
        parts.append(f'"BackendData":{_vtep_json(lease.vtep)}')
    if lease.vtep6 is not None:
        parts.append(f'"BackendV6Data":{_vtep_json(lease.vtep6)}')
    return "{" + ",".join(parts) + "}"


def _vtep(raw: Any) -> VtepData | None:
    if not isinstance(raw, dict):
        return None
    vni, mac = gokeys.get(raw, "VNI"), gokeys.get(raw, "VtepMAC")
    if not isinstance(vni, int) or not isinstance(mac, str):
        return None
    return VtepData(vni, mac.lower())


def from_kv(key: str, value: str | bytes, etcd_lease: int = 0, mod_revision: int = 0) -> Lease:
    """A lease from its etcd key and value; ValueError saying what is wrong."""
    subnets = parse_key(key)
    if subnets is None:
        raise ValueError(f"{key!r} is not a subnet lease key")
    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError(f"{key}: the lease is not a JSON object")
    public = gokeys.get(data, "PublicIP")
    public6 = gokeys.get(data, "PublicIPv6")
    try:
        public_ip = ipaddress.IPv4Address(public)
        public_ipv6 = ipaddress.IPv6Address(public6) if public6 else None
    except ValueError:
        raise ValueError(f"{key}: PublicIP {public!r} / PublicIPv6 {public6!r} is not an address") from None
    kind = gokeys.get(data, "BackendType") or ""
    return Lease(
        subnet=subnets[0],
        ipv6_subnet=subnets[1],
        public_ip=public_ip,
        public_ipv6=public_ipv6,
        backend_type=str(kind),
        vtep=_vtep(gokeys.get(data, "BackendData")),
        vtep6=_vtep(gokeys.get(data, "BackendV6Data")),
        etcd_lease=etcd_lease,
        mod_revision=mod_revision,
    )
