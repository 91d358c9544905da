"""Three nodes with flanneld's vxlan backend (started at the same moment), three pods each on
the kube-flannel conflist: connectivity, each node's kernel state against flannel's, the files
the plugin and host-local write, the plugin delegating to the reference bridge, CHECK/GC/DEL,
restart, a deleted device, the masquerade rules, routes flanneld did not make, etcd going away,
and a lease deleted in etcd."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import wait_until
from tests.flannel.conftest import flannel_cluster
from tests.flannel.flannelcluster import FlannelCluster, conflist, mesh
from tests.flannel.kernelstate import actual_vxlan, dump, expected_vxlan
from tests.metrics import listening_ports, scrape, value

HEALTHZ_PORT = 10256
METRICS = "127.0.0.1:10257"
ARGS = ["--ip-masq", "--iptables-resync=1", f"--healthz-port={HEALTHZ_PORT}", f"--metrics-address={METRICS}"]


@pytest.fixture(scope="module")
def fc() -> Iterator[FlannelCluster]:
    yield from flannel_cluster("vxlan", args=ARGS)


def test_nodes_started_together_hold_different_subnets(fc: FlannelCluster) -> None:
    subnets = [fc.env_values(node)["FLANNEL_SUBNET"] for node in fc.cluster.nodes]
    assert len(set(subnets)) == 3
    assert len(fc.leases()) == 3
    for node in fc.cluster.nodes:
        values = fc.env_values(node)
        assert list(values) == ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"]
        assert (values["FLANNEL_NETWORK"], values["FLANNEL_MTU"], values["FLANNEL_IPMASQ"]) == ("10.244.0.0/16", "1450", "true")


def test_every_pod_reaches_every_other(fc: FlannelCluster) -> None:
    assert mesh(fc.pods) == []


def test_kernel_state_is_flannels(fc: FlannelCluster) -> None:
    for node in fc.cluster.nodes:
        assert actual_vxlan(fc, node) == expected_vxlan(fc, node), dump(fc, node)


def test_delegate_and_host_local_files(fc: FlannelCluster) -> None:
    from pycni.cli.main import container_id_for

    for info in fc.pods:
        subnet = fc.env_values(info.node)["FLANNEL_SUBNET"]
        network = subnet.rsplit(".", 1)[0] + ".0/" + subnet.split("/")[1]
        cid = container_id_for(info.pod.path)
        saved = (info.node.private("/var/lib/cni") / "flannel" / cid).read_bytes()
        # flannel-io/cni-plugin's doCmdAdd: json.Marshal of the delegate map (keys sorted).
        assert (
            saved
            == (
                f'{{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{{"ranges":[[{{"subnet":"{network}"}}]],'
                '"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,'
                '"mtu":1450,"name":"cbr0","type":"bridge"}'
            ).encode()
        )
        store = info.node.private("/var/lib/cni") / "networks" / "cbr0"
        assert (store / info.ip).read_bytes() == f"{cid}\r\neth0".encode()
    for node in fc.cluster.nodes:
        store = node.private("/var/lib/cni") / "networks" / "cbr0"
        mine = sorted(p.ip for p in fc.pods if p.node is node)
        assert sorted(p.name for p in store.iterdir() if p.name[0].isdigit()) == mine
        assert (store / "last_reserved_ip.0").read_text() == max(mine, key=lambda ip: int(ip.split(".")[-1]))
        assert (node.private("/var/lib/cni") / "flannel").stat().st_mode & 0o777 == 0o700


@pytest.mark.difference("flannel-check-gc")
def test_check_gc_and_del(fc: FlannelCluster) -> None:
    """On a second network of spec 1.1.0 (kube-flannel's conflist is 0.3.1: no CHECK, no GC)."""
    node = fc.cluster.nodes[0]
    doc = conflist("flannel11")
    doc["cniVersion"] = "1.1.0"
    (node.private("/etc/cni/net.d") / "20-flannel11.conflist").write_text(json.dumps(doc))
    saved_dir = node.private("/var/lib/cni") / "flannel"
    before = {p.name for p in saved_dir.iterdir()}
    first, second = fc.add_pod(node, "flannel11"), fc.add_pod(node, "flannel11")
    try:
        assert fc.cni(node, "check", first.pod, first.name, "flannel11").returncode == 0
        assert len({p.name for p in saved_dir.iterdir()} - before) == 2
        out = fc.delete_pod(first)
        assert out.returncode == 0, out.stdout + out.stderr
        assert len({p.name for p in saved_dir.iterdir()} - before) == 1
        assert not (node.private("/var/lib/cni") / "networks" / "flannel11" / first.ip).exists()
        # the second pod's namespace goes away without a DEL: GC collects its address and its file
        node.delete_pod_netns(second.pod)
        fc.pods.remove(second)
        assert fc.cni(node, "gc", fc.pods[0].pod, "x", "flannel11").returncode == 0
        assert {p.name for p in saved_dir.iterdir()} == before  # cbr0's files are another network's: kept
        assert not (node.private("/var/lib/cni") / "networks" / "flannel11" / second.ip).exists()
    finally:
        for info in (first, second):
            if info in fc.pods:
                fc.delete_pod(info)
    # a DEL of something never added succeeds (the reference's behaviour)
    ghost = node.make_pod()
    try:
        assert fc.cni(node, "del", ghost, "ghost").returncode == 0
    finally:
        node.delete_pod_netns(ghost)


def test_delegating_to_the_reference_bridge(fc: FlannelCluster) -> None:
    node = fc.cluster.nodes[1]
    saved = fc.cni_path
    fc.cni_path = f"/usr/lib/cni:{fc.plugin_dir}"  # flannel is ours; bridge and host-local the reference's
    try:
        info = fc.add_pod(node)
        try:
            assert mesh([info, *(p for p in fc.pods if p.node is not node and p is not info)][:4], tcp=False) == []
        finally:
            assert fc.delete_pod(info).returncode == 0
    finally:
        fc.cni_path = saved


def test_reference_flannel_plugin_on_our_subnet_env(fc: FlannelCluster) -> None:
    """flannel-io/cni-plugin's own binary (Debian does not ship it; PYCNI_REFERENCE_FLANNEL names
    one built elsewhere) with the reference bridge and host-local, on the subnet.env our flanneld
    wrote: the pod reaches the others, and it saves the very bytes ours saves."""
    reference = os.environ.get("PYCNI_REFERENCE_FLANNEL", "/usr/lib/cni/flannel")
    if not Path(reference).exists():
        pytest.skip("no flannel plugin in /usr/lib/cni: Debian's containernetworking-plugins (1.1.1) no longer ships it")
    node = fc.cluster.nodes[2]
    chain = fc.cluster.root / "reference-chain"
    chain.mkdir(exist_ok=True)
    for name, target in (("flannel", reference), ("bridge", "/usr/lib/cni/bridge"), ("host-local", "/usr/lib/cni/host-local")):
        if not (chain / name).exists():
            (chain / name).symlink_to(target)
    saved_dir = node.private("/var/lib/cni") / "flannel"
    ours = next(p for p in fc.pods if p.node is node)
    from pycni.cli.main import container_id_for

    saved_cni_path, fc.cni_path = fc.cni_path, str(chain)
    try:
        info = fc.add_pod(node)
        try:
            theirs = (saved_dir / container_id_for(info.pod.path)).read_bytes()
            assert theirs == (saved_dir / container_id_for(ours.pod.path)).read_bytes()
            others = [p for p in fc.pods if p.node is not node and p is not info][:2]
            assert mesh([info, *others], tcp=False) == []
        finally:
            assert fc.delete_pod(info).returncode == 0
    finally:
        fc.cni_path = saved_cni_path


def test_healthz(fc: FlannelCluster) -> None:
    node = fc.cluster.nodes[0]
    for path, body in (("/healthz", "flanneld is running"), ("/readyz", "flanneld is ready")):
        out = node.run(
            "python3",
            "-c",
            f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{HEALTHZ_PORT}{path}').read().decode())",
        )
        assert out.stdout.strip().startswith(body)


def test_metrics(fc: FlannelCluster) -> None:
    node = fc.cluster.nodes[0]
    samples = scrape(METRICS, run=lambda code: node.run("python3", "-c", code).stdout)
    assert value(samples, "flannel_subnet_leases") == 3.0
    assert value(samples, "flannel_routes", ip_version="4") == 2.0  # one per other node
    assert (value(samples, "flannel_dataplane_sync_duration_seconds_count") or 0) >= 1
    assert (value(samples, "flannel_dataplane_changes_total", action="written") or 0) >= 1
    assert value(samples, "flannel_dataplane_failures_total") is not None
    assert value(samples, "flannel_lease_renewal_failures_total") == 0.0
    expiry = value(samples, "flannel_lease_expiry_timestamp_seconds")
    assert expiry is not None and time.time() < expiry <= time.time() + 24 * 3600 + 5
    assert (value(samples, "process_start_time_seconds") or 0) > 0
    assert sorted(listening_ports(fc.daemons[node.name].pid)) == [HEALTHZ_PORT, int(METRICS.rsplit(":", 1)[1])]


def test_masquerade_rules_restored_when_removed_or_reordered(fc: FlannelCluster) -> None:
    node = fc.cluster.nodes[0]

    def rules() -> list[str]:
        out = node.run("nft", "list", "chain", "ip", "flannel-ipv4", "postrtg", check=False).stdout
        return [line.strip() for line in out.splitlines() if "return" in line or "masquerade" in line]

    wanted = rules()
    assert len(wanted) == 6 and "masquerade fully-random" in wanted[-1]
    handles = node.run("nft", "-a", "list", "chain", "ip", "flannel-ipv4", "postrtg").stdout
    masq_handle = next(line.split("# handle ")[1] for line in handles.splitlines() if "224.0.0.0/4" in line)
    node.run("nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", masq_handle)
    wait_until(lambda: rules() == wanted, timeout=15, what="the removed masquerade rule restored")
    # reordered: the masquerade rule first (present, but in the wrong place)
    node.run("nft", "insert", "rule", "ip", "flannel-ipv4", "postrtg", "ip", "saddr", "10.244.0.0/16", "masquerade")
    wait_until(lambda: rules() == wanted, timeout=15, what="the reordered chain restored")
    node.run("nft", "delete", "table", "ip", "flannel-ipv4")
    wait_until(lambda: rules() == wanted, timeout=15, what="the deleted table restored")


def test_pods_reach_outside_through_masquerade(fc: FlannelCluster) -> None:
    outside = fc.cluster.outside[0]
    pod = fc.pods[0]
    assert pod.pod.ping(outside.addresses()[0], count=2, timeout=2)


@pytest.mark.difference("flanneld-route-protocol")
def test_routes_flanneld_did_not_make_are_untouched(fc: FlannelCluster) -> None:
    node = fc.cluster.nodes[2]
    gateway = str(node.gateway)
    node.ip("route", "add", "198.51.100.0/24", "via", gateway, "proto", "static")
    node.ip("route", "add", "203.0.113.0/24", "via", gateway)  # proto boot, as flannel's own would be
    # the destination of a remote lease held by an operator's route: reported, never replaced
    other = fc.env_values(fc.cluster.nodes[0])["FLANNEL_SUBNET"]
    remote = other.rsplit(".", 1)[0] + ".0/24"
    node.ip("route", "replace", remote, "via", gateway, "proto", "static")  # over flanneld's, in one step
    try:
        # at its next pass (at most 10 s) flanneld finds the operator's route in the way
        wait_until(lambda: "another route holds the destination" in fc.log(node), timeout=15, what="the conflict reported")
        time.sleep(1)
        table = node.ip("route").stdout
        assert "198.51.100.0/24 via" in table and "203.0.113.0/24 via" in table
        assert f"{remote} via {gateway} dev eth0 proto static" in table
    finally:
        node.ip("route", "del", "198.51.100.0/24")
        node.ip("route", "del", "203.0.113.0/24")
        node.ip("route", "del", remote, "proto", "static")
    wait_until(lambda: any(line.startswith(remote) for line in fc.routes(node)), timeout=15, what="the lease's route back")


def test_deleted_device_is_recreated_with_its_mac(fc: FlannelCluster) -> None:
    node = fc.cluster.nodes[1]
    before = actual_vxlan(fc, node)
    node.ip("link", "del", "flannel.1")
    wait_until(lambda: node.ip("link", "show", "flannel.1", check=False).returncode == 0, timeout=10, what="flannel.1 back")
    wait_until(lambda: actual_vxlan(fc, node) == before, timeout=10, what="flannel.1 as it was")
    assert mesh([p for p in fc.pods if p.node is node][:1] + [p for p in fc.pods if p.node is not node][:2], tcp=False) == []


def test_restart_keeps_subnet_and_vtep_mac(fc: FlannelCluster) -> None:
    node = fc.cluster.nodes[0]
    env_before, state_before, leases_before = fc.subnet_env(node), actual_vxlan(fc, node), fc.leases()
    fc.kill(node)
    fc.start(node, extra_args=ARGS)
    assert fc.subnet_env(node) == env_before
    assert fc.leases() == leases_before
    wait_until(lambda: actual_vxlan(fc, node) == state_before, timeout=10, what="the same kernel state")
    assert "taking it back" in fc.log(node)
    assert mesh(fc.pods, tcp=False) == []


def test_etcd_down_keeps_the_dataplane(fc: FlannelCluster) -> None:
    etcd = fc.cluster.etcd
    assert etcd is not None
    states = {node.name: actual_vxlan(fc, node) for node in fc.cluster.nodes}
    etcd.stop()
    try:
        for node in fc.cluster.nodes:
            wait_until(lambda n=node: "Cannot list the subnet leases" in fc.log(n), timeout=20, what="etcd missed")
        time.sleep(2)
        for node in fc.cluster.nodes:
            assert actual_vxlan(fc, node) == states[node.name]
            assert fc.daemons[node.name].poll() is None
        assert mesh(fc.pods[:2] + fc.pods[-2:], tcp=False) == []
        # a new pod needs only subnet.env, not etcd
        info = fc.add_pod(fc.cluster.nodes[1])
        assert fc.delete_pod(info).returncode == 0
    finally:
        etcd.start()
    # back: a change made now reaches every node (the watch was set up again)
    fake = json.dumps(
        {"PublicIP": "172.31.255.250", "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": "02:00:00:00:00:01"}}
    )
    fc.etcdctl("put", "/coreos.com/network/subnets/10.244.250.0-24", fake)
    for node in fc.cluster.nodes:
        wait_until(
            lambda n=node: "10.244.250.0/24 via 10.244.250.0 dev flannel.1 onlink" in fc.routes(n), timeout=20, what="new lease"
        )
    fc.etcdctl("del", "/coreos.com/network/subnets/10.244.250.0-24")
    for node in fc.cluster.nodes:
        wait_until(lambda n=node: not any("10.244.250.0" in r for r in fc.routes(n)), timeout=10, what="lease gone")


def test_lease_deleted_in_etcd_is_gone_from_the_others(fc: FlannelCluster) -> None:
    victim = fc.cluster.nodes[2]
    key = next(k for k, v in fc.leases().items() if v["PublicIP"] == str(victim.address.ip))
    subnet = key.replace("-", "/")
    fc.etcdctl("del", f"/coreos.com/network/subnets/{key}")
    for node in fc.cluster.nodes[:2]:
        wait_until(
            lambda n=node: not any(r.startswith(subnet) for r in fc.routes(n)), timeout=5, what=f"{subnet} gone from {node.name}"
        )
        state = actual_vxlan(fc, node)
        assert not any(victim_ip in line for line in state["fdb"] for victim_ip in [str(victim.address.ip)])
    # flanneld on that node stops, as flannel's does ("Lease has been revoked")
    wait_until(lambda: fc.daemons[victim.name].poll() is not None, timeout=15, what="flanneld on the victim to stop")
    assert fc.daemons[victim.name].returncode == 1
    assert "revoked" in fc.log(victim)
    assert json.dumps(fc.leases()).count(str(victim.address.ip)) == 0
