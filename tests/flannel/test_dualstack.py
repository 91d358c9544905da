"""Dual stack (EnableIPv6): leases keyed by both subnets, a second VXLAN device, subnet.env's
IPv6 lines, pods with both families reaching each other across nodes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.harness import wait_until
from tests.flannel.conftest import flannel_cluster
from tests.flannel.flannelcluster import FlannelCluster, mesh

IPV6 = {"EnableIPv6": True, "IPv6Network": "fd10:244::/56"}


@pytest.fixture(scope="module", params=["vxlan", "host-gw"])
def fc(request: pytest.FixtureRequest) -> Iterator[FlannelCluster]:
    yield from flannel_cluster(request.param, nodes=2, pods=1, **IPV6)


@pytest.mark.difference("flanneld-ipv6-mtu")
def test_dual_stack(fc: FlannelCluster) -> None:
    leases = fc.leases()
    assert all("&fd10:244:0:" in key and key.endswith("::-64") for key in leases)
    for node in fc.cluster.nodes:
        values = fc.env_values(node)
        assert list(values) == [
            "FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ",
        ]  # fmt: skip
        assert values["FLANNEL_IPV6_NETWORK"] == "fd10:244::/56" and values["FLANNEL_IPV6_SUBNET"].endswith("::1/64")
    for lease in leases.values():
        assert lease["PublicIPv6"].startswith("fd")
        if lease["BackendType"] == "vxlan":
            assert lease["BackendV6Data"]["VNI"] == 1
    one, two = fc.pods
    six = [next(ip["address"].split("/")[0] for ip in p.result["ips"] if ":" in ip["address"]) for p in fc.pods]
    assert mesh(fc.pods, tcp=False) == []
    # (the first answers wait for duplicate address detection on the bridges' new IPv6 gateways)
    for src, dst in ((one, six[1]), (two, six[0])):
        ping = lambda s=src, d=dst: s.pod.run("ping", "-6", "-c", "1", "-W", "1", d, check=False).returncode == 0  # noqa: E731
        wait_until(ping, timeout=10, interval=0.2, what=f"ping -6 {dst}")
    if "BackendV6Data" in next(iter(leases.values())):
        node = fc.cluster.nodes[0]
        mtus = {dev: node.ip_json("link", "show", dev)[0]["mtu"] for dev in ("flannel.1", "flannel-v6.1")}
        assert mtus == {"flannel.1": 1450, "flannel-v6.1": 1430}  # VXLAN over IPv6 costs 70 bytes
        assert fc.env_values(node)["FLANNEL_MTU"] == "1430"  # what both carry
