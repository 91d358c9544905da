"""Network policy in calico-node: how fast a policy is enforced, what a change costs at scale,
how the ruleset grows, and what the policy path costs traffic.

    scripts/in-netns.sh .venv/bin/python bench/calico_policy.py [SAMPLES]

1. apply to enforcement, 3 nodes (cluster harness, VXLAN): from `calicoctl apply` of a
   NetworkPolicy returning until the policy is programmed on every node (its member set holds
   the node's selected endpoint), watched by a poller in each node's network namespace
   (every 1 ms, one netlink lookup); SAMPLES applies, each followed by a delete.
2. scale, one node (in this process, a real nftables table): 500 local and 1,000 remote
   endpoints, 200 policies (190 namespaced in 10 namespaces, 10 global; selectors on `app`,
   rules with selectors, nets and ports): cold start (parse the listing, calculate, one
   transaction) and one label change (a WorkloadEndpoint event in, one transaction out),
   median of SAMPLES changes alternating between a local and a remote endpoint.
3. rule count: rules in calico-node's table for endpoints x policies, every policy selecting
   every endpoint (the worst case for a per-endpoint-jump design).
4. traffic between two pods on two nodes: iperf3 (one TCP stream, 3 s) and new TCP
   connections per second (a Python client, 2 s), with no policy and with 200 policies
   selecting both pods (the last one allowing), rounds alternating.
"""

from __future__ import annotations

import ipaddress
import json
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.calico.node.calicocluster import CalicoCluster, PodInfo
from tests.calico.node.test_cluster import pool_cidr
from tests.cluster.harness import Cluster, wait_until

from pycni.calico.datastore import KV, DatastoreSettings, WatchEvent, open_datastore
from pycni.calico.node.component import NodeContext
from pycni.calico.node.policy import dataplane as dp
from pycni.calico.node.policy import render
from pycni.calico.node.policy.component import PolicyComponent
from pycni.calico.node.policy.render import Options
from pycni.calico.policy.model import PolicyKey
from pycni.net import nft

P = "/calico/resources/v3/projectcalico.org/"
VXLAN = {"CALICO_NETWORKING_BACKEND": "vxlan", "CALICO_IPV4POOL_VXLAN": "Always"}

WATCHER = textwrap.dedent(
    """
    import sys, time
    from pycni.net import nft
    name, want = sys.argv[1], sys.argv[2] == "present"
    print("ready", flush=True)
    for line in sys.stdin:
        deadline = time.time() + 30
        while nft.set_exists("inet", "calico", name) != want and time.time() < deadline:
            time.sleep(0.001)
        print(repr(time.time()), flush=True)
    """
)


# -- 1. apply to enforcement ------------------------------------------------------------------


def apply_to_enforcement(samples: int) -> dict[str, list[float]]:
    with Cluster(nodes=3) as cluster:
        cc = CalicoCluster.create(cluster, pool_cidr(), VXLAN)
        cc.conf_extra = {"policy": {"type": "k8s"}}
        try:
            for node in cluster.nodes:
                cc.start(node)
            for node in cluster.nodes:
                cc.add_pod(node, "bench", {"app": "web"})
            manifest = textwrap.dedent(
                """
                apiVersion: projectcalico.org/v3
                kind: NetworkPolicy
                metadata: {name: web, namespace: bench}
                spec:
                  selector: app == 'web'
                  ingress: [{action: Allow, protocol: TCP, destination: {ports: [80]}}]
                """
            )
            name = render.policy_members(PolicyKey("NetworkPolicy", "bench", "web"), "ingress")
            times: dict[str, list[float]] = {"start": [], "write": [], "return": []}
            assert cluster.etcd is not None
            store = open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=cluster.etcd.endpoint))
            try:
                for _ in range(samples):
                    for key, value in _one_apply(cc, store, manifest, name, "present", "apply").items():
                        times[key].append(value)
                    _one_apply(cc, store, manifest, name, "absent", "delete")
            finally:
                store.close()
            return times
        finally:
            cc.close()


def _one_apply(cc: CalicoCluster, store: Any, manifest: str, name: str, want: str, verb: str) -> dict[str, float]:
    """Seconds to enforcement on every node, from calicoctl's start, from the datastore write
    (seen by a watch on the key), and from calicoctl's return (negative: enforced before)."""
    watch = store.watch(f"{P}networkpolicies/bench/web")
    written: list[float] = []

    def follow() -> None:
        for _event in watch:
            written.append(time.time())
            return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    watchers = []
    for node in cc.cluster.nodes:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.netns, sys.executable, "-c", WATCHER, name, want],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        watchers.append(proc)
    try:
        for proc in watchers:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        started = time.time()
        cc.calicoctl(cc.cluster.nodes[0], verb, "-f", "-", input=manifest)
        returned = time.time()
        seen = []
        for proc in watchers:
            assert proc.stdout is not None
            seen.append(float(proc.stdout.readline()))
        follower.join(10)
        enforced = max(seen)
        return {"start": enforced - started, "write": enforced - written[0], "return": enforced - returned}
    finally:
        watch.close()
        for proc in watchers:
            proc.kill()
            proc.wait()


