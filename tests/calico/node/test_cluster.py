"""calico-node across nodes, on real namespaces, BIRD and etcd (the issue's acceptance).

Three nodes of the cluster harness share one etcd; calico-node runs on each; pods are made
through `pycni add` with the calico plugin. In BGP mode BIRD (Debian's `bird`, BIRD 1.6)
peers in a full mesh; in VXLAN mode routes go through vxlan.calico.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.cluster.harness import Cluster, Node, wait_until
from tests.metrics import Samples, scrape, value

from .calicocluster import CalicoCluster, PodInfo, conflist, reach

MODES = {
    "bird": {"CALICO_NETWORKING_BACKEND": "bird"},
    "vxlan": {"CALICO_NETWORKING_BACKEND": "vxlan", "CALICO_IPV4POOL_VXLAN": "Always"},
}


def pool_cidr() -> str:
    return f"10.{64 + secrets.randbelow(120)}.0.0/16"


@pytest.fixture(params=sorted(MODES))
def calico(request: pytest.FixtureRequest) -> Iterator[CalicoCluster]:
    with Cluster(nodes=3) as cluster:
        cc = CalicoCluster.create(cluster, pool_cidr(), {**MODES[request.param], "FELIX_PROMETHEUSMETRICSENABLED": "true"})
        cc.mode = request.param  # type: ignore[attr-defined]
        try:
            for node in cluster.nodes:
                cc.start(node)
            yield cc
        finally:
            cc.close()


def established(cc: CalicoCluster, node: Node, others: list[Node]) -> bool:
    out = cc.calicoctl(node, "node", "status", check=False).stdout
    return all(any(str(o.address.ip) in line and "Established" in line for line in out.splitlines()) for o in others)


def all_reach(pods: list[PodInfo], tcp: bool = True) -> list[str]:
    failures = []
    for src, dst in itertools.permutations(pods, 2):
        if src.node is dst.node:
            continue
        problem = reach(src, dst, tcp=tcp)
        if problem:
            failures.append(problem)
    return failures


def wait_reach(src: PodInfo, dst: PodInfo, timeout: float = 30) -> float:
    started = time.monotonic()
    wait_until(lambda: src.pod.ping(dst.ip, count=1, timeout=1), timeout=timeout, interval=0.1, what=f"{src.ip} -> {dst.ip}")
    return time.monotonic() - started


def test_three_nodes_three_pods_each_reach_each_other(calico: CalicoCluster) -> None:
    cluster = calico.cluster
    pods = [calico.add_pod(node) for node in cluster.nodes for _ in range(3)]
    # The last pod added must be reachable from the first node before the matrix starts.
    wait_reach(pods[0], pods[-1], timeout=60)
    assert all_reach(pods) == []
    for node in cluster.nodes:
        others = [n for n in cluster.nodes if n is not node]
        if calico.mode == "bird":  # type: ignore[attr-defined]
            wait_until(lambda node=node, others=others: established(calico, node, others), timeout=60, what="BGP Established")
            status = calico.calicoctl(node, "node", "status").stdout
            assert status.startswith("Calico process is running.\n\nIPv4 BGP status\n"), status
            header = status.splitlines()[4]
            assert [c.strip() for c in header.split("|")[1:-1]] == ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]
            for other in others:
                assert f"| {other.address.ip} " in status and "node-to-node mesh" in status
            assert calico.probe(node, "-bird-ready").returncode == 0
            assert calico.probe(node, "-bird-live").returncode == 0
        else:
            status = calico.calicoctl(node, "node", "status").stdout
            assert status == "Calico process is running.\n\nThe BGP backend process (BIRD) is not running.\n\n"
            assert node.ip("-d", "link", "show", "vxlan.calico").stdout.count("vxlan id 4096") == 1
        assert calico.probe(node, "-felix-ready").returncode == 0
        assert calico.probe(node, "-felix-live").returncode == 0
    first = cluster.nodes[0]

    def metrics() -> Samples:
        return scrape("127.0.0.1:9091", run=lambda code: first.run("python3", "-c", code, check=False).stdout)

    def counted() -> bool:
        got = metrics()
        if calico.mode == "bird":  # type: ignore[attr-defined]
            return value(got, "bgp_peers", ip_version="IPv4", status="Established") == 2.0
        # A block per node: two routes through vxlan.calico, a blackhole for its own.
        return value(got, "calico_node_routes", kind="vxlan") == 3.0

    wait_until(counted, timeout=30, what="the node's metrics")
    got = metrics()
    assert value(got, "felix_active_local_endpoints") == 3.0
    assert value(got, "felix_cluster_num_workload_endpoints") == 9.0 and value(got, "felix_cluster_num_hosts") == 3.0
    wide = calico.calicoctl(cluster.nodes[0], "get", "nodes", "-o", "wide").stdout
    assert wide.split("\n")[0].split() == ["NAME", "ASN", "IPV4", "IPV6"]
    for node in cluster.nodes:
        assert any(line.split()[:3] == [node.name, "(64512)", str(node.address)] for line in wide.splitlines()), wide


def _remote_state(cc: CalicoCluster, node: Node) -> str:
    routes = "\n".join(cc.routes(node))
    neigh = node.ip("neigh", "show", "dev", "vxlan.calico", check=False).stdout
    fdb = node.run("bridge", "fdb", "show", "dev", "vxlan.calico", check=False).stdout
    return routes + "\n" + neigh + fdb


def test_node_joins_then_is_deleted(calico: CalicoCluster) -> None:
    cluster = calico.cluster
    first = calico.add_pod(cluster.nodes[0])
    fourth = cluster.add_node()
    calico.start(fourth)
    newcomer = calico.add_pod(fourth)
    for node in cluster.nodes[:3]:
        src = first if node is cluster.nodes[0] else calico.add_pod(node)
        took = wait_reach(src, newcomer, timeout=30)
        assert took < 30
    assert reach(first, newcomer) == ""
    # The fourth node leaves: its calico-node stops, it is deleted from the datastore.
    block = ipaddress.ip_network(f"{newcomer.ip}/26", strict=False)
    calico.delete_pod(newcomer)
    calico.stop(fourth)
    tunnel = json.loads(calico.calicoctl(cluster.nodes[0], "get", "node", fourth.name, "-o", "json").stdout)["spec"].get(
        "ipv4VXLANTunnelAddr", ""
    )
    out = calico.calicoctl(cluster.nodes[0], "delete", "node", fourth.name)
    assert "Successfully deleted 1 'Node' resource(s)" in out.stdout
    for node in cluster.nodes[:3]:
        wait_until(
            lambda node=node: (
                str(block) not in _remote_state(calico, node)
                and str(fourth.address.ip) not in _remote_state(calico, node)
                and (not tunnel or tunnel not in _remote_state(calico, node))
            ),
            timeout=30,
            what=f"{fourth.name}'s routes, neighbours and FDB entries gone from {node.name}",
        )
    blocks = calico.calicoctl(cluster.nodes[0], "ipam", "show", "--show-blocks").stdout
    assert str(block) not in blocks, blocks
    check = calico.calicoctl(cluster.nodes[0], "ipam", "check").stdout
    assert fourth.name not in check
    cluster.remove_node(fourth)


def settled_routes(cc: CalicoCluster, node: Node) -> list[str]:
    """The node's routes once they stop changing (BGP converges within a few seconds)."""
    last: list[list[str]] = [cc.routes(node)]

    def unchanged() -> bool:
        time.sleep(1.5)
        now = cc.routes(node)
        same = now == last[0]
        last[0] = now
        return same

    wait_until(unchanged, timeout=60, interval=0, what="routes settled")
    return last[0]


