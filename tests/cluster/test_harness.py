"""The cluster harness itself: nodes reach each other over the underlay (also across two
subnets through the host), reach etcd, have their own hostname and directories, and leave
nothing behind."""

from __future__ import annotations

import subprocess

from .harness import Cluster


def test_nodes_reach_each_other_and_etcd_and_keep_their_own_directories() -> None:
    with Cluster(nodes=3, subnets=2) as cluster:
        one, two, three = cluster.nodes
        assert one.address.network != two.address.network  # subnets alternate
        assert one.address.network == three.address.network
        for src in cluster.nodes:
            for dst in cluster.nodes:
                out = src.run("ping", "-n", "-q", "-c", "1", "-W", "2", str(dst.address.ip), check=False)
                assert out.returncode == 0, f"{src.name} -> {dst.name}: {out.stdout}{out.stderr}"
        out = one.run("ping", "-n", "-q", "-c", "1", "-W", "2", str(two.address6.ip), check=False)
        assert out.returncode == 0, out.stdout
        assert one.run("hostname").stdout.strip() == one.name
        one.run("sh", "-c", "echo one > /var/lib/calico/nodename")
        assert (one.private("/var/lib/calico") / "nodename").read_text() == "one\n"
        assert two.run("cat", "/var/lib/calico/nodename", check=False).returncode != 0
        assert cluster.etcd is not None
        health = two.run(
            "etcdctl", "--endpoints", cluster.node_env["ETCD_ENDPOINTS"], "endpoint", "health", env={"ETCDCTL_API": "3"}
        )
        assert "healthy" in health.stdout + health.stderr
        outside = cluster.add_outside()
        assert one.run("ping", "-n", "-q", "-c", "1", "-W", "2", outside.addresses()[0], check=False).returncode == 0
        pod = two.make_pod()
        daemon = two.popen("sleep", "600")
        assert daemon.poll() is None
        netns = {one.netns, two.netns, three.netns, pod.name, outside.name}
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(name in listed for name in netns)
    assert daemon.poll() is not None
