"""Node resources beyond plain storage: deleting a node as libcalico-go's Nodes().Delete does
(its workload endpoints' addresses and its tunnel addresses released, its endpoints deleted,
its block affinities released, its node-specific BGPPeers deleted, then the Node), and the
table cells calicoctl shows for it (the ASN column falls back to the global AS number).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

from pycni.calico import model
from pycni.calico.bgp import BGP_CONFIGURATION, BGP_PEER, DEFAULT_ASN, GLOBAL_CONFIG
from pycni.calico.datastore import Datastore, KeyNotFound
from pycni.calico.endpoints import Endpoints
from pycni.calico.ipam import IPAM
from pycni.calico.resources import NODE, Resource, ResourceError, Resources


def global_asn(store: Datastore) -> str:
    cfg = Resources(store, BGP_CONFIGURATION).get(GLOBAL_CONFIG)
    asn = ((cfg or {}).get("spec") or {}).get("asNumber")
    return str(asn) if asn not in (None, "") else str(DEFAULT_ASN)


def node_columns(store: Datastore) -> Callable[[Resource], dict[str, str]]:
    default = global_asn(store)

    def columns(obj: Resource) -> dict[str, str]:
        bgp = (obj.get("spec") or {}).get("bgp") or {}
        asn = str(bgp.get("asNumber")) if bgp.get("asNumber") not in (None, "") else (f"({default})" if bgp else "")
        return {
            "NAME": obj["metadata"]["name"],
            "ASN": asn,
            "IPV4": bgp.get("ipv4Address", ""),
            "IPV6": bgp.get("ipv6Address", ""),
        }

    return columns


def delete_node(store: Datastore, doc: Resource) -> None:
    meta = doc.get("metadata") or {}
    name = str(meta.get("name", ""))
    nodes = Resources(store, NODE)
    node = nodes.get(name)
    if node is None:
        raise ResourceError(f"resource does not exist: Node({name})")
    revision = int(meta["resourceVersion"]) if str(meta.get("resourceVersion") or "").isdigit() else None
    if revision is not None and str(revision) != node["metadata"]["resourceVersion"]:
        raise ResourceError(f"update conflict: Node({name}) was modified")
    ipam = IPAM(store)
    endpoints = Endpoints(store)
    weps = [w for w in endpoints.list(None) if (w.get("spec") or {}).get("node") == name]
    ips: list[Any] = []
    for wep in weps:
        for net in (wep.get("spec") or {}).get("ipNetworks") or []:
            try:
                ips.append(ipaddress.ip_interface(net).ip)
            except ValueError:
                continue
    spec = node.get("spec") or {}
    for text in (
        (spec.get("bgp") or {}).get("ipv4IPIPTunnelAddr"),
        spec.get("ipv4VXLANTunnelAddr"),
        spec.get("ipv6VXLANTunnelAddr"),
        (spec.get("wireguard") or {}).get("interfaceIPv4Address"),
    ):
        if text:
            try:
                ips.append(ipaddress.ip_interface(str(text)).ip)
            except ValueError:
                pass
    if ips:
        ipam.release_ips(ips)
    for wep in weps:
        try:
            endpoints.delete(wep["metadata"]["name"], wep["metadata"].get("namespace") or "default")
        except ResourceError:
            pass  # already gone
    # RemoveIPAMHost: every affinity of the node goes; its empty blocks are deleted, the others
    # lose their affinity (their remaining addresses stay allocated until released).
    for version in (4, 6):
        for cidr in ipam.affine_blocks(name, version):
            try:
                ipam.release_block_affinity(name, cidr, require_empty=False)
            except KeyNotFound:
                pass
            except Exception:  # noqa: BLE001 - a racing claim: drop the affinity key at least
                kv = store.get(model.affinity_key(name, cidr))
                if kv is not None:
                    store.delete(kv.key)
    for peer in Resources(store, BGP_PEER).list():
        if (peer.get("spec") or {}).get("node") == name:
            try:
                Resources(store, BGP_PEER).delete(peer["metadata"]["name"])
            except ResourceError:
                pass
    nodes.delete(name)
