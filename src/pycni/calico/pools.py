"""IP pools: validation and defaults of the IPPool resource, and Calico's default pools.

calico/node creates `default-ipv4-ippool` (192.168.0.0/16, blockSize 26, natOutgoing)
at start-up when the datastore has no IPv4 pool; pycni has no calico/node, so IPAM
does it on the first assignment, reading the same CALICO_IPV4POOL_* variables from
the plugin's environment (and CALICO_IPV6POOL_* for IPv6, where calico/node picks a
random unique-local /48 when no CIDR is given).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pycni.calico import selector
from pycni.calico.datastore import Datastore
from pycni.calico.model import IPNetwork
from pycni.calico.resources import IPPOOL, Resource, ResourceError, Resources
from pycni.spec import ipaddr

DEFAULT_IPV4_POOL_CIDR = "192.168.0.0/16"
DEFAULT_IPV4_POOL_NAME = "default-ipv4-ippool"
DEFAULT_IPV6_POOL_NAME = "default-ipv6-ippool"
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
BLOCK_SIZE_RANGE = {4: (20, 32), 6: (116, 128)}
ENCAP_MODES = {"always": "Always", "crosssubnet": "CrossSubnet", "never": "Never", "": "Never", "off": "Never"}
ALLOWED_USES = ("Workload", "Tunnel", "LoadBalancer")


class PoolError(ValueError):
    """An invalid IPPool: the message names the field and the value."""


@dataclass
class Pool:
    name: str
    cidr: IPNetwork
    block_size: int
    node_selector: str = "all()"
    nat_outgoing: bool = False
    disabled: bool = False
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"
    disable_bgp_export: bool = False
    allowed_uses: list[str] = field(default_factory=lambda: ["Workload", "Tunnel"])

    @property
    def version(self) -> int:
        return self.cidr.version

    def selects(self, labels: Mapping[str, str]) -> bool:
        return selector.matches(self.node_selector, labels)

    def block_of(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> IPNetwork:
        return ipaddress.ip_network(f"{ip}/{self.block_size}", strict=False)

    def blocks(self) -> int:
        return 1 << (self.block_size - self.cidr.prefixlen)

    def nth_block(self, index: int) -> IPNetwork:
        size = 1 << (self.cidr.max_prefixlen - self.block_size)
        return ipaddress.ip_network(f"{self.cidr.network_address + index * size}/{self.block_size}")

    @classmethod
    def from_resource(cls, obj: Resource) -> Pool:
        spec = obj.get("spec") or {}
        cidr = ipaddr.network(spec["cidr"], strict=False)
        return cls(
            name=str(obj["metadata"]["name"]),
            cidr=cidr,
            block_size=int(spec.get("blockSize") or DEFAULT_BLOCK_SIZE[cidr.version]),
            node_selector=str(spec.get("nodeSelector") or "all()"),
            nat_outgoing=bool(spec.get("natOutgoing", False)),
            disabled=bool(spec.get("disabled", False)),
            ipip_mode=str(spec.get("ipipMode") or "Never"),
            vxlan_mode=str(spec.get("vxlanMode") or "Never"),
            disable_bgp_export=bool(spec.get("disableBGPExport", False)),
            allowed_uses=list(spec.get("allowedUses") or ["Workload", "Tunnel"]),
        )


def _bool(spec: dict[str, Any], key: str) -> bool:
    value = spec.get(key, False)
    if not isinstance(value, bool):
        raise PoolError(f"IPPool spec.{key}: {value!r} is not a boolean")
    return value


def normalize(obj: Resource) -> Resource:
    """An IPPool resource with Calico's defaults filled in and every field checked."""
    if obj.get("kind", "IPPool") != "IPPool":
        raise PoolError(f"expected kind IPPool, got {obj.get('kind')!r}")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise PoolError("IPPool metadata.name is required")
    spec = dict(obj.get("spec") or {})
    text = spec.get("cidr")
    if not isinstance(text, str):
        raise PoolError(f"IPPool {name}: spec.cidr is required")
    try:
        cidr = ipaddr.network(text, strict=False)
    except ValueError:
        raise PoolError(f"IPPool {name}: spec.cidr {text!r} is not a CIDR") from None
    version = cidr.version
    size = spec.get("blockSize", DEFAULT_BLOCK_SIZE[version])
    low, high = BLOCK_SIZE_RANGE[version]
    if not isinstance(size, int) or isinstance(size, bool) or not low <= size <= high:
        raise PoolError(f"IPPool {name}: spec.blockSize {size!r}: IPv{version} block size must be between {low} and {high}")
    if cidr.prefixlen > size:
        raise PoolError(f"IPPool {name}: spec.cidr {cidr} is smaller than its blockSize /{size}")
    node_selector = spec.get("nodeSelector") or "all()"
    try:
        selector.parse(str(node_selector))
    except selector.SelectorError as exc:
        raise PoolError(f"IPPool {name}: spec.nodeSelector: {exc}") from None
    for key in ("ipipMode", "vxlanMode"):
        mode = ENCAP_MODES.get(str(spec.get(key, "")).lower())
        if mode is None:
            raise PoolError(f"IPPool {name}: spec.{key} {spec.get(key)!r} is not one of Always, CrossSubnet, Never")
        if version == 6 and key == "ipipMode" and mode != "Never":
            raise PoolError(f"IPPool {name}: IPIP is not supported on an IPv6 pool")
        spec[key] = mode
    uses = spec.get("allowedUses") or ["Workload", "Tunnel"]
    if not isinstance(uses, list) or any(u not in ALLOWED_USES for u in uses):
        raise PoolError(f"IPPool {name}: spec.allowedUses {uses!r}: each must be one of {', '.join(ALLOWED_USES)}")
    out_spec: dict[str, Any] = {
        "cidr": str(cidr),
        "vxlanMode": spec["vxlanMode"],
        "ipipMode": spec["ipipMode"],
        "natOutgoing": _bool(spec, "natOutgoing"),
    }
    if _bool(spec, "disabled"):
        out_spec["disabled"] = True
    if _bool(spec, "disableBGPExport"):
        out_spec["disableBGPExport"] = True
    out_spec["blockSize"] = size
    out_spec["nodeSelector"] = node_selector
    out_spec["allowedUses"] = list(uses)
    metadata = {k: v for k, v in meta.items() if k != "namespace"}
    return {"kind": "IPPool", "apiVersion": "projectcalico.org/v3", "metadata": metadata, "spec": out_spec}


