"""flanneld refusing what it cannot do, before it writes anything; the configuration keys,
the interface, the backends this kernel or pycni cannot serve; and DirectRouting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from pycni.flannel.config import kernel_has_ipip
from tests.cluster.harness import Cluster
from tests.flannel.conftest import flannel_cluster
from tests.flannel.flannelcluster import VENV_BIN, FlannelCluster, mesh, network_config
from tests.metrics import holding_a_port, listening_ports


@pytest.fixture(scope="module")
def bare() -> Iterator[FlannelCluster]:
    """One node, no flanneld running: each test starts its own."""
    with Cluster(nodes=1) as cluster:
        yield FlannelCluster.create(cluster, network_config("vxlan"))


def run_flanneld(fc: FlannelCluster, *args: str) -> Any:
    node = fc.cluster.nodes[0]
    assert fc.cluster.etcd is not None
    return node.run(str(VENV_BIN / "flanneld"), f"--etcd-endpoints={fc.cluster.etcd.endpoint}", *args, check=False, timeout=60)


def nothing_written(fc: FlannelCluster) -> None:
    node = fc.cluster.nodes[0]
    assert not fc.subnet_env(node)
    assert fc.leases() == {}
    assert "flannel" not in node.ip("link").stdout
    assert "flannel" not in node.run("nft", "list", "tables").stdout


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"Network": "10.1.0.0/16", "SubnetLen": 31, "Backend": {"Type": "vxlan"}}, "SubnetLen 31 is out of range"),
        (
            {"Network": "10.1.0.0/16", "SubnetMin": "10.1.9.0", "SubnetMax": "10.1.2.0", "Backend": {"Type": "vxlan"}},
            "SubnetMin 10.1.9.0 is above SubnetMax 10.1.2.0",
        ),
        (
            {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "Port": 8472, "Vni": 3, "MTUU": 1400}},
            "unknown key 'MTUU' in Backend",
        ),
        ({"Network": "10.1.0.0/16", "Backend": {"Type": "udp"}}, "Backend.Type 'udp' is not supported"),
        ({"Network": "10.1.0.0/16", "Backend": {"Type": "wireguard"}}, "supported backends: vxlan, host-gw"),
        (
            {"Network": "10.1.0.0/16", "Backend": {"Type": "ipip"}},
            "IPIP tunnels (CONFIG_NET_IPIP), which this kernel lacks"
            if not kernel_has_ipip()
            else "ipip backend is not implemented",
        ),
        ("{not json", "not valid JSON"),
    ],
)
def test_invalid_configuration(bare: FlannelCluster, config: Any, message: str) -> None:
    bare.set_config(config if isinstance(config, str) else json.dumps(config))
    out = run_flanneld(bare, "--ip-masq")
    assert out.returncode == 1, out.stderr
    assert "Invalid network configuration at /coreos.com/network/config: " in out.stderr
    assert message in out.stderr
    nothing_written(bare)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--iface=nosuch0"], 1, "no interface matches --iface nosuch0"),
        (["--subnet-lease-renew-margin=1440"], 1, "out of the acceptable range 1..1439"),
        (["--kube-subnet-mgr"], 1, "the Kubernetes subnet manager is not supported"),
        (["--ip-blackhole-route"], 1, "--ip-blackhole-route is not supported"),
        (["--bogus"], 2, "flag provided but not defined: -bogus"),
    ],
)
def test_bad_flags(bare: FlannelCluster, args: list[str], code: int, message: str) -> None:
    bare.set_config(network_config("vxlan"))
    out = run_flanneld(bare, *args)
    assert (out.returncode, message in out.stderr) == (code, True), out.stderr
    nothing_written(bare)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--metrics-address=127.0.0.1:{port}"], {}, "cannot serve Prometheus metrics on 127.0.0.1:{port} (--metrics-address"),
        ([], {"FLANNELD_METRICS_ADDRESS": "127.0.0.1:{port}"}, "FLANNELD_METRICS_ADDRESS): Address already in use"),
        (["--healthz-ip=127.0.0.1", "--healthz-port={port}"], {}, "cannot serve healthz on 127.0.0.1:{port} (--healthz-ip"),
    ],
)
def test_an_address_in_use_stops_flanneld_before_anything(
    bare: FlannelCluster, args: list[str], env: dict[str, str], message: str
) -> None:
    node = bare.cluster.nodes[0]
    bare.set_config(network_config("vxlan"))
    assert bare.cluster.etcd is not None
    flanneld = [str(VENV_BIN / "flanneld"), f"--etcd-endpoints={bare.cluster.etcd.endpoint}", *args]
    out = node.run(*holding_a_port(flanneld), env=env, check=False, timeout=90)
    assert out.returncode == 1, out.stderr
    assert message.replace("{port}", out.stdout.strip()) in out.stderr and "Address already in use" in out.stderr
    nothing_written(bare)


def test_metrics_are_off_by_default(bare: FlannelCluster) -> None:
    node = bare.cluster.nodes[0]
    bare.set_config(network_config("host-gw", network="10.1.0.0/16"))
    try:
        proc = bare.start(node)
        assert listening_ports(proc.pid) == set()
    finally:
        bare.stop(node)
        bare.etcdctl("del", "--prefix", "/coreos.com/network/subnets/")
        (node.private("/run/flannel") / "subnet.env").unlink(missing_ok=True)
        node.run("nft", "delete", "table", "ip", "flannel-ipv4", check=False)


def test_host_gw_behind_nat_is_refused(bare: FlannelCluster) -> None:
    bare.set_config(network_config("host-gw"))
    out = run_flanneld(bare, "--public-ip=192.0.2.7")
    assert out.returncode == 1 and "host-gw cannot route through" in out.stderr
    nothing_written(bare)


@pytest.fixture(scope="module")
def direct() -> Iterator[FlannelCluster]:
    """Three vxlan nodes on two underlay subnets (1 and 3 share one) with DirectRouting."""
    config: dict[str, Any] = {"Backend": {"Type": "vxlan", "DirectRouting": True}}
    built = flannel_cluster("vxlan", pods=1, subnets=2)
    fc = next(built)
    fc.set_config(network_config(**config))
    try:
        yield fc
    finally:
        built.close()


def test_direct_routing(direct: FlannelCluster) -> None:
    nodes = direct.cluster.nodes
    # the fixture's nodes started before DirectRouting was configured: restart them with it
    for node in nodes:
        direct.stop(node)
    for node in nodes:
        direct.start(node)
    subnet = {n.name: direct.env_values(n)["FLANNEL_SUBNET"].rsplit(".", 1)[0] + ".0/24" for n in nodes}
    first, second, third = nodes
    routes = direct.routes(first)
    assert f"{subnet[third.name]} via {third.address.ip} dev eth0" in routes  # same underlay subnet: no tunnel
    assert f"{subnet[second.name]} via {subnet[second.name].split('/')[0]} dev flannel.1 onlink" in routes
    assert mesh(direct.pods, tcp=False) == []


def test_a_reservation_is_taken_and_stays_one(bare: FlannelCluster) -> None:
    """A lease written by hand without an etcd lease (flannel's reservation) for this node's
    address: flanneld takes that subnet and leaves the key without a TTL."""
    node = bare.cluster.nodes[0]
    bare.set_config(network_config("host-gw", network="10.1.0.0/16"))
    key = "/coreos.com/network/subnets/10.1.77.0-24"
    bare.etcdctl("put", key, json.dumps({"PublicIP": str(node.address.ip), "BackendType": "host-gw"}))
    try:
        bare.start(node)
        assert "FLANNEL_SUBNET=10.1.77.1/24" in bare.subnet_env(node)
        assert "is a reservation" in bare.log(node)
        listing = json.loads(bare.etcdctl("get", key, "-w", "json").stdout)
        assert listing["kvs"][0].get("lease", 0) == 0
    finally:
        bare.stop(node)
        bare.etcdctl("del", "--prefix", "/coreos.com/network/subnets/")
        (node.private("/run/flannel") / "subnet.env").unlink(missing_ok=True)
        node.run("nft", "delete", "table", "ip", "flannel-ipv4", check=False)
