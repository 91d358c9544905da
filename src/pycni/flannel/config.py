"""The network configuration flanneld reads from `<prefix>/config`, with flannel's defaults and
validation (pkg/subnet/config.go, the vxlan backend's VXLANConfig) and stricter errors:

    {"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1}}

Keys match case-insensitively, as Go's encoding/json matches them. Where flannel silently
ignores a key it does not know (a typo such as "SubnetLenght" or "DirectRoute"), this refuses
it by name: a configuration that says one thing and does another is worse than an error.
Every error is a `ConfigError` whose message names the key.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from pycni.spec import gokeys

SUPPORTED_BACKENDS = ("vxlan", "host-gw")
# What flannel itself ships besides those, and why each is refused here.
_UNSUPPORTED = {
    "udp": "the udp backend (a user-space tunnel, deprecated by flannel) is not implemented",
    "wireguard": "the wireguard backend is not implemented",
    "ipip": "the ipip backend is not implemented",
    "ipsec": "the ipsec backend (strongSwan) is not implemented",
    "alloc": "the alloc backend (subnets without a dataplane) is not implemented",
    "extension": "the extension backend (external scripts) is not implemented",
    "tencent-vpc": "the tencent-vpc backend (a cloud provider's routes) is not implemented",
    "aws-vpc": "the aws-vpc backend (a cloud provider's routes) is not implemented",
    "gce": "the gce backend (a cloud provider's routes) is not implemented",
    "ali-vpc": "the ali-vpc backend (a cloud provider's routes) is not implemented",
}
_TOP_KEYS = (
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "IPv6Network",
    "SubnetMin",
    "SubnetMax",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "SubnetLen",
    "IPv6SubnetLen",
    "Backend",
)
_BACKEND_KEYS = {
    "vxlan": ("Type", "VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting"),
    "host-gw": ("Type",),
}
VXLAN_DEFAULT_VNI = 1
VXLAN_DEFAULT_PORT = 8472  # the kernel's default, which flannel relies on when Port is 0
MAX_VNI = (1 << 24) - 1


def kernel_has_ipip() -> bool:
    """Whether this kernel has IPIP tunnels (loaded or built in: /sys/module/ipip; or as a module to load)."""
    import glob
    import os

    release = os.uname().release
    return os.path.isdir("/sys/module/ipip") or bool(glob.glob(f"/lib/modules/{release}/kernel/net/ipv4/ipip.ko*"))


class ConfigError(ValueError):
    """An invalid network configuration; the message names the key."""


@dataclass
class BackendConfig:
    type: str
    vni: int = VXLAN_DEFAULT_VNI
    port: int = 0  # 0: the kernel's default (8472)
    mtu: int = 0  # 0: the external interface's
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False

    @property
    def udp_port(self) -> int:
        return self.port or VXLAN_DEFAULT_PORT


@dataclass
class NetworkConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend: BackendConfig
    enable_ipv6: bool = False
    enable_nftables: bool = False
    ipv6_network: ipaddress.IPv6Network | None = None
    ipv6_subnet_len: int = 0
    ipv6_subnet_min: ipaddress.IPv6Address | None = None
    ipv6_subnet_max: ipaddress.IPv6Address | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def subnet_fits(self, subnet: ipaddress.IPv4Network) -> bool:
        """flannel's isSubnetConfigCompat: within SubnetMin..SubnetMax, of SubnetLen."""
        return subnet.prefixlen == self.subnet_len and self.subnet_min <= subnet.network_address <= self.subnet_max

    def ipv6_subnet_fits(self, subnet: ipaddress.IPv6Network | None) -> bool:
        if not self.enable_ipv6:
            return subnet is None
        assert self.ipv6_subnet_min is not None and self.ipv6_subnet_max is not None
        return (
            subnet is not None
            and subnet.prefixlen == self.ipv6_subnet_len
            and self.ipv6_subnet_min <= subnet.network_address <= self.ipv6_subnet_max
        )


def _lookup(data: dict[str, Any], known: tuple[str, ...], where: str) -> dict[str, Any]:
    """`data` keyed by the canonical names of `known` (matched case-insensitively; the last of
    two spellings wins, as in Go); an unknown key is an error naming it."""
    canonical = {gokeys.fold(k): k for k in known}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = key if key in known else canonical.get(gokeys.fold(key))
        if name is None:
            raise ConfigError(f"unknown key {key!r} in {where}: the known keys are {', '.join(known)}")
        out[name] = value
    return out


def _bool(values: dict[str, Any], key: str, default: bool, where: str = "") -> bool:
    value = values.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}{key} must be true or false, not {json.dumps(value)}")
    return value


def _uint(values: dict[str, Any], key: str, where: str = "", maximum: int = (1 << 32) - 1) -> int:
    value = values.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > maximum:
        raise ConfigError(f"{where}{key} must be an integer from 0 to {maximum}, not {json.dumps(value)}")
    return value


def _network(values: dict[str, Any], key: str, version: int) -> Any:
    value = values.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a CIDR string such as {'10.244.0.0/16' if version == 4 else 'fd00:10:244::/56'}")
    try:
        net = ipaddress.ip_network(value, strict=False)  # Go's ParseCIDR keeps the network part
    except ValueError:
        raise ConfigError(f"{key} {value!r} is not a network in CIDR notation") from None
    if net.version != version or "/" not in value:
        raise ConfigError(f"{key} {value!r} is not an IPv{version} network in CIDR notation")
    return net


def _address(values: dict[str, Any], key: str, version: int) -> Any:
    value = values.get(key)
    if value is None or value == "":
        return None
    try:
        addr = ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        addr = None
    if addr is None or addr.version != version:
        raise ConfigError(f"{key} {json.dumps(value)} is not an IPv{version} address")
    return addr


