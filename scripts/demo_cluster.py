"""The cluster demo: three nodes (network namespaces with private /var/lib/calico and
/var/run/calico) on one underlay bridge with one etcd, calico-node on each (BGP through BIRD,
or VXLAN with DEMO_BACKEND=vxlan), pods made with the seed chapter's conflist
(datastore_type etcdv3) through `pycni add`, then cross-node pings, `calicoctl node status`
and `calicoctl get nodes -o wide`; then network policy: a TCP connection between pods on two nodes,
refused by a default-deny NetworkPolicy, allowed again by an allow rule on labelled pods, and what
calico-node enforces for the server pod. Everything is removed at the end, also on failure."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.calico.node.calicocluster import CalicoCluster, PodInfo  # noqa: E402
from tests.calico.test_acceptance import seed_conflist  # noqa: E402
from tests.cluster.harness import Cluster, wait_until  # noqa: E402

BOLD, OFF = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")


def step(title: str, *lines: str) -> None:
    print(f"\n{BOLD}== {title}{OFF}")
    for line in lines:
        print(f"   {line}")


def seed_for(node_name: str, etcd: str, mtu: str, kubeconfig: str) -> dict:
    raw = seed_conflist()["raw"]
    raw = raw.replace("__KUBERNETES_NODE_NAME__", node_name).replace("__CNI_MTU__", mtu)
    raw = raw.replace("__KUBECONFIG_FILEPATH__", kubeconfig)
    doc = json.loads(raw)
    doc["plugins"][0].update(datastore_type="etcdv3", etcd_endpoints=etcd)
    return doc


SERVER = (
    "import socket\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 8080)); s.listen(8)\n"
    "while True:\n"
    "    c,_=s.accept(); c.sendall(b'hello from the server pod'); c.close()\n"
)
CLIENT = (
    "import socket,sys\n"
    "try:\n"
    "    print('connected:', socket.create_connection((sys.argv[1], 8080), timeout=2).recv(64).decode())\n"
    "except OSError as e:\n"
    "    print('no connection:', 'no answer within 2 s' if isinstance(e, TimeoutError) else e)\n"
)
DEFAULT_DENY = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"""
ALLOW = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-clients, namespace: default}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress:
  - from: [{podSelector: {matchLabels: {role: client}}}]
    ports: [{protocol: TCP, port: 8080}]
