"""CNI results of every version, and libcni's rules for converting between them.

One canonical model (the 1.1.0 result, a superset of every other) is parsed from
and rendered to the three wire shapes the spec has had:

- 0.1.0, 0.2.0: ``ip4``/``ip6`` objects, each with its own routes, no interfaces;
- 0.3.0, 0.3.1, 0.4.0: ``interfaces``, ``ips`` (with ``version``), ``routes``, ``dns``;
- 1.0.0, 1.1.0: as 0.4.0 without ``version``; 1.1.0 adds interface ``mtu``,
  ``socketPath``, ``pciID`` and route ``mtu``, ``advmss``, ``priority``, ``table``, ``scope``.

Converting renders the canonical model in the target shape, which is exactly what
libcni's converters do: down to 0.2.0 keeps the first IPv4 and the first IPv6
address and fails when none is left; down to 0.4.0 drops the interface fields 1.1.0
added (routes are one type in libcni and keep theirs).
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pycni.spec import gokeys, ipaddr
from pycni.spec import version as versions
from pycni.spec.errors import CNIError, Code

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LEGACY_VERSIONS = ("0.1.0", "0.2.0")
V04_VERSIONS = ("0.3.0", "0.3.1", "0.4.0")
V1_VERSIONS = ("1.0.0", "1.1.0")


# The fields of libcni's result structs (types/100, types/040, types/020): the keys a
# result is read with, in any case (`pycni.spec.gokeys`).
RESULT_KEYS = ("cniVersion", "interfaces", "ips", "routes", "dns", "ip4", "ip6")
INTERFACE_KEYS = ("name", "mac", "mtu", "sandbox", "socketPath", "pciID")
IP_KEYS = ("version", "interface", "address", "gateway")
ROUTE_KEYS = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
DNS_KEYS = ("nameservers", "domain", "search", "options")
LEGACY_IP_KEYS = ("ip", "gateway", "routes")


def _decode_error(msg: str) -> CNIError:
    return CNIError(Code.DECODING_FAILURE, f"invalid result: {msg}")


def parse_cidr(value: Any, what: str) -> IPInterface:
    """An address in CIDR notation, host bits kept (Go's types.ParseCIDR)."""
    if not isinstance(value, str) or "/" not in value:
        raise _decode_error(f"{what} {value!r} is not an address in CIDR notation")
    try:
        return ipaddr.interface(value)
    except ValueError as exc:
        raise _decode_error(f"{what} {value!r}: {exc}") from None


def parse_ip(value: Any, what: str) -> IPAddress:
    if not isinstance(value, str):
        raise _decode_error(f"{what} {value!r} is not an IP address")
    try:
        return ipaddr.address(value)
    except ValueError:
        raise _decode_error(f"{what} {value!r} is not an IP address") from None


def _opt_uint(data: dict[str, Any], key: str, what: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _decode_error(f"{what} {key} {value!r} is not a non-negative integer")
    return value


def _opt_str(data: dict[str, Any], key: str, what: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _decode_error(f"{what} {key} {value!r} is not a string")
    return value


def _str_list(data: dict[str, Any], key: str, what: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _decode_error(f"{what} {key} must be a list of strings")
    return list(value)


@dataclass
class Interface:
    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""

    @classmethod
    def from_dict(cls, data: Any) -> Interface:
        if not isinstance(data, dict):
            raise _decode_error("an interface must be an object")
        data = gokeys.normalise(data, INTERFACE_KEYS)
        name = data.get("name")
        if not isinstance(name, str):
            raise _decode_error("an interface needs a name")
        return cls(
            name=name,
            mac=_opt_str(data, "mac", "interface"),
            mtu=_opt_uint(data, "mtu", "interface") or 0,
            sandbox=_opt_str(data, "sandbox", "interface"),
            socket_path=_opt_str(data, "socketPath", "interface"),
            pci_id=_opt_str(data, "pciID", "interface"),
        )

    def to_dict(self, v1_fields: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if v1_fields and self.mtu:
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        if v1_fields and self.socket_path:
            out["socketPath"] = self.socket_path
        if v1_fields and self.pci_id:
            out["pciID"] = self.pci_id
        return out


@dataclass
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None

    @property
    def family(self) -> int:
        return self.address.version

    @classmethod
    def from_dict(cls, data: Any) -> IPConfig:
        if not isinstance(data, dict):
            raise _decode_error("an ips entry must be an object")
        data = gokeys.normalise(data, IP_KEYS)
        if "address" not in data:
            raise _decode_error("an ips entry needs an address")
        gw = data.get("gateway")
        return cls(
            address=parse_cidr(data["address"], "address"),
            gateway=parse_ip(gw, "gateway") if gw not in (None, "") else None,
            interface=_opt_uint(data, "interface", "ips entry"),
        )

    def to_dict(self, with_version: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if with_version:
            out["version"] = str(self.family)
        if self.interface is not None:
            out["interface"] = self.interface
        out["address"] = str(self.address)
        if self.gateway is not None:
            out["gateway"] = str(self.gateway)
        return out


@dataclass
class Route:
    dst: IPInterface
    gw: IPAddress | None = None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Route:
        if not isinstance(data, dict):
            raise _decode_error("a route must be an object")
        data = gokeys.normalise(data, ROUTE_KEYS)
        if "dst" not in data:
            raise _decode_error("a route needs a dst")
        gw = data.get("gw")
        return cls(
            dst=parse_cidr(data["dst"], "route dst"),
            gw=parse_ip(gw, "route gw") if gw not in (None, "") else None,
            mtu=_opt_uint(data, "mtu", "route") or 0,
            advmss=_opt_uint(data, "advmss", "route") or 0,
            priority=_opt_uint(data, "priority", "route") or 0,
            table=_opt_uint(data, "table", "route"),
            scope=_opt_uint(data, "scope", "route"),
        )

    def to_dict(self, extended: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"dst": str(self.dst)}
        if self.gw is not None:
            out["gw"] = str(self.gw)
        if extended:
            for key in ("mtu", "advmss", "priority"):
                if getattr(self, key):
                    out[key] = getattr(self, key)
            if self.table is not None:
                out["table"] = self.table
            if self.scope is not None:
                out["scope"] = self.scope
        return out

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return self.dst.network


@dataclass
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Any) -> DNS:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise _decode_error("dns must be an object")
        data = gokeys.normalise(data, DNS_KEYS)
        return cls(
            nameservers=_str_list(data, "nameservers", "dns"),
            domain=_opt_str(data, "domain", "dns"),
            search=_str_list(data, "search", "dns"),
            options=_str_list(data, "options", "dns"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)


@dataclass
class Result:
    """A successful ADD's result in the canonical (1.1.0) model."""

    cni_version: str = versions.CURRENT
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)

    # -- parsing -----------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, default_version: str | None = None) -> Result:
        """Parse a result of any version; its own cniVersion decides the shape."""
        if not isinstance(data, dict):
            raise _decode_error("a result must be a JSON object")
        data = gokeys.normalise(data, RESULT_KEYS)
        ver = data.get("cniVersion") or default_version or versions.CURRENT
        if not isinstance(ver, str):
            raise _decode_error(f"cniVersion {ver!r} is not a string")
        if ver not in versions.ALL_VERSIONS:
            raise CNIError(
                Code.INCOMPATIBLE_CNI_VERSION,
                f"unsupported result version {ver!r}",
                "supported: " + ", ".join(versions.ALL_VERSIONS),
            )
        if ver in LEGACY_VERSIONS:
            return cls._from_legacy(data, ver)
        return cls._from_current(data, ver)

    @classmethod
    def _from_current(cls, data: dict[str, Any], ver: str) -> Result:
        def objects(key: str) -> list[Any]:
            value = data.get(key)
            if value is None:
                return []
            if not isinstance(value, list):
                raise _decode_error(f"{key} must be a list")
            return value

        return cls(
            cni_version=ver,
            interfaces=[Interface.from_dict(i) for i in objects("interfaces")],
            ips=[IPConfig.from_dict(i) for i in objects("ips")],
            routes=[Route.from_dict(r) for r in objects("routes")],
            dns=DNS.from_dict(data.get("dns")),
        )

    @classmethod
    def _from_legacy(cls, data: dict[str, Any], ver: str) -> Result:
        result = cls(cni_version=ver, dns=DNS.from_dict(data.get("dns")))
        for key in ("ip4", "ip6"):
            block = data.get(key)
            if block is None:
                continue
            if isinstance(block, dict):
                block = gokeys.normalise(block, LEGACY_IP_KEYS)
            if not isinstance(block, dict) or "ip" not in block:
                raise _decode_error(f"{key} must be an object with an ip")
            gw = block.get("gateway")
            result.ips.append(
                IPConfig(
                    address=parse_cidr(block["ip"], f"{key}.ip"),
                    gateway=parse_ip(gw, f"{key}.gateway") if gw not in (None, "") else None,
                )
            )
            routes = block.get("routes") or []
            if not isinstance(routes, list):
                raise _decode_error(f"{key}.routes must be a list")
            for r in routes:
                route = Route.from_dict(r)
                result.routes.append(Route(dst=route.dst, gw=route.gw))
        return result

    # -- rendering ---------------------------------------------------------
    def to_dict(self, version: str | None = None) -> dict[str, Any]:
        """This result in the wire shape of `version` (default: its own)."""
        ver = version or self.cni_version
        if ver not in versions.ALL_VERSIONS:
            raise CNIError(
                Code.INCOMPATIBLE_CNI_VERSION,
                f"cannot convert result to version {ver!r}",
                "supported: " + ", ".join(versions.ALL_VERSIONS),
            )
        if ver in LEGACY_VERSIONS:
            return self._to_legacy(ver)
        v1 = ver in V1_VERSIONS
        out: dict[str, Any] = {"cniVersion": ver}
        if self.interfaces:
            out["interfaces"] = [i.to_dict(v1_fields=v1) for i in self.interfaces]
        if self.ips:
            out["ips"] = [ip.to_dict(with_version=not v1) for ip in self.ips]
        if self.routes:
            out["routes"] = [r.to_dict() for r in self.routes]
        out["dns"] = self.dns.to_dict()
        return out

    def _to_legacy(self, ver: str) -> dict[str, Any]:
        first: dict[int, IPConfig] = {}
        for ip in self.ips:
            first.setdefault(ip.family, ip)
        if not first:
            raise CNIError(
                Code.INCOMPATIBLE_CNI_VERSION,
                f"cannot convert result to version {ver}: no valid IP addresses",
            )
        out: dict[str, Any] = {"cniVersion": ver}
        for family, key in ((4, "ip4"), (6, "ip6")):
            if family not in first:
                continue
            chosen = first[family]
            block: dict[str, Any] = {"ip": str(chosen.address)}
            if chosen.gateway is not None:
                block["gateway"] = str(chosen.gateway)
            routes = [r.to_dict(extended=False) for r in self.routes if r.dst.version == family]
            if routes:
                block["routes"] = routes
            out[key] = block
        out["dns"] = self.dns.to_dict()
        return out

    def convert(self, version: str) -> Result:
        """A copy of this result as libcni's GetAsVersion(version) would give it."""
        return Result.from_dict(self.to_dict(version))

    def in_version(self, version: str) -> Result:
        """This result as a reader of its rendering in `version` gets it: the result itself
        when that shape keeps all of it (no copy: what a plugin hands to the one that
        delegated to it in-process), else the conversion."""
        keeps_all = version in V1_VERSIONS or (
            version in V04_VERSIONS and not any(i.mtu or i.socket_path or i.pci_id for i in self.interfaces)
        )
        if not keeps_all:
            return self.convert(version)
        return self if self.cni_version == version else dataclasses.replace(self, cni_version=version)

    def copy(self) -> Result:
        return copy.deepcopy(self)

    # -- helpers for plugins -----------------------------------------------
    def container_interface(self, ifname: str, netns: str | None = None) -> int | None:
        """Index of the sandbox interface called `ifname`, as chained plugins look it up."""
        for idx, intf in enumerate(self.interfaces):
            if intf.name == ifname and intf.sandbox and (netns is None or intf.sandbox == netns):
                return idx
        return None


def version_result(cni_version: str, supported: tuple[str, ...]) -> dict[str, Any]:
    """The VERSION command's answer."""
    return {"cniVersion": cni_version, "supportedVersions": list(supported)}