def test_sigkill_and_restart_keeps_traffic_and_routes(calico: CalicoCluster) -> None:
    cluster = calico.cluster
    a, b = cluster.nodes[0], cluster.nodes[1]
    on_a, on_b = calico.add_pod(a), calico.add_pod(b)
    calico.add_pod(cluster.nodes[2])
    wait_reach(on_b, on_a, timeout=60)
    if calico.mode == "bird":  # type: ignore[attr-defined]
        wait_until(lambda: established(calico, a, [b, cluster.nodes[2]]), timeout=60, what="BGP Established")
    wait_until(lambda: len(calico.routes(a)) >= 3, timeout=30, what="routes on a")
    before = settled_routes(calico, a)
    pinger = on_b.pod.popen("ping", "-n", "-i", "0.2", "-W", "1", on_a.ip, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        time.sleep(1)
        calico.kill(a, signal.SIGKILL)
        time.sleep(3)  # down: traffic through the node must keep flowing
        assert calico.routes(a) == before
        calico.start(a)
        if calico.mode == "bird":  # type: ignore[attr-defined]
            wait_until(lambda: established(calico, a, [b, cluster.nodes[2]]), timeout=60, what="BGP Established again")
        wait_until(lambda: calico.routes(a) == before, timeout=30, what="the same routes after restart")
        time.sleep(1)
    finally:
        pinger.send_signal(signal.SIGINT)
        out, _ = pinger.communicate(timeout=10)
    summary = next(line for line in out.splitlines() if "packets transmitted" in line)
    sent, received = (int(x.split()[0]) for x in summary.split(", ")[:2])
    assert sent > 10 and received >= sent - 1, summary  # at most one reply lost to timing
    after = calico.routes(a)
    assert after == before and len(after) == len(set(after))
    assert reach(on_b, on_a) == ""


UDP_SERVER = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', int(sys.argv[1]))); s.settimeout(30)\n"
    "seen = {}\n"
    "while len(seen) < 2:\n"
    "    data, peer = s.recvfrom(100); seen[data.decode()] = peer[0]\n"
    "for k, v in seen.items(): print(k, v)\n"
)
UDP_SEND = (
    "import socket,sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for _ in range(5): s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))\n"
)