"""


def policy_demo(cc: CalicoCluster, client: PodInfo, server: PodInfo) -> None:
    """Network policy: a default-deny in the namespace, then an allow rule, with a TCP client."""
    first = cc.cluster.nodes[0]

    def connect(what: str) -> None:
        out = client.pod.run(sys.executable, "-c", CLIENT, server.ip, check=False, timeout=30).stdout.strip()
        print(f"   {what}: {client.name}@{client.node.name} -> {server.name}@{server.node.name}:8080  {out}")

    def calicoctl(*argv: str, input: str | None = None) -> None:
        print(f"   $ calicoctl {' '.join(argv)}")
        out = cc.calicoctl(first, *argv, input=input, check=False)
        for line in (out.stdout + out.stderr).rstrip().splitlines():
            print(f"     {line}")

    def endpoint(pod: PodInfo) -> str:
        weps = json.loads(cc.calicoctl(first, "get", "workloadendpoints", "-o", "json").stdout)["items"]
        return next(w["metadata"]["name"] for w in weps if w["spec"].get("pod") == pod.name)

    step("Network policy: a TCP server on one pod, a client on another node")
    listener = server.pod.popen(sys.executable, "-c", SERVER)
    try:
        time.sleep(0.3)
        connect("no policy")
        step("A default-deny ingress policy for the namespace (a Kubernetes NetworkPolicy)")
        calicoctl("apply", "-f", "-", input=DEFAULT_DENY)
        time.sleep(0.5)
        connect("default deny")
        step("An allow rule: pods labelled role=client may reach app=server on TCP 8080")
        calicoctl("label", "workloadendpoint", endpoint(server), "app=server")
        calicoctl("label", "workloadendpoint", endpoint(client), "role=client")
        calicoctl("apply", "-f", "-", input=ALLOW)
        time.sleep(0.5)
        connect("allowed")
        calicoctl("get", "networkpolicy", "-o", "wide")
        step(f"What {server.node.name} enforces for the server pod")
        out = cc.calicoctl(server.node, "node", "policy", server.name, check=False)
        for line in (out.stdout + out.stderr).rstrip().splitlines():
            print(f"   {line}")
        step("Removing the policies")
        calicoctl("delete", "-f", "-", input=DEFAULT_DENY + "---\n" + ALLOW)
    finally:
        listener.kill()
        listener.wait()


def main() -> int:
    backend = os.environ.get("DEMO_BACKEND", "bird")
    env = {"CALICO_NETWORKING_BACKEND": backend}
    if backend == "vxlan":
        env["CALICO_IPV4POOL_VXLAN"] = "Always"
    with Cluster(nodes=3) as cluster:
        assert cluster.etcd is not None
        cc = CalicoCluster.create(cluster, "10.244.0.0/16", env)
        cc.cni_path_extra = "/usr/lib/cni"  # portmap and bandwidth of the seed's chain: Debian's
        try:
            step("An underlay bridge, one etcd, three nodes", f"bridge {cluster.bridge}, etcd {cluster.etcd.endpoint}")
            for node in cluster.nodes:
                print(f"   {node.name}: netns {node.netns}, eth0 {node.address}")
            step(f"calico-node on each node (CALICO_NETWORKING_BACKEND={backend}, DATASTORE_TYPE=etcdv3)")
            for node in cluster.nodes:
                cc.start(node)
                mtu = (node.private("/var/lib/calico") / "mtu").read_text().strip()
                kubeconfig = node.private("/etc/cni/net.d") / "calico-kubeconfig"
                kubeconfig.write_text("# not used: pycni has no Kubernetes API\n")
                doc = seed_for(node.name, cluster.etcd.endpoint, mtu, "/etc/cni/net.d/calico-kubeconfig")
                cc.write_conflist(node, doc)
                print(f"   {node.name}: ready (nodename file, mtu {mtu}, Node resource registered)")
            step("Pods through `pycni add` with the seed's 10-calico.conflist (calico, portmap, bandwidth)")
            pods = [cc.add_pod(node) for node in cluster.nodes for _ in range(2)]
            for pod in pods:
                print(f"   {pod.node.name}: {pod.name} {pod.ip}")
            step("Cross-node pings")
            wait_until(lambda: pods[0].pod.ping(pods[-1].ip), timeout=60, what="first route")
            for src in pods[::2]:
                for dst in pods:
                    if dst.node is src.node:
                        continue
                    ok = src.pod.ping(dst.ip, count=2)
                    print(f"   {src.node.name}/{src.ip} -> {dst.node.name}/{dst.ip}: {'ok' if ok else 'FAILED'}")
            if backend == "bird":
                for node in cluster.nodes:
                    wait_until(
                        lambda node=node: cc.calicoctl(node, "node", "status", check=False).stdout.count("Established") == 2,
                        timeout=60,
                        what="BGP sessions",
                    )
            for node in cluster.nodes:
                step(f"calicoctl node status (on {node.name})")
                print(cc.calicoctl(node, "node", "status", check=False).stdout, end="")
            step("calicoctl get nodes -o wide")
            print(cc.calicoctl(cluster.nodes[0], "get", "nodes", "-o", "wide").stdout, end="")
            step(f"Routes on {cluster.nodes[0].name} (protocol bird / 80: calico-node's)")
            for line in cc.routes(cluster.nodes[0]):
                print(f"   {line}")
            policy_demo(cc, pods[0], pods[-1])
            step("Cleaning up: pods deleted, calico-node stopped, nodes, bridge and etcd removed")
        finally:
            cc.close()
    time.sleep(0.1)
    print("   done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
