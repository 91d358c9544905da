"""A component's view of the cluster, built from datastore keys: nodes, pools, blocks,
affinities, BGP configuration and peers, each parsed once when its key changes.

Components keep their own `ClusterView` (the contract: they share nothing but the
NodeContext); a value that cannot be parsed is dropped from the view and logged, never
fatal: one bad resource must not stop a node's routing.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pycni.calico import model
from pycni.calico.bgp import BGP_CONFIGURATION, BGP_PEER, DEFAULT_ASN, GLOBAL_CONFIG, parse_asn
from pycni.calico.datastore import KV, WatchEvent
from pycni.calico.model import IPNetwork
from pycni.calico.pools import Pool
from pycni.calico.resources import IPPOOL, NODE

log = logging.getLogger("calico-node")

NODES_PREFIX = model.resource_prefix(NODE.plural)
POOLS_PREFIX = model.resource_prefix(IPPOOL.plural)
BGPCONFIG_PREFIX = model.resource_prefix(BGP_CONFIGURATION.plural)
BGPPEERS_PREFIX = model.resource_prefix(BGP_PEER.plural)


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ipv4: ipaddress.IPv4Interface | None = None
    ipv6: ipaddress.IPv6Interface | None = None
    asn: int | None = None
    vxlan_addr: ipaddress.IPv4Address | None = None
    vxlan_mac: str = ""
    vxlan_addr6: ipaddress.IPv6Address | None = None
    vxlan_mac6: str = ""
    ipip_addr: ipaddress.IPv4Address | None = None
    labels: tuple[tuple[str, str], ...] = ()
    rr_cluster_id: str = ""

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @classmethod
    def from_resource(cls, obj: dict[str, Any]) -> NodeInfo:
        spec = obj.get("spec") or {}
        bgp = spec.get("bgp") or {}
        meta = obj.get("metadata") or {}

        def iface(text: Any, version: int) -> Any:
            if not text:
                return None
            value = ipaddress.ip_interface(str(text))
            return value if value.version == version else None

        def addr(text: Any) -> Any:
            return ipaddress.ip_interface(str(text)).ip if text else None

        asn = bgp.get("asNumber")
        return cls(
            name=str(meta["name"]),
            ipv4=iface(bgp.get("ipv4Address"), 4),
            ipv6=iface(bgp.get("ipv6Address"), 6),
            asn=parse_asn(asn) if asn not in (None, "") else None,
            vxlan_addr=addr(spec.get("ipv4VXLANTunnelAddr")),
            vxlan_mac=str(spec.get("vxlanTunnelMACAddr") or ""),
            vxlan_addr6=addr(spec.get("ipv6VXLANTunnelAddr")),
            vxlan_mac6=str(spec.get("vxlanTunnelMACAddrV6") or ""),
            ipip_addr=addr(bgp.get("ipv4IPIPTunnelAddr")),
            labels=tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items())),
            rr_cluster_id=str(bgp.get("routeReflectorClusterID") or ""),
        )


@dataclass(frozen=True)
class BlockInfo:
    cidr: IPNetwork
    host: str  # the node the block is affine to ("" when none)
    #: addresses allocated in this block to another node than its host (borrowed): ip -> node
    borrowed: tuple[tuple[str, str], ...] = ()


@dataclass
class ClusterView:
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    pools: dict[str, Pool] = field(default_factory=dict)
    blocks: dict[IPNetwork, BlockInfo] = field(default_factory=dict)
    #: (host, block) -> affinity state ("confirmed", "pending", "pendingDeletion", "")
    affinities: dict[tuple[str, IPNetwork], str] = field(default_factory=dict)
    bgp_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    bgp_peers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def clear(self) -> None:
        for part in (self.nodes, self.pools, self.blocks, self.affinities, self.bgp_configs, self.bgp_peers):
            part.clear()

    def load(self, listing: Iterable[KV]) -> None:
        self.clear()
        for kv in listing:
            self.apply(kv.key, kv.value)

    def apply_events(self, events: Iterable[WatchEvent]) -> set[str]:
        """Apply changes; return which parts changed ("nodes", "pools", "blocks", ...)."""
        changed: set[str] = set()
        for event in events:
            part = self.apply(event.key, event.value if event.kind == "put" else None)
            if part:
                changed.add(part)
        return changed

    def apply(self, key: str, value: str | None) -> str:
        """Put (value) or delete (None) one key; return the part it belongs to ("" if none)."""
        try:
            return self._apply(key, value)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("Ignoring unreadable datastore value at %s: %s", key, exc)
            self._forget(key)
            return _part_of(key)

    def _forget(self, key: str) -> None:
        try:
            self._apply(key, None)
        except (ValueError, KeyError, TypeError):
            pass

    def _apply(self, key: str, value: str | None) -> str:
        if key.startswith(NODES_PREFIX):
            name = key[len(NODES_PREFIX) :]
            if value is None:
                self.nodes.pop(name, None)
            else:
                self.nodes[name] = NodeInfo.from_resource(json.loads(value))
            return "nodes"
        if key.startswith(POOLS_PREFIX):
            name = key[len(POOLS_PREFIX) :]
            if value is None:
                self.pools.pop(name, None)
            else:
                self.pools[name] = Pool.from_resource(json.loads(value))
            return "pools"
        if key.startswith(model.BLOCKS_PREFIX):
            cidr = ipaddress.ip_network(key.rsplit("/", 1)[-1].replace("-", "/", 1))
            if value is None:
                self.blocks.pop(cidr, None)
            else:
                self.blocks[cidr] = _block_info(cidr, json.loads(value))
            return "blocks"
        if key.startswith(model.HOSTS_PREFIX):
            parsed = model.parse_affinity_key(key)
            if parsed is None:
                return ""
            if value is None:
                self.affinities.pop(parsed, None)
            else:
                self.affinities[parsed] = str(json.loads(value).get("state", ""))
            return "affinities"
        if key.startswith(BGPCONFIG_PREFIX):
            name = key[len(BGPCONFIG_PREFIX) :]
            if value is None:
                self.bgp_configs.pop(name, None)
            else:
                self.bgp_configs[name] = dict(json.loads(value).get("spec") or {})
            return "bgpconfig"
        if key.startswith(BGPPEERS_PREFIX):
            name = key[len(BGPPEERS_PREFIX) :]
            if value is None:
                self.bgp_peers.pop(name, None)
            else:
                self.bgp_peers[name] = dict(json.loads(value).get("spec") or {})
            return "bgppeers"
        return ""

    # -- questions components ask --------------------------------------------------------

    def global_asn(self) -> int:
        asn = self.bgp_configs.get(GLOBAL_CONFIG, {}).get("asNumber")
        try:
            return parse_asn(asn) if asn not in (None, "") else DEFAULT_ASN
        except ValueError:
            return DEFAULT_ASN

    def node_asn(self, node: NodeInfo) -> int:
        return node.asn if node.asn is not None else self.global_asn()

    def mesh_enabled(self) -> bool:
        return bool(self.bgp_configs.get(GLOBAL_CONFIG, {}).get("nodeToNodeMeshEnabled", True))

    def pool_of(self, cidr: IPNetwork) -> Pool | None:
        for pool in self.pools.values():
            if pool.version == cidr.version and cidr.subnet_of(pool.cidr):  # type: ignore[arg-type]
                return pool
        return None

    def local_blocks(self, host: str, version: int | None = None) -> list[IPNetwork]:
        """Blocks affine to `host`: from its affinities (as confd reads them), confirmed or not."""
        return sorted(
            (cidr for (h, cidr), _ in self.affinities.items() if h == host and (version is None or cidr.version == version)),
            key=_net_key,
        )


def _net_key(net: IPNetwork) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


def _block_info(cidr: IPNetwork, data: dict[str, Any]) -> BlockInfo:
    affinity = str(data.get("affinity") or "")
    host = affinity[len("host:") :] if affinity.startswith("host:") else ""
    borrowed: list[tuple[str, str]] = []
    attributes = data.get("attributes") or []
    for ordinal, attr in enumerate(data.get("allocations") or []):
        if attr is None or not 0 <= attr < len(attributes):
            continue
        node = str((attributes[attr].get("secondary") or {}).get(model.ATTR_NODE, ""))
        if node and node != host:
            borrowed.append((str(cidr.network_address + ordinal), node))
    return BlockInfo(cidr, host, tuple(borrowed))


def _part_of(key: str) -> str:
    for prefix, part in (
        (NODES_PREFIX, "nodes"),
        (POOLS_PREFIX, "pools"),
        (model.BLOCKS_PREFIX, "blocks"),
        (model.HOSTS_PREFIX, "affinities"),
        (BGPCONFIG_PREFIX, "bgpconfig"),
        (BGPPEERS_PREFIX, "bgppeers"),
    ):
        if key.startswith(prefix):
            return part
    return ""


def sort_networks(nets: Iterable[IPNetwork]) -> list[IPNetwork]:
    return sorted(nets, key=_net_key)
