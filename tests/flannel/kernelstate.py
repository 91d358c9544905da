"""A node's kernel state as flannel's code describes it, computed from the leases in etcd, and
as the node has it (iproute2's JSON)."""

from __future__ import annotations

import json
from typing import Any

from tests.cluster.harness import Node
from tests.flannel.flannelcluster import FlannelCluster


def own_key(fc: FlannelCluster, node: Node) -> str:
    subnet = fc.env_values(node)["FLANNEL_SUBNET"]
    address, plen = subnet.split("/")
    parts = address.split(".")
    return f"{'.'.join(parts[:3])}.{int(parts[3]) - 1}-{plen}"


def expected_vxlan(fc: FlannelCluster, node: Node, vni: int = 1) -> dict[str, Any]:
    leases = fc.leases()
    mine = own_key(fc, node)
    dev = f"flannel.{vni}"
    out: dict[str, Any] = {"routes": [], "neighbours": [], "fdb": []}
    for key, lease in sorted(leases.items()):
        if key == mine:
            continue
        net, plen = key.split("-")
        mac = lease["BackendData"]["VtepMAC"]
        out["routes"].append(f"{net}/{plen} via {net} dev {dev} onlink")
        out["neighbours"].append(f"{net} dev {dev} lladdr {mac} PERMANENT")
        out["fdb"].append(f"{mac} dev {dev} dst {lease['PublicIP']} self permanent")
    out["device"] = {
        "vni": vni,
        "port": 8472,
        "local": str(node.address.ip),
        "mtu": 1450,
        "mac": leases[mine]["BackendData"]["VtepMAC"],
        "address": f"{mine.split('-')[0]}/32",
    }
    return {k: sorted(v) if isinstance(v, list) else v for k, v in out.items()}


def actual_vxlan(fc: FlannelCluster, node: Node, vni: int = 1) -> dict[str, Any]:
    dev = f"flannel.{vni}"
    link = node.ip_json("-d", "link", "show", dev)[0]
    data = link["linkinfo"]["info_data"]
    addrs = node.ip_json("addr", "show", "dev", dev)[0]["addr_info"]
    neigh = node.ip("neigh", "show", "dev", dev, "nud", "permanent").stdout.splitlines()
    fdb = node.run("bridge", "fdb", "show", "dev", dev).stdout.splitlines()
    return {
        "routes": fc.routes(node),
        "neighbours": sorted(f"{line.split()[0]} dev {dev} {' '.join(line.split()[1:])}" for line in neigh),
        "fdb": sorted(f"{line.split()[0]} dev {dev} {' '.join(line.split()[1:])}" for line in fdb),
        "device": {
            "vni": data["id"],
            "port": data["port"],
            "local": data["local"],
            "mtu": link["mtu"],
            "mac": link["address"],
            "address": ";".join(f"{a['local']}/{a['prefixlen']}" for a in addrs if a["family"] == "inet"),
        },
    }


def expected_hostgw(fc: FlannelCluster, node: Node) -> list[str]:
    mine = own_key(fc, node)
    return sorted(
        f"{key.replace('-', '/')} via {lease['PublicIP']} dev eth0" for key, lease in fc.leases().items() if key != mine
    )


def dump(fc: FlannelCluster, node: Node) -> str:
    return json.dumps({"log": fc.log(node)[-3000:], "routes": node.ip("route").stdout}, indent=1)
