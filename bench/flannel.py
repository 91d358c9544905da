"""flanneld across nodes (the cluster harness: nodes are namespaces on one bridge, one etcd).

    scripts/in-netns.sh .venv/bin/python bench/flannel.py [SAMPLES [LEASES [SECONDS]]]

1. lease to routes: with flanneld on 3 nodes (vxlan), a lease is written in etcd (as a
   joining node's flanneld writes it) and the time until the route to it is in the kernel of
   both other nodes is taken from RTM_NEWROUTE notifications read inside the nodes'
   namespaces (no polling); median of SAMPLES (default 20); the lease is deleted between samples.
2. cold start with LEASES remote leases (default 250): they are in etcd before flanneld starts
   on an empty node; from its launch to every route, neighbour and FDB entry programmed, and
   whether any netlink request failed (flannel's `AddFDB failed: no buffer space available`).
   Beside it, the same 3 x LEASES changes sent one request at a time through pyroute2.
3. throughput: iperf3 (TCP, SECONDS, default 5) from a pod on node 1 to a pod on node 2 over
   vxlan and over host-gw, beside two namespaces joined by a veth pair, in the same run.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyetcd
from tests.cluster.harness import Cluster, Node, wait_until
from tests.flannel.flannelcluster import PREFIX, FlannelCluster, network_config

from pycni.net import netns

RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE = 24


def _lease(public: str, mac: str) -> str:
    return json.dumps({"PublicIP": public, "PublicIPv6": None, "BackendType": "vxlan", "BackendData": {"VNI": 1, "VtepMAC": mac}})


def _route_monitor(node: Node) -> socket.socket:
    sock = netns.socket_in(f"/run/netns/{node.netns}", socket.AF_NETLINK, socket.SOCK_RAW, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, RTMGRP_IPV4_ROUTE))
    return sock


def _wait_route(sock: socket.socket, dst: ipaddress.IPv4Network, deadline: float) -> float:
    """The time the kernel announced a route of flanneld's protocol to `dst`."""
    want = dst.network_address.packed
    while time.time() < deadline:
        sock.settimeout(max(0.01, deadline - time.time()))
        data = sock.recv(1 << 16)
        now = time.time()
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            body = data[offset + 16 : offset + length]
            if kind == RTM_NEWROUTE and body[1] == dst.prefixlen and body[5] == 70:
                attrs = 12
                while attrs + 4 <= len(body):
                    alen, atype = struct.unpack_from("=HH", body, attrs)
                    if atype == 1 and body[attrs + 4 : attrs + 8] == want:  # RTA_DST
                        return now
                    attrs += (alen + 3) & ~3
            offset += (length + 3) & ~3
    raise TimeoutError(f"no route to {dst}")


def lease_to_routes(samples: int) -> list[float]:
    out = []
    with Cluster(nodes=3) as cluster:
        fc = FlannelCluster.create(cluster, network_config("vxlan"))
        try:
            for node in cluster.nodes:
                fc.start(node)
            others = cluster.nodes[1:]
            assert cluster.etcd is not None
            client = pyetcd.client(cluster.etcd.host, cluster.etcd.client_port)
            for i in range(samples):
                subnet = ipaddress.IPv4Network(f"10.244.{200 + i % 50}.0/24")
                key = f"{PREFIX}/subnets/{subnet.network_address}-24"
                socks = [_route_monitor(node) for node in others]
                try:
                    start = time.time()
                    client.put(key, _lease(f"172.31.254.{10 + i}", f"02:00:00:00:01:{i % 256:02x}"))
                    done = max(_wait_route(sock, subnet, start + 10) for sock in socks)
                    out.append(done - start)
                finally:
                    for sock in socks:
                        sock.close()
                client.delete(key)
                gone = str(subnet)
                for node in others:
                    wait_until(lambda n=node, g=gone: not any(g in r for r in fc.routes(n)), timeout=10)
        finally:
            fc.close()
    return out


def _counts(node: Node) -> tuple[int, int, int]:
    routes = len(node.ip("route", "show", "proto", "70").stdout.splitlines())
    neigh = len(node.ip("neigh", "show", "dev", "flannel.1", "nud", "permanent", check=False).stdout.splitlines())
    fdb = len(node.run("bridge", "fdb", "show", "dev", "flannel.1", check=False).stdout.splitlines())
    return routes, neigh, fdb


def cold_start(leases: int) -> dict[str, object]:
    with Cluster(nodes=1) as cluster:
        fc = FlannelCluster.create(cluster, network_config("vxlan", network="10.128.0.0/9"))
        try:
            node = cluster.nodes[0]
            assert cluster.etcd is not None
            client = pyetcd.client(cluster.etcd.host, cluster.etcd.client_port)
            for i in range(leases):
                mac = f"02:00:00:{i >> 8 & 255:02x}:{i & 255:02x}:01"
                client.put(f"{PREFIX}/subnets/10.{128 + i // 250}.{i % 250}.0-24", _lease(f"10.{i // 250}.{i % 250}.9", mac))
            start = time.monotonic()
            fc.start(node, wait=False)
            wait_until(
                lambda: _counts(node) == (leases, leases, leases), timeout=60, interval=0.01, what="every lease programmed"
            )
            elapsed = time.monotonic() - start
            log = fc.log(node)
        finally:
            fc.close()
    programmed = next((line.split("] ", 1)[1] for line in log.splitlines() if f"({leases} remote leases)" in line), "")
    return {
        "seconds": elapsed,
        "failures": log.count("E flanneld] Dataplane"),
        "no buffer space": "No buffer space" in log,
        "programmed": programmed,
    }


