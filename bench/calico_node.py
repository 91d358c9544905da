"""calico-node across nodes (the cluster harness: nodes are namespaces on one bridge, one etcd).

    scripts/in-netns.sh .venv/bin/python bench/calico_node.py [SAMPLES [BLOCKS]]

1. pod to remote packet: a pod ADD on node 1, in a block new to that node, until the first
   packet sent from a pod on node 2 arrives in it; median of SAMPLES, VXLAN and BGP mode.
   The receiver listens in the pod's namespace before the ADD starts; the sender starts as
   soon as ADD has returned the address and sends every 5 ms. Between samples the pod is
   deleted and node 1's block released, so the next ADD claims a block again.
2. cold start with BLOCKS remote blocks (VXLAN mode): BLOCKS /26 blocks affine to 100 other
   nodes (with tunnel addresses and MACs) are in etcd; from calico-node's launch to every
   route (and the neighbour and FDB entry of every remote VTEP) programmed; then
   calico-node's resident memory (VmRSS).
"""

from __future__ import annotations

import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.calico.node.calicocluster import CalicoCluster, conflist
from tests.cluster.harness import Cluster, wait_until

from pycni.calico import model
from pycni.calico.datastore import DatastoreSettings, open_datastore
from pycni.calico.ipam import IPAM
from pycni.calico.node.startup import vxlan_mac

RECEIVER = (
    "import socket,sys,time\n"
    "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9911)); s.settimeout(60)\n"
    "print('listening', flush=True)\n"
    "s.recvfrom(10); print(repr(time.time()), flush=True)\n"
)
SENDER = (
    "import socket,sys,time\n"
    "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "end=time.time()+60\n"
    "while time.time()<end:\n"
    "    try: s.sendto(b'x', (sys.argv[1], 9911))\n"
    "    except OSError: pass\n"
    "    time.sleep(0.005)\n"
)
MODES = {
    "vxlan": {"CALICO_NETWORKING_BACKEND": "vxlan", "CALICO_IPV4POOL_VXLAN": "Always"},
    "bgp": {"CALICO_NETWORKING_BACKEND": "bird"},
}


def first_packet(samples: int, mode: str) -> list[float]:
    out = []
    with Cluster(nodes=2) as cluster:
        cc = CalicoCluster.create(cluster, "10.61.0.0/16", MODES[mode])
        try:
            one, two = cluster.nodes
            cc.start(one)
            cc.start(two)
            assert cluster.etcd is not None
            store = open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=cluster.etcd.endpoint))
            # Pods get their own pool: the node's tunnel address lives in its first block of the default one.
            vxlan = "Always" if mode == "vxlan" else "Never"
            IPAM(store).pools.create({"metadata": {"name": "pods"}, "spec": {"cidr": "10.62.0.0/16", "vxlanMode": vxlan}})
            for node in (one, two):
                cc.write_conflist(
                    node,
                    conflist(
                        cluster.etcd.endpoint, cc.network, {"ipam": {"type": "calico-ipam", "ipv4_pools": ["10.62.0.0/16"]}}
                    ),
                )
            sender_pod = cc.add_pod(two)
            if mode == "bgp":
                wait_until(lambda: "Established" in cc.calicoctl(one, "node", "status", check=False).stdout, timeout=60)
            for _ in range(samples):
                pod = one.make_pod()
                receiver = pod.popen(sys.executable, "-u", "-c", RECEIVER, stdout=subprocess.PIPE)
                assert receiver.stdout is not None
                receiver.stdout.readline()
                started = time.time()
                result = cc.cni(one, "add", pod, "bench")
                assert result.returncode == 0, result.stdout + result.stderr
                ip = json.loads(result.stdout)["ips"][0]["address"].split("/")[0]
                sender = sender_pod.pod.popen(sys.executable, "-c", SENDER, ip)
                line = receiver.stdout.readline()
                sender.kill()
                sender.wait()
                receiver.wait()
                out.append(float(line) - started)
                cc.cni(one, "del", pod, "bench")
                one.delete_pod_netns(pod)
                ipam = IPAM(store)
                for cidr in ipam.affine_blocks(one.name, 4):
                    if ipaddress.ip_address(ip) not in cidr:
                        continue
                    ipam.release_block_affinity(one.name, cidr, require_empty=True)
                time.sleep(0.5)
            store.close()
        finally:
            cc.close()
    return out


def seed_blocks(endpoint: str, blocks: int, pool: ipaddress.IPv4Network) -> None:
    store = open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=endpoint))
    try:
        IPAM(store).pools.create(
            {"metadata": {"name": "bench"}, "spec": {"cidr": str(pool), "blockSize": 26, "vxlanMode": "Always"}}
        )
        subnets = list(pool.subnets(new_prefix=26))
        for n in range(100):
            name = f"remote-{n}"
            tunnel = subnets[n].network_address
            node = {
                "kind": "Node", "apiVersion": "projectcalico.org/v3", "metadata": {"name": name},
                "spec": {"bgp": {"ipv4Address": f"100.64.{n // 200}.{n % 200 + 1}/16"}, "ipv4VXLANTunnelAddr": str(tunnel),
                         "vxlanTunnelMACAddr": vxlan_mac(name)},
            }  # fmt: skip
            store.create(model.resource_key("nodes", name), json.dumps(node))
        for i in range(blocks):
            block = model.AllocationBlock.new(subnets[i], 0)
            block.affinity = f"host:remote-{i % 100}"
            store.create(model.block_key(subnets[i]), block.to_json())
            store.create(model.affinity_key(f"remote-{i % 100}", subnets[i]), model.BlockAffinity("confirmed").to_json())
    finally:
        store.close()


def cold_start(blocks: int) -> tuple[float, int]:
    with Cluster(nodes=1) as cluster:
        assert cluster.etcd is not None
        pool = ipaddress.ip_network("10.128.0.0/12")
        seed_blocks(cluster.etcd.endpoint, blocks, pool)  # type: ignore[arg-type]
        cc = CalicoCluster.create(cluster, str(pool), {**MODES["vxlan"], "CALICO_IPV4POOL_CIDR": str(pool)})
        node = cluster.nodes[0]
        try:
            started = time.monotonic()
            proc = cc.start(node, wait=False)

            def programmed() -> bool:
                routes = node.ip("route", "show", "proto", "80").stdout.count("onlink")
                return routes >= blocks

            wait_until(programmed, timeout=120, interval=0.02, what="every remote block routed")
            took = time.monotonic() - started
            neigh = node.ip("neigh", "show", "dev", "vxlan.calico").stdout.count("PERMANENT")
            assert neigh == 100, neigh
            time.sleep(2)
            with open(f"/proc/{proc.pid}/status") as fh:
                rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
        finally:
            cc.close()
    return took, rss


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    blocks = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    for mode in ("vxlan", "bgp"):
        times = first_packet(samples, mode)
        print(f"{mode}: pod ADD (new block) -> first packet from a remote node: median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}, n={len(times)})", flush=True)  # fmt: skip
    took, rss = cold_start(blocks)
    print(f"vxlan: cold start, {blocks} remote blocks of 100 nodes: all routed {took:.2f} s after launch; "
          f"calico-node RSS {rss / 1024:.1f} MiB", flush=True)  # fmt: skip
    os._exit(0)


if __name__ == "__main__":
    main()