def test_nat_outgoing_masquerades_only_pools_with_it() -> None:
    with Cluster(nodes=1) as cluster:
        nat_pool, plain_pool = pool_cidr(), f"10.{200 + secrets.randbelow(50)}.0.0/16"
        cc = CalicoCluster.create(cluster, nat_pool, MODES["vxlan"])
        try:
            node = cluster.nodes[0]
            cc.start(node)
            doc = {"kind": "IPPool", "apiVersion": "projectcalico.org/v3", "metadata": {"name": "plain"},
                   "spec": {"cidr": plain_pool, "natOutgoing": False}}  # fmt: skip
            cc.calicoctl(node, "create", "-f", "-", input=json.dumps(doc))
            nat = cc.add_pod(node)
            assert cluster.etcd is not None
            plain_net = conflist(cluster.etcd.endpoint, "plain", {"ipam": {"type": "calico-ipam", "ipv4_pools": [plain_pool]}})
            (node.private("/etc/cni/net.d") / "20-plain.conflist").write_text(json.dumps(plain_net))
            cc.network = "plain"
            plain = cc.add_pod(node)
            cc.network = "k8s-pod-network"
            assert ipaddress.ip_address(plain.ip) in ipaddress.ip_network(plain_pool)
            outside = cluster.add_outside()
            target = outside.addresses()[0]
            server = outside.popen(sys.executable, "-u", "-c", UDP_SERVER, "9999", stdout=subprocess.PIPE)
            try:
                time.sleep(0.5)
                nat.pod.run(sys.executable, "-c", UDP_SEND, target, "9999", "nat")
                plain.pod.run(sys.executable, "-c", UDP_SEND, target, "9999", "plain")
                out, _ = server.communicate(timeout=30)
            finally:
                if server.poll() is None:
                    server.kill()
            seen = dict(line.split() for line in out.splitlines() if line.strip())
            assert seen == {"nat": str(node.address.ip), "plain": plain.ip}
            table = node.run("nft", "list", "table", "inet", "calico").stdout
            assert "set cali40masq-ipam-pools" in table and "set cali40all-ipam-pools" in table
            assert "masquerade fully-random" in table
        finally:
            cc.close()