# -- 2. scale on one node -----------------------------------------------------------------------


def _wep(ns: str, name: str, node: str, ip: str, app: str) -> KV:
    labels = {"projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s", "app": app}
    spec = {"node": node, "interfaceName": ("cali" + name)[:15], "ipNetworks": [f"{ip}/32"], "profiles": [f"kns.{ns}"],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}  # fmt: skip
    return KV(
        f"{P}workloadendpoints/{ns}/{name}",
        json.dumps({"metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": spec}),
        1,
    )


def scale_listing(local: int, remote: int, policies: int) -> list[KV]:
    net = ipaddress.ip_network("10.80.0.0/16")
    out: list[KV] = []
    for i in range(10):
        spec = {
            "ingress": [{"action": "Allow"}],
            "egress": [{"action": "Allow"}],
            "labelsToApply": {"pcns.projectcalico.org/name": f"ns{i}"},
        }
        out.append(KV(f"{P}profiles/kns.ns{i}", json.dumps({"metadata": {"name": f"kns.ns{i}"}, "spec": spec}), 1))
    for i in range(local):
        out.append(_wep(f"ns{i % 10}", f"l{i}", "node-1", str(net[1 + i]), f"a{i % 50}"))
    for i in range(remote):
        out.append(_wep(f"ns{i % 10}", f"r{i}", f"node-{2 + i % 20}", str(net[5000 + i]), f"a{i % 50}"))
    for i in range(policies):
        rules = [
            {
                "action": "Allow",
                "protocol": "TCP",
                "source": {"selector": f"app == 'a{(i + 1) % 50}'"},
                "destination": {"ports": [80, "http"]},
            },
            {
                "action": "Allow",
                "protocol": "UDP",
                "source": {"nets": [f"172.{16 + i % 16}.0.0/16"]},
                "destination": {"ports": [53]},
            },
            {"action": "Deny", "source": {"selector": f"app == 'a{(i + 2) % 50}'", "namespaceSelector": "all()"}},
        ]
        if i < 10:
            spec = {"order": i, "selector": f"app == 'a{i * 5}'", "ingress": rules, "egress": [{"action": "Allow"}]}
            out.append(KV(f"{P}globalnetworkpolicies/g{i}", json.dumps({"metadata": {"name": f"g{i}"}, "spec": spec}), 1))
        else:
            spec = {"order": 100 + i, "selector": f"app == 'a{i % 50}'", "ingress": rules}
            doc = {"metadata": {"name": f"p{i}", "namespace": f"ns{i % 10}"}, "spec": spec}
            out.append(KV(f"{P}networkpolicies/ns{i % 10}/p{i}", json.dumps(doc), 1))
    return out


def scale(samples: int) -> tuple[float, list[float], int, int]:
    listing = scale_listing(500, 1000, 200)
    comp = PolicyComponent(NodeContext(nodename="node-1"), Options())
    try:
        started = time.perf_counter()
        comp.resync(listing)
        cold = time.perf_counter() - started
        assert comp.ready() == "", comp.ready()
        by_key = {kv.key: json.loads(kv.value) for kv in listing}
        changes = []
        for n in range(samples):
            index = n * 7
            key = f"{P}workloadendpoints/ns{index % 10}/{'l' if n % 2 == 0 else 'r'}{index}"
            obj = by_key[key]
            obj["metadata"]["labels"]["app"] = f"a{(int(obj['metadata']['labels']['app'][1:]) + 1) % 50}"
            event = WatchEvent("put", key, json.dumps(obj), 100 + n)
            started = time.perf_counter()
            comp.on_events([event])
            changes.append(time.perf_counter() - started)
        assert comp.ready() == "", comp.ready()
        rules = sum(dp.kernel_objects()[1].values())
        elements = sum(len(c.elements) for c in comp.dataplane.programmed.values() if isinstance(c, dp.Set | dp.Map))
        return cold, changes, rules, elements
    finally:
        comp.close(cleanup=True)
        if nft.table_exists("inet", "calico"):
            nft.run_text("delete table inet calico\n")


# -- 3. rule count ------------------------------------------------------------------------------


