"""host-local's configuration: range sets, routes, the data directory, requested addresses.

Ranges come from, in this order: the `ipRanges` capability (runtimeConfig), the legacy
single range at the top of `ipam` (`subnet`, `rangeStart`, `rangeEnd`, `gateway`), then
`ipam.ranges`. Each range set is one address for the container, so a dual-stack
network has two. Unlike the reference (which accepts a subnet with host bits and then
counts from them), a subnet must be a network address: every mistake is code 7 naming
the range set and the value.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pycni.skel import CmdArgs
from pycni.spec import ipaddr
from pycni.spec import version as versions
from pycni.spec.config import Fields
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import IPAddress, Route

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_DATA_DIR = "/var/lib/cni/networks"


def _bad(where: str, msg: str) -> CNIError:
    return CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid range set {where}: {msg}")


@dataclass
class Range:
    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.subnet.version and int(self.start) <= int(ip) <= int(self.end)

    def overlaps(self, other: Range) -> bool:
        if self.subnet.version != other.subnet.version:
            return False
        return self.contains(other.start) or self.contains(other.end) or other.contains(self.start) or other.contains(self.end)

    def size(self) -> int:
        """How many addresses can be handed out (the gateway is never handed out)."""
        return int(self.end) - int(self.start) + 1 - (1 if self.contains(self.gateway) else 0)

    def __str__(self) -> str:
        return f"{self.subnet} ({self.start}-{self.end})"

    @classmethod
    def parse(cls, data: Any, where: str) -> Range:
        if not isinstance(data, dict):
            raise _bad(where, f"a range must be an object with a subnet, not {data!r}")
        raw = Fields(data, where)
        text = raw.get_str("subnet", required=True)
        try:
            iface = ipaddr.interface(text)
        except ValueError:
            raise _bad(where, f"subnet {text!r} is not a network in CIDR notation") from None
        subnet = iface.network
        if iface.ip != subnet.network_address:
            raise _bad(where, f"subnet {text} has host bits set: did you mean {subnet}?")
        if subnet.prefixlen > subnet.max_prefixlen - 2:
            raise _bad(where, f"network {subnet} too small to allocate from (at most /{subnet.max_prefixlen - 2})")

        def address(key: str) -> IPAddress | None:
            value = raw.get_ip(key)
            if value is None:
                return None
            if value.version != subnet.version or value not in subnet:
                raise _bad(where, f"{key} {value} not in network {subnet}")
            return value

        gateway = address("gateway") or subnet.network_address + 1
        start = address("rangeStart") or subnet.network_address + 1
        last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
        end = address("rangeEnd") or last
        if int(end) < int(start):
            raise _bad(where, f"rangeEnd {end} is before rangeStart {start}")
        return cls(subnet, start, end, gateway)


@dataclass
class RangeSet:
    ranges: list[Range]

    def range_for(self, ip: IPAddress) -> Range | None:
        return next((r for r in self.ranges if r.contains(ip)), None)

    def contains(self, ip: IPAddress) -> bool:
        return self.range_for(ip) is not None

    @property
    def version(self) -> int:
        return self.ranges[0].subnet.version

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.ranges)

    @classmethod
    def parse(cls, data: Any, where: str) -> RangeSet:
        if not isinstance(data, list) or not data:
            raise _bad(where, "a range set must be a non-empty list of ranges")
        ranges = [Range.parse(item, f"{where}[{i}]") for i, item in enumerate(data)]
        if len({r.subnet.version for r in ranges}) > 1:
            raise _bad(where, "mixed address families")
        for i, a in enumerate(ranges):
            for b in ranges[i + 1 :]:
                if a.overlaps(b):
                    raise _bad(where, f"subnets {a} and {b} overlap")
        return cls(ranges)


@dataclass
class Requested:
    """An address asked for, and where it came from (for the error message)."""

    ip: IPAddress
    source: str

    @property
    def code(self) -> int:
        return Code.INVALID_ENVIRONMENT_VARIABLES if self.source.startswith("CNI_ARGS") else Code.INVALID_NETWORK_CONFIG


@dataclass
class Config:
    network: str
    range_sets: list[RangeSet]
    routes: list[Route] = field(default_factory=list)
    data_dir: str = DEFAULT_DATA_DIR
    resolv_conf: str = ""
    requested: list[Requested] = field(default_factory=list)


def _parse_routes(ipam: Fields) -> list[Route]:
    routes = []
    for i, item in enumerate(ipam.get_list("routes")):
        try:
            routes.append(Route.from_dict(item))
        except CNIError as exc:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid ipam.routes[{i}]: {exc.msg}") from None
    return routes


def _parse_ip(text: Any, source: str) -> IPAddress:
    code = Code.INVALID_ENVIRONMENT_VARIABLES if source.startswith("CNI_ARGS") else Code.INVALID_NETWORK_CONFIG
    if isinstance(text, str):
        try:
            # The `ips` capability may carry a prefix length, which host-local ignores.
            return ipaddr.interface(text).ip if "/" in text else ipaddr.address(text)
        except ValueError:
            pass
    raise CNIError(code, f"{source}: {text!r} is not an IP address")


def requested_ips(call: CmdArgs) -> list[Requested]:
    out: list[Requested] = []
    if call.args:
        value = call.cni_args_dict(known=("IP",)).get("IP", "")
        if value:
            out.append(Requested(_parse_ip(value, "CNI_ARGS IP"), "CNI_ARGS IP"))
    for text in call.conf.args_cni.get_list("ips"):
        out.append(Requested(_parse_ip(text, "args.cni.ips"), "args.cni.ips"))
    for text in call.conf.runtime_config.get_list("ips"):
        out.append(Requested(_parse_ip(text, "runtimeConfig.ips"), "runtimeConfig.ips"))
    return out


def load(call: CmdArgs, strict: bool = True) -> Config:
    """The configuration; with `strict=False` (DEL, GC) broken ranges are tolerated,
    since releasing needs only the network name and the data directory."""
    if not isinstance(call.conf.fields.raw("ipam"), dict):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "IPAM config missing 'ipam' key")
    ipam = call.conf.ipam
    config = Config(
        network=call.conf.name,
        range_sets=[],
        data_dir=ipam.get_path("dataDir") or DEFAULT_DATA_DIR,
        resolv_conf=ipam.get_path("resolvConf"),
    )
    try:
        config.range_sets = _range_sets(call, ipam)
        config.routes = _parse_routes(ipam)
        if strict:
            config.requested = requested_ips(call)
    except CNIError:
        if strict:
            raise
    return config


def _range_sets(call: CmdArgs, ipam: Fields) -> list[RangeSet]:
    raw: list[tuple[Any, str]] = []
    for i, item in enumerate(call.conf.runtime_config.get_list("ipRanges")):
        raw.append((item, f"runtimeConfig.ipRanges[{i}]"))
    if "subnet" in ipam:
        legacy = {k: ipam.raw(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}
        raw.append(([legacy], "ipam (subnet)"))
    for i, item in enumerate(ipam.get_list("ranges")):
        raw.append((item, f"ipam.ranges[{i}]"))
    if not raw:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "no IP ranges specified: set ipam.ranges (or ipam.subnet)")
    sets = [RangeSet.parse(item, where) for item, where in raw]
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            if a.overlaps(sets[j]):
                raise CNIError(Code.INVALID_NETWORK_CONFIG, f"range set {raw[i][1]} ({a}) overlaps with {raw[j][1]} ({sets[j]})")
    families = [s.version for s in sets]
    if max(families.count(4), families.count(6)) > 1 and not versions.at_least(call.cni_version, "0.3.0"):
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG, f"CNI version {call.cni_version} does not support more than 1 address per family"
        )
    return sets
