"""The Flannel demo: three nodes (network namespaces with private /run/flannel and
/var/lib/cni) on one underlay bridge with one etcd, flanneld on each (vxlan, or host-gw with
DEMO_BACKEND=host-gw), pods made with kube-flannel's conflist (cbr0: flannel delegating to
bridge with hairpinMode and isDefaultGateway, then portmap) through `pycni add`; subnet.env,
the leases in etcd, cross-node pings. Everything is removed at the end, also on failure."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster.harness import Cluster  # noqa: E402
from tests.flannel.flannelcluster import PREFIX, FlannelCluster, conflist, network_config  # noqa: E402

BOLD, OFF = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")


def step(title: str, *lines: str) -> None:
    print(f"\n{BOLD}== {title}{OFF}")
    for line in lines:
        print(f"   {line}")


def main() -> int:
    backend = os.environ.get("DEMO_BACKEND", "vxlan")
    config = network_config(backend)
    kube_flannel = conflist("cbr0", [{"type": "portmap", "capabilities": {"portMappings": True}}])
    with Cluster(nodes=3) as cluster:
        assert cluster.etcd is not None
        fc = FlannelCluster.create(cluster, config, ["--ip-masq"])
        try:
            step("An underlay bridge, one etcd, three nodes", f"bridge {cluster.bridge}, etcd {cluster.etcd.endpoint}")
            for node in cluster.nodes:
                print(f"   {node.name}: netns {node.netns}, eth0 {node.address}")
            step("The network configuration in etcd", f"etcdctl put {PREFIX}/config '{json.dumps(config)}'")
            step(
                "kube-flannel's conflist on every node (/etc/cni/net.d/10-flannel.conflist)",
                *json.dumps(kube_flannel, indent=2).splitlines(),
            )
            step("flanneld on each node (started together): flanneld --etcd-endpoints=... --ip-masq")
            for node in cluster.nodes:
                fc.write_conflist(node, kube_flannel)
                fc.start(node, wait=False)
            for node in cluster.nodes:
                fc.wait_ready(node)
            for node in cluster.nodes:
                step(f"{node.name}: /run/flannel/subnet.env", *fc.subnet_env(node).splitlines())
            step(f"The leases in etcd ({PREFIX}/subnets/)")
            listing = fc.etcdctl("get", "--prefix", f"{PREFIX}/subnets/").stdout.splitlines()
            for key, value in zip(listing[::2], listing[1::2], strict=False):
                print(f"   {key}\n     {value}")
            fc.cni_path = f"{fc.plugin_dir}:/usr/lib/cni"  # portmap: Debian's
            step("Two pods on each node (pycni add cbr0 <netns>)")
            for node in cluster.nodes:
                for _ in range(2):
                    info = fc.add_pod(node)
                    print(f"   {info.name} on {node.name}: {info.ip}")
            first = cluster.nodes[0]
            step(
                f"{first.name}: routes, neighbours and FDB entries flanneld wrote"
                if backend == "vxlan"
                else f"{first.name}: routes"
            )
            for line in fc.routes(first):
                print(f"   {line}  (proto 70)")
            if backend == "vxlan":
                for line in first.ip("neigh", "show", "dev", "flannel.1", "nud", "permanent").stdout.splitlines():
                    print(f"   neigh {line}")
                for line in first.run("bridge", "fdb", "show", "dev", "flannel.1").stdout.splitlines():
                    print(f"   fdb {line}")
            step("Cross-node pings between pods")
            failed = 0
            for src in fc.pods:
                for dst in fc.pods:
                    if src.node is dst.node:
                        continue
                    ok = src.pod.ping(dst.ip, count=1, timeout=2) or src.pod.ping(dst.ip, count=2, timeout=2)
                    failed += not ok
                    print(f"   {src.name}@{src.node.name} -> {dst.name}@{dst.node.name} ({dst.ip}): {'ok' if ok else 'FAILED'}")
            step("Removing everything (pods, flanneld, nodes, etcd, the underlay)")
        finally:
            fc.close()
    print("   done")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