def one_by_one(leases: int) -> float:
    """The same 3 x LEASES kernel changes as pyroute2 calls, one request and answer each."""
    name = f"pcb-{time.time_ns() % 10**8}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        run = ["ip", "netns", "exec", name]
        subprocess.run([*run, "ip", "link", "add", "lo2", "type", "dummy"], capture_output=True, check=False)
        subprocess.run([*run, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"], check=True)
        subprocess.run([*run, "ip", "addr", "add", "172.30.0.1/24", "dev", "eth0"], check=True)
        subprocess.run([*run, "ip", "link", "set", "eth0", "up"], check=True)
        code = f"""
import time
from pyroute2 import IPRoute
ipr = IPRoute()
ipr.link("add", ifname="flannel.1", kind="vxlan", vxlan_id=1, vxlan_port=8472, vxlan_local="172.30.0.1", vxlan_learning=0)
idx = ipr.link_lookup(ifname="flannel.1")[0]
ipr.link("set", index=idx, state="up")
start = time.monotonic()
for i in range({leases}):
    net = f"10.{{128 + i // 250}}.{{i % 250}}.0"
    mac = f"02:00:00:{{i >> 8 & 255:02x}}:{{i & 255:02x}}:01"
    ipr.neigh("replace", dst=net, lladdr=mac, ifindex=idx, state=0x80)
    ipr.fdb("replace", ifindex=idx, lladdr=mac, dst=f"10.{{i // 250}}.{{i % 250}}.9", state=0x80, flags=2)
    ipr.route("replace", dst=net + "/24", gateway=net, oif=idx, flags=4, proto=70)
print(time.monotonic() - start)
"""
        out = subprocess.run([*run, sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return float(out.stdout.strip())
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _iperf(server: list[str], client: list[str], address: str, seconds: int) -> float:
    srv = subprocess.Popen([*server, "iperf3", "-s", "-1", "-B", address], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        out = subprocess.run(
            [*client, "iperf3", "-J", "-c", address, "-t", str(seconds)], capture_output=True, text=True, check=True
        )
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.kill()
        srv.wait()


def throughput(seconds: int) -> dict[str, float]:
    out = {}
    for backend in ("vxlan", "host-gw"):
        with Cluster(nodes=2) as cluster:
            fc = FlannelCluster.create(cluster, network_config(backend))
            try:
                for node in cluster.nodes:
                    fc.start(node)
                a, b = fc.add_pod(cluster.nodes[0]), fc.add_pod(cluster.nodes[1])
                out[backend] = _iperf(["ip", "netns", "exec", b.pod.name], ["ip", "netns", "exec", a.pod.name], b.ip, seconds)
            finally:
                fc.close()
    one, two = f"pcb-a{time.time_ns() % 10**6}", f"pcb-b{time.time_ns() % 10**6}"
    try:
        for name in (one, two):
            subprocess.run(["ip", "netns", "add", name], check=True)
        subprocess.run(["ip", "-n", one, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", two], check=True)
        for name, addr in ((one, "10.99.0.1/24"), (two, "10.99.0.2/24")):
            subprocess.run(["ip", "-n", name, "addr", "add", addr, "dev", "eth0"], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", "eth0", "up"], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        out["veth pair"] = _iperf(["ip", "netns", "exec", two], ["ip", "netns", "exec", one], "10.99.0.2", seconds)
    finally:
        for name in (one, two):
            subprocess.run(["ip", "netns", "del", name], check=False)
    return out


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    leases = int(sys.argv[2]) if len(sys.argv) > 2 else 250
    seconds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    with open("/proc/loadavg") as fh:
        print(f"load average before: {' '.join(fh.read().split()[:3])}")
    times = lease_to_routes(samples)
    print(
        f"lease -> routes on both other nodes (3 nodes): median {statistics.median(times) * 1000:.0f} ms "
        f"({min(times) * 1000:.0f}-{max(times) * 1000:.0f}, n={len(times)})"
    )
    cold = cold_start(leases)
    print(
        f"cold start with {leases} remote leases: {cold['seconds']:.2f} s from launch to every route, neighbour and FDB entry;"
        f" failed requests: {cold['failures']}, ENOBUFS: {cold['no buffer space']}; flanneld: {cold['programmed']}"
    )
    print(f"the same {3 * leases} changes one request at a time (pyroute2): {one_by_one(leases):.2f} s")
    rates = throughput(seconds)
    base = rates["veth pair"]
    for name, rate in rates.items():
        print(f"throughput {name}: {rate:.2f} Gbit/s ({rate / base:.2f} x the veth pair)")
    with open("/proc/loadavg") as fh:
        print(f"load average after: {' '.join(fh.read().split()[:3])}")


if __name__ == "__main__":
    main()
