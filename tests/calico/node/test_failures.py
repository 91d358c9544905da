"""calico-node's failure cases: etcd going away and coming back, BIRD missing, bad
addresses, an autodetection method that finds nothing, overlapping pools, IPIP on a kernel
without it. A refused start creates nothing in the datastore."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from pycni.calico.node import ipip
from tests.cluster.harness import Cluster, wait_until
from tests.metrics import Samples, free_port, holding_a_port, listening_ports, scrape, value

from .calicocluster import VENV_BIN, CalicoCluster, reach
from .test_cluster import MODES, pool_cidr


@pytest.fixture
def one_node() -> Iterator[CalicoCluster]:
    with Cluster(nodes=1) as cluster:
        cc = CalicoCluster.create(cluster, pool_cidr(), MODES["vxlan"])
        try:
            yield cc
        finally:
            cc.close()


def refused(cc: CalicoCluster, **env: str) -> str:
    """Run calico-node with `env`; it must exit 1 and create nothing. Returns its log."""
    node = cc.cluster.nodes[0]
    out = node.run(str(VENV_BIN / "calico-node"), env={**cc.env, **env}, check=False, timeout=90)
    assert out.returncode == 1, out.stdout + out.stderr
    assert_nothing_made(cc)
    return out.stderr


def test_ip_on_no_interface_is_refused(one_node: CalicoCluster) -> None:
    log = refused(one_node, IP="10.255.254.1")
    assert "IP=10.255.254.1: IPv4 address 10.255.254.1 is not assigned to any interface of this host" in log


def test_autodetection_that_finds_nothing_is_refused(one_node: CalicoCluster) -> None:
    log = refused(one_node, IP_AUTODETECTION_METHOD="interface=nosuchif.*")
    assert "Couldn't autodetect an IPv4 address" in log and "'interface=nosuchif.*' found no IPv4 address" in log
    log = refused(one_node, IP_AUTODETECTION_METHOD="cidr=192.0.2.0/24")
    assert "found no IPv4 address inside 192.0.2.0/24" in log


def test_overlapping_pools_are_refused(one_node: CalicoCluster) -> None:
    etcd = one_node.cluster.etcd
    assert etcd is not None
    prefix = "/calico/resources/v3/projectcalico.org/ippools/"
    for name, cidr in (("one", "10.77.0.0/16"), ("two", "10.77.128.0/17")):  # written past calicoctl's check
        doc = {"kind": "IPPool", "apiVersion": "projectcalico.org/v3", "metadata": {"name": name}, "spec": {"cidr": cidr}}
        etcd.etcdctl("put", prefix + name, json.dumps(doc))
    log = refused(one_node)
    assert "IPPool(one) CIDR 10.77.0.0/16 overlaps with IPPool(two) CIDR 10.77.128.0/17" in log
    etcd.etcdctl("del", prefix + "two")
    log = refused(one_node, CALICO_IPV4POOL_CIDR="10.77.3.0/24")
    assert "CALICO_IPV4POOL_CIDR 10.77.3.0/24 overlaps with IPPool(one) CIDR 10.77.0.0/16" in log


def test_bird_missing_names_the_package(one_node: CalicoCluster) -> None:
    log = refused(one_node, CALICO_NETWORKING_BACKEND="bird", CALICO_BIRD_BINARY="/nonexistent/bird")
    assert "BIRD (/nonexistent/bird) is not installed" in log and "install Debian's `bird` package" in log


def test_bad_environment_is_refused(one_node: CalicoCluster) -> None:
    assert "CALICO_NETWORKING_BACKEND='ospf' is not one of bird, vxlan, none" in refused(
        one_node, CALICO_NETWORKING_BACKEND="ospf"
    )
    assert "AS=70000000000" in refused(one_node, AS="70000000000")
    assert "Invalid blocksize 19" in refused(one_node, CALICO_IPV4POOL_BLOCK_SIZE="19")
    assert "Unrecognized VXLAN mode" in refused(one_node, CALICO_IPV4POOL_VXLAN="Sometimes")


@pytest.mark.skipif(ipip.kernel_supports_ipip(), reason="this kernel has IPIP: the refusal is for kernels without it")
def test_ipip_pool_names_the_kernel_option(one_node: CalicoCluster) -> None:
    log = refused(one_node, CALICO_IPV4POOL_IPIP="Always", CALICO_IPV4POOL_VXLAN="Never")
    assert "CALICO_IPV4POOL_IPIP=Always: this kernel has no IPIP tunnels (CONFIG_NET_IPIP)" in log


def test_etcd_unreachable_keeps_the_dataplane_and_converges_after() -> None:
    with Cluster(nodes=2) as cluster:
        cc = CalicoCluster.create(cluster, pool_cidr(), MODES["vxlan"])
        try:
            one, two = cluster.nodes
            for node in cluster.nodes:
                cc.start(node)
            a, b = cc.add_pod(one), cc.add_pod(two)
            wait_until(lambda: reach(a, b, tcp=False) == "", timeout=30, what="a -> b")
            routes = cc.routes(one)
            etcd = cluster.etcd
            assert etcd is not None
            etcd.stop()
            wait_until(lambda: cc.probe(one, "-felix-ready").returncode == 1, timeout=30, what="not ready without etcd")
            probe = cc.probe(one, "-felix-ready").stdout
            assert "calico/node is not ready: felix is not ready: readiness probe reporting 503" in probe
            assert "datastore unreachable" in probe
            time.sleep(3)
            assert cc.routes(one) == routes
            assert reach(a, b) == "" and reach(b, a) == ""
            etcd.start()
            wait_until(lambda: cc.probe(one, "-felix-ready").returncode == 0, timeout=60, what="ready again")
            # Converged: a pod in a new block on the second node is routed to from the first.
            c = cc.add_pod(two)
            wait_until(lambda: reach(a, c, tcp=False) == "", timeout=30, what="a -> c after etcd returned")
        finally:
            cc.close()


def test_prometheus_metrics(one_node: CalicoCluster) -> None:
    node = one_node.cluster.nodes[0]
    port = str(free_port())
    proc = one_node.start(node, {"FELIX_PROMETHEUSMETRICSENABLED": "true", "FELIX_PROMETHEUSMETRICSPORT": port})
    assert listening_ports(proc.pid) == {int(port), 9099}  # and the health port
    one_node.add_pod(node)

    def samples() -> Samples:
        return scrape(f"127.0.0.1:{port}", run=lambda code: node.run("python3", "-c", code, check=False).stdout)

    wait_until(lambda: value(samples(), "felix_active_local_endpoints") == 1.0, timeout=30, what="metrics")
    got = samples()
    assert value(got, "felix_cluster_num_hosts") == 1.0
    assert value(got, "felix_cluster_num_workload_endpoints") == 1.0
    assert value(got, "felix_resyncs_started") == 1.0  # felix's names, without prometheus-client's _total
    assert value(got, "felix_int_dataplane_failures") == 0.0
    assert value(got, "calico_node_routes", kind="vxlan") is not None
    assert value(got, "calico_node_datastore_errors_total") == 0.0
    assert value(got, "felix_active_local_policies") is not None
    assert (value(got, "calico_node_policy_apply_seconds_count") or 0) >= 1
    assert (value(got, "felix_int_dataplane_apply_time_seconds_count") or 0) >= 2  # the listing, the endpoint
    assert (value(got, "process_start_time_seconds") or 0) > 0


def test_a_metrics_port_in_use_is_refused_before_anything(one_node: CalicoCluster) -> None:
    """Refused before the node is registered: no node, no nodename, no pid file, no table."""
    node = one_node.cluster.nodes[0]
    env = {**one_node.env, "FELIX_PROMETHEUSMETRICSENABLED": "true", "FELIX_PROMETHEUSMETRICSPORT": "{port}"}
    out = node.run(*holding_a_port([str(VENV_BIN / "calico-node")]), env=env, check=False, timeout=90)
    assert out.returncode == 1, out.stderr
    message = f"cannot serve Prometheus metrics on 0.0.0.0:{out.stdout.strip()} (FELIX_PROMETHEUSMETRICSHOST / "
    assert message in out.stderr and "Address already in use" in out.stderr, out.stderr
    assert_nothing_made(one_node)
    # Nothing half-made stands in the way of the next start; without the setting, no metrics port.
    proc = one_node.start(node)
    assert listening_ports(proc.pid) == {9099}  # the health port only


def assert_nothing_made(cc: CalicoCluster) -> None:
    node = cc.cluster.nodes[0]
    assert cc.cluster.etcd is not None
    keys = cc.cluster.etcd.etcdctl("get", "--prefix", "--keys-only", "/calico/resources/v3/projectcalico.org/nodes/").stdout
    assert node.name not in keys
    assert not (node.private("/var/lib/calico") / "nodename").exists()
    assert not (node.private("/var/run/calico") / "calico-node.pid").exists()
    assert "calico" not in node.run("nft", "list", "tables").stdout
    assert "vxlan.calico" not in node.ip("link").stdout
