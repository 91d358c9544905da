"""Three nodes with the host-gw backend, three pods each: connectivity, routes via the other
nodes' addresses (and nothing of VXLAN), then the network full for a fourth node."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.cluster.harness import Node, wait_until
from tests.flannel.conftest import flannel_cluster
from tests.flannel.flannelcluster import VENV_BIN, FlannelCluster, mesh, network_config
from tests.flannel.kernelstate import dump, expected_hostgw


def remove(fc: FlannelCluster, node: Node) -> None:
    fc.cluster.remove_node(node)
    gone = lambda: subprocess.run(["ip", "link", "show", node.host_veth], capture_output=True).returncode != 0  # noqa: E731
    wait_until(gone, timeout=10, what=f"{node.host_veth} gone")


@pytest.fixture(scope="module")
def fc() -> Iterator[FlannelCluster]:
    yield from flannel_cluster("host-gw")


def test_every_pod_reaches_every_other(fc: FlannelCluster) -> None:
    assert mesh(fc.pods) == []


def test_routes_are_flannels(fc: FlannelCluster) -> None:
    for node in fc.cluster.nodes:
        assert fc.routes(node) == expected_hostgw(fc, node), dump(fc, node)
        assert node.ip("link", "show", "flannel.1", check=False).returncode != 0
        assert fc.env_values(node)["FLANNEL_MTU"] == "1500"
        assert all(lease["BackendType"] == "host-gw" and "BackendData" not in lease for lease in fc.leases().values())


def test_a_new_node_is_routed_by_the_others(fc: FlannelCluster) -> None:
    node = fc.cluster.add_node()
    try:
        fc.start(node)
        info = fc.add_pod(node)
        for other in fc.cluster.nodes:
            wait_until(lambda o=other: fc.routes(o) == expected_hostgw(fc, o), timeout=10, what=f"routes of {other.name}")
        assert mesh([info, *fc.pods[:3]], tcp=False) == []
        fc.delete_pod(info)
    finally:
        fc.stop(node)
        remove(fc, node)


def test_network_full_is_a_clear_error(fc: FlannelCluster) -> None:
    """Every subnet of SubnetMin..SubnetMax leased: the next node fails, naming the range, and writes nothing."""
    first = fc.env_values(fc.cluster.nodes[0])["FLANNEL_SUBNET"].split("/")[0].rsplit(".", 1)[0] + ".0"
    fc.set_config(network_config("host-gw", SubnetMin=first, SubnetMax=first))
    node = fc.cluster.add_node()
    try:
        assert fc.cluster.etcd is not None
        out = node.run(str(VENV_BIN / "flanneld"), f"--etcd-endpoints={fc.cluster.etcd.endpoint}", check=False, timeout=60)
        assert out.returncode == 1
        expected = f"out of subnets: every /24 of Network 10.244.0.0/16 from SubnetMin {first} to SubnetMax {first} is leased"
        assert expected in out.stderr
        assert not fc.subnet_env(node)
        assert str(node.address.ip) not in str(fc.leases())
        assert "flannel" not in node.ip("link").stdout
    finally:
        remove(fc, node)