def parse_backend(raw: Any) -> BackendConfig:
    """The `Backend` object: its type (udp when absent, as flannel) and that type's keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f'Backend must be an object such as {{"Type": "vxlan"}}, not {json.dumps(raw)}')
    kind = gokeys.get(raw, "Type")
    if kind is None:
        kind = "udp" if not raw else ""
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"Backend.Type must be one of {', '.join(SUPPORTED_BACKENDS)}, not {json.dumps(kind)}")
    if kind not in SUPPORTED_BACKENDS:
        why = _UNSUPPORTED.get(kind, f"{kind!r} is not a flannel backend type")
        if kind == "ipip" and not kernel_has_ipip():
            why = "the ipip backend needs the kernel's IPIP tunnels (CONFIG_NET_IPIP), which this kernel lacks"
        raise ConfigError(f"Backend.Type {kind!r} is not supported: {why}; supported backends: {', '.join(SUPPORTED_BACKENDS)}")
    values = _lookup(raw, _BACKEND_KEYS[kind], f"Backend (type {kind})")
    out = BackendConfig(kind)
    if kind == "vxlan":
        where = "Backend."
        if values.get("VNI") is not None:
            out.vni = _uint(values, "VNI", where, MAX_VNI)
        out.port = _uint(values, "Port", where, 65535)
        out.mtu = _uint(values, "MTU", where, 65535)
        if out.mtu and out.mtu < 118:
            raise ConfigError(f"Backend.MTU {out.mtu} is too small: the VXLAN device gets MTU-50, and IPv4 needs 68")
        out.gbp = _bool(values, "GBP", False, where)
        out.learning = _bool(values, "Learning", False, where)
        out.direct_routing = _bool(values, "DirectRouting", False, where)
    return out


def parse(text: str | bytes) -> NetworkConfig:
    """Parse and check `<prefix>/config` as flannel's ParseConfig + CheckNetworkConfig do."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the network configuration is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("the network configuration must be a JSON object")
    values = _lookup(data, _TOP_KEYS, "the network configuration")
    if not _bool(values, "EnableIPv4", True):
        raise ConfigError(
            "EnableIPv4 false (IPv6 only) is not supported with leases in etcd: flannel's etcd subnet manager"
            " keys every lease by its IPv4 subnet; enable IPv4 beside IPv6"
        )
    enable_ipv6 = _bool(values, "EnableIPv6", False)

    network = _network(values, "Network", 4)
    if network is None:
        raise ConfigError('Network is missing: set it to the pods\' IPv4 network, e.g. "Network": "10.244.0.0/16"')
    subnet_len, smin, smax = _ranges(
        network, _uint(values, "SubnetLen", "", 32), _address(values, "SubnetMin", 4), _address(values, "SubnetMax", 4), ""
    )
    backend = parse_backend(values.get("Backend"))
    config = NetworkConfig(network, subnet_len, smin, smax, backend, raw=data)
    config.enable_nftables = _bool(values, "EnableNFTables", False)
    if enable_ipv6:
        network6 = _network(values, "IPv6Network", 6)
        if network6 is None:
            raise ConfigError('IPv6Network is missing (EnableIPv6 is true): set it, e.g. "IPv6Network": "fd00:10:244::/56"')
        config.enable_ipv6 = True
        config.ipv6_network = network6
        config.ipv6_subnet_len, config.ipv6_subnet_min, config.ipv6_subnet_max = _ranges(
            network6,
            _uint(values, "IPv6SubnetLen", "", 128),
            _address(values, "IPv6SubnetMin", 6),
            _address(values, "IPv6SubnetMax", 6),
            "IPv6",
        )
    return config


def _ranges(network: Any, subnet_len: int, smin: Any, smax: Any, v6: str) -> tuple[int, Any, Any]:
    """SubnetLen, SubnetMin and SubnetMax (or their IPv6 forms) with flannel's defaults, checked."""
    bits = network.max_prefixlen
    most, smallest, default_len = (30, 28, 24) if not v6 else (126, 124, 64)
    name = f"{v6}SubnetLen"
    if subnet_len:
        if subnet_len > most:
            raise ConfigError(
                f"{name} {subnet_len} is out of range: at most {most}, so that each host has a tunnel and a bridge address"
            )
        if subnet_len < network.prefixlen + 2:
            raise ConfigError(
                f"{name} {subnet_len} is out of range for {v6}Network {network}: at least {network.prefixlen + 2},"
                " so that the network holds at least four subnets (the first one is never leased)"
            )
    elif network.prefixlen > smallest:
        raise ConfigError(f"{v6}Network {network} is too small: flannel needs at least a /{smallest}")
    else:
        subnet_len = default_len if network.prefixlen <= default_len - 2 else network.prefixlen + 2
    size = 1 << (bits - subnet_len)
    first = network.network_address
    last = network.network_address + (network.num_addresses - size)
    for key, value in ((f"{v6}SubnetMin", smin), (f"{v6}SubnetMax", smax)):
        if value is not None and value not in network:
            raise ConfigError(f"{key} {value} is not in the range of the {v6}Network {network}")
        if value is not None and int(value) % size:
            raise ConfigError(f"{key} {value} is not on a {name} boundary (/{subnet_len})")
    smin = smin if smin is not None else first + size
    smax = smax if smax is not None else last
    if smin > smax:
        raise ConfigError(f"{v6}SubnetMin {smin} is above {v6}SubnetMax {smax}: no subnet could ever be leased")
    return subnet_len, smin, smax