def rule_counts(grid: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    out = {}
    for endpoints, policies in grid:
        kvs = [_wep("ns0", f"l{i}", "node-1", str(ipaddress.ip_address("10.81.0.1") + i), "a0") for i in range(endpoints)]
        kvs += [
            KV(
                f"{P}profiles/kns.ns0",
                json.dumps({"metadata": {"name": "kns.ns0"}, "spec": {"ingress": [{"action": "Allow"}]}}),
                1,
            )
        ]
        for i in range(policies):
            spec = {
                "order": i,
                "selector": "all()",
                "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [1000 + i]}}],
            }
            kvs.append(
                KV(
                    f"{P}networkpolicies/ns0/p{i}",
                    json.dumps({"metadata": {"name": f"p{i}", "namespace": "ns0"}, "spec": spec}),
                    1,
                )
            )
        comp = PolicyComponent(NodeContext(nodename="node-1"), Options())
        try:
            comp.resync(kvs)
            out[(endpoints, policies)] = sum(dp.kernel_objects()[1].values())
        finally:
            comp.close(cleanup=True)
            if nft.table_exists("inet", "calico"):
                nft.run_text("delete table inet calico\n")
    return out


# -- 4. traffic ---------------------------------------------------------------------------------

CONNECTOR = textwrap.dedent(
    """
    import socket, sys, time
    end, n = time.time() + float(sys.argv[3]), 0
    while time.time() < end:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
            s.sendall(b"x"); s.recv(8)
        n += 1
    print(n / float(sys.argv[3]))
    """
)
ACCEPTOR = textwrap.dedent(
    """
    import socket
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 7100)); s.listen(512)
    while True:
        c, _ = s.accept(); c.recv(8); c.sendall(b"y"); c.close()
    """
)


def traffic(rounds: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"iperf none": [], "iperf 200": [], "conn none": [], "conn 200": []}
    with Cluster(nodes=2) as cluster:
        cc = CalicoCluster.create(cluster, pool_cidr(), VXLAN)
        cc.conf_extra = {"policy": {"type": "k8s"}}
        try:
            for node in cluster.nodes:
                cc.start(node)
            client = cc.add_pod(cluster.nodes[0], "bench", {"app": "client"})
            server = cc.add_pod(cluster.nodes[1], "bench", {"app": "server"})
            iperf = server.pod.popen("iperf3", "-s", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            acceptor = server.pod.popen(sys.executable, "-c", ACCEPTOR)
            wait_until(lambda: client.pod.ping(server.ip), timeout=60, what="pods reach each other")
            manifest = _policies(200)
            try:
                for _ in range(rounds):
                    for label in ("none", "200"):
                        if label == "200":
                            cc.calicoctl(cluster.nodes[0], "apply", "-f", "-", input=manifest)
                            time.sleep(2)
                        results[f"iperf {label}"].append(_iperf(client, server))
                        results[f"conn {label}"].append(_connections(client, server))
                        if label == "200":
                            cc.calicoctl(cluster.nodes[0], "delete", "-f", "-", input=manifest)
                            time.sleep(2)
            finally:
                for proc in (iperf, acceptor):
                    proc.kill()
                    proc.wait()
        finally:
            cc.close()
    return results


def _policies(count: int) -> str:
    docs = []
    for i in range(count):
        action = "{action: Allow}" if i == count - 1 else f"{{action: Allow, source: {{selector: app == 'nobody-{i}'}}}}"
        docs.append(
            f"apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: bench}}\n"
            f"spec:\n  order: {i}\n  selector: all()\n  types: [Ingress, Egress]\n  ingress: [{action}]\n  egress: [{action}]\n"
        )
    return "---\n".join(docs)


def _iperf(client: PodInfo, server: PodInfo) -> float:
    out = client.pod.run("iperf3", "-c", server.ip, "-t", "3", "-J", timeout=30)
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def _connections(client: PodInfo, server: PodInfo) -> float:
    out = client.pod.run(sys.executable, "-c", CONNECTOR, server.ip, "7100", "2", timeout=30)
    return float(out.stdout.strip())


def main() -> None:
    samples = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    load = os.getloadavg()
    times = apply_to_enforcement(samples)
    labels = {
        "start": "calicoctl's start",
        "write": "the etcd write",
        "return": "calicoctl's return (negative: enforced before it)",
    }
    for what, values in times.items():
        ms = sorted(v * 1000 for v in values)
        print(f"apply -> enforced on all 3 nodes, from {labels[what]}: median {statistics.median(ms):.0f} ms "
              f"(min {ms[0]:.0f}, max {ms[-1]:.0f}, n={len(ms)})", flush=True)  # fmt: skip
    cold, changes, rules, elements = scale(samples)
    change = f"median {statistics.median(changes) * 1000:.1f} ms (max {max(changes) * 1000:.1f}, n={len(changes)})"
    print(f"500 local + 1,000 remote endpoints, 200 policies: cold start {cold:.2f} s ({rules} rules, {elements} set elements); "
          f"one label change: {change}", flush=True)  # fmt: skip
    grid = [(50, 50), (100, 50), (50, 100), (100, 100), (500, 200)]
    counts = rule_counts(grid)
    print("rules (endpoints x policies, every policy selecting every endpoint): "
          + ", ".join(f"{e}x{p}: {counts[(e, p)]}" for e, p in grid), flush=True)  # fmt: skip
    res = traffic(3)
    for kind, unit in (("iperf", "Gbit/s"), ("conn", "connections/s")):
        none, many = statistics.median(res[f"{kind} none"]), statistics.median(res[f"{kind} 200"])
        print(f"{kind}: no policy {none:.2f} {unit}, 200 policies {many:.2f} {unit}: ratio {many / none:.2f}", flush=True)
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
