"""The runtime drives Debian's Go reference plugins (bridge + host-local + portmap)
through ADD, CHECK and DEL, as containerd would."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pycni.runtime import CNIConfig, RuntimeConf, cache
from pycni.spec.config import NetworkConfigList

from ..conftest import NetNS, delete_link, unique, unique_subnet, unique_subnet6

pytestmark = pytest.mark.reference


def test_reference_chain_add_check_del(reference_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    bridge = unique("pctbr")
    subnet, subnet6 = unique_subnet(), unique_subnet6()
    conf = {
        "cniVersion": "1.0.0",
        "name": unique("pct-net-", 20),
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}], [{"subnet": subnet6}]],
                    "dataDir": str(tmp_path / "ipam"),
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"type": "loopback"},
        ],
    }
    net = NetworkConfigList.from_bytes(json.dumps(conf).encode())
    cni = CNIConfig([str(reference_dir)], cache_dir=str(tmp_path / "cache"))
    rt = RuntimeConf(
        container_id="pctref1",
        netns=netns.path,
        ifname="eth0",
        args=[("IgnoreUnknown", "1"), ("K8S_POD_NAME", "web-0")],
        capability_args={"portMappings": [{"hostPort": 28080, "containerPort": 80, "protocol": "tcp"}]},
    )
    try:
        result = cni.add_network_list(net, rt)
        assert [ip.address.version for ip in result.ips] == [4, 6]
        assert result.interfaces[0].name == bridge
        assert result.interfaces[2].sandbox == netns.path
        addr = result.ips[0].address
        assert str(addr.network) == subnet
        links = {link["ifname"]: link for link in netns.ip_json("addr", "show")}
        assert any(a["local"] == str(addr.ip) for a in links["eth0"]["addr_info"])
        assert cache.read(str(tmp_path / "cache"), net.name, "pctref1", "eth0") is not None
        # The reference portmap (1.1.1) fails CHECK on every container (it looks for its IPv4 rules
        # in the IPv6 table), so CHECK runs over the rest of the chain.
        without_portmap = dataclasses.replace(net, plugins=[p for p in net.plugins if p["type"] != "portmap"])
        cni.check_network_list(without_portmap, rt)
        cni.del_network_list(net, rt)
        cni.del_network_list(net, rt)  # idempotent
        assert not (tmp_path / "ipam" / net.name / str(addr.ip)).exists()
        assert "eth0" not in {link["ifname"] for link in netns.ip_json("link", "show")}
    finally:
        cni.del_network_list(net, rt)
        delete_link(bridge)