class Pools:
    def __init__(self, store: Datastore) -> None:
        self.resources = Resources(store, IPPOOL)

    def all(self) -> list[Pool]:
        out = []
        for obj in self.resources.list():
            try:
                out.append(Pool.from_resource(obj))
            except (KeyError, ValueError):
                continue  # an unreadable pool cannot hold addresses; calicoctl still lists it
        return out

    def enabled(self, version: int) -> list[Pool]:
        return [p for p in self.all() if p.version == version and not p.disabled]

    def by_name(self, name: str) -> Pool | None:
        obj = self.resources.get(name)
        return None if obj is None else Pool.from_resource(obj)

    def containing(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, pools: list[Pool] | None = None) -> Pool | None:
        for pool in self.all() if pools is None else pools:
            if ip.version == pool.version and ip in pool.cidr:
                return pool
        return None

    def _check_overlap(self, obj: Resource) -> None:
        cidr = ipaddress.ip_network(obj["spec"]["cidr"])
        for pool in self.all():
            if pool.name != obj["metadata"]["name"] and pool.version == cidr.version and pool.cidr.overlaps(cidr):
                name = obj["metadata"]["name"]
                raise PoolError(f"IPPool({name}) CIDR {cidr} overlaps with IPPool({pool.name}) CIDR {pool.cidr}")

    def create(self, obj: Resource) -> Resource:
        obj = normalize(obj)
        self._check_overlap(obj)
        return self.resources.create(obj)

    def update(self, obj: Resource) -> Resource:
        obj = normalize(obj)
        current = self.resources.get(obj["metadata"]["name"])
        if current is None:
            raise ResourceError(f"resource does not exist: IPPool({obj['metadata']['name']})")
        if current["spec"]["cidr"] != obj["spec"]["cidr"]:
            raise PoolError(f"IPPool({obj['metadata']['name']}): spec.cidr cannot be changed (delete and re-create the pool)")
        if current["spec"].get("blockSize") != obj["spec"]["blockSize"]:
            raise PoolError(f"IPPool({obj['metadata']['name']}): spec.blockSize cannot be changed")
        for key in ("uid", "creationTimestamp"):
            if key in current["metadata"]:
                obj["metadata"].setdefault(key, current["metadata"][key])
        obj["metadata"].setdefault("resourceVersion", current["metadata"]["resourceVersion"])
        return self.resources.update(obj)

    def delete(self, name: str) -> None:
        self.resources.delete(name)

    def ensure_default(self, version: int, env: Mapping[str, str]) -> None:
        """Create Calico's default pool for `version` when the store has no pool of that version."""
        if any(p.version == version for p in self.all()):
            return
        prefix = "CALICO_IPV4POOL_" if version == 4 else "CALICO_IPV6POOL_"
        text = env.get(prefix + "CIDR", "")
        if not text:
            text = DEFAULT_IPV4_POOL_CIDR if version == 4 else _random_ula()
        try:
            cidr = ipaddr.network(text, strict=False)
        except ValueError:
            raise PoolError(f"invalid CIDR specified in {prefix}CIDR: {text!r}") from None
        if cidr.version != version:
            raise PoolError(f"{prefix}CIDR {text!r} is not an IPv{version} CIDR")
        block = env.get(prefix + "BLOCK_SIZE", "")
        nat = env.get(prefix + "NAT_OUTGOING", "true" if version == 4 else "false").lower() == "true"
        spec: dict[str, Any] = {
            "cidr": str(cidr),
            "natOutgoing": nat,
            "ipipMode": env.get(prefix + "IPIP", "Never") if version == 4 else "Never",
            "vxlanMode": env.get(prefix + "VXLAN", "Never"),
            "nodeSelector": env.get(prefix + "NODE_SELECTOR", "all()"),
        }
        if block:
            if not block.isdigit():
                raise PoolError(f"{prefix}BLOCK_SIZE {block!r} is not a number")
            spec["blockSize"] = int(block)
        name = DEFAULT_IPV4_POOL_NAME if version == 4 else DEFAULT_IPV6_POOL_NAME
        try:
            self.create({"metadata": {"name": name}, "spec": spec})
        except ResourceError:
            pass  # another call created it first


def _random_ula() -> str:
    """A random unique-local /48, as calico/node generates for its default IPv6 pool."""
    global_id = secrets.token_bytes(5)
    return str(ipaddress.ip_network((b"\xfd" + global_id + bytes(10), 48)))
