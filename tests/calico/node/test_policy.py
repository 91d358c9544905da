"""Network policy with real traffic: two calico-node nodes (VXLAN) on the cluster harness, one
etcd, seven pods in three namespaces on both nodes, policies applied with calicoctl.

One cluster serves every case (start-up is the costly part). Each pod runs a prober (TCP echo
on 80 and 81, UDP echo on 53 and 80, ICMP answered by the kernel); a case applies its policies,
then checks the whole matrix, every pod to every other, same node and across nodes, over TCP,
UDP and ICMP, until it matches what the case expects (programming is asynchronous), and
removes its policies, after which the next case starts from full connectivity again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cluster.harness import Cluster, Node, wait_until

from .calicocluster import CalicoCluster, PodInfo
from .test_cluster import pool_cidr

PROBER = Path(__file__).with_name("prober.py")
NFLOG = Path(__file__).with_name("nflog.py")
LOG_GROUP = 7
PROBES = (("tcp", 80), ("tcp", 81), ("udp", 53), ("icmp", 0))
#: name -> (node index, namespace, labels)
PODS = {
    "web-a": (0, "prod", {"app": "web"}),
    "db-a": (0, "prod", {"app": "db"}),
    "client-a": (0, "dev", {"role": "client"}),
    "web-b": (1, "prod", {"app": "web"}),
    "fe-b": (1, "prod", {"role": "fe"}),
    "client-b": (1, "dev", {"role": "client"}),
    "dns-b": (1, "infra", {"app": "dns"}),
}


@dataclass
class P:
    name: str
    info: PodInfo
    labels: dict[str, str]
    prober: subprocess.Popen[str]

    @property
    def ns(self) -> str:
        return self.info.namespace

    @property
    def ip(self) -> str:
        return self.info.ip


@dataclass
class World:
    cc: CalicoCluster
    pods: dict[str, P] = field(default_factory=dict)

    @property
    def nodes(self) -> list[Node]:
        return self.cc.cluster.nodes

    def calicoctl(self, *argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cc.calicoctl(self.nodes[0], *argv, input=input, check=check)

    def probe(self, batches: dict[str, list[dict[str, object]]]) -> dict[str, bool]:
        for src, batch in batches.items():
            prober = self.pods[src].prober
            assert prober.stdin is not None
            prober.stdin.write(json.dumps(batch) + "\n")
            prober.stdin.flush()
        results: dict[str, bool] = {}
        for src in batches:
            prober = self.pods[src].prober
            assert prober.stdout is not None
            line = prober.stdout.readline()
            assert line, f"the prober of {src} died"
            results.update(json.loads(line))
        return results

    def matrix(self, timeout: float = 1.0) -> dict[tuple[str, str, str, int], bool]:
        batches: dict[str, list[dict[str, object]]] = {}
        for src in self.pods:
            for dst, target in self.pods.items():
                if dst == src:
                    continue
                for proto, port in PROBES:
                    key = f"{src}|{dst}|{proto}|{port}"
                    batches.setdefault(src, []).append(
                        {"id": key, "proto": proto, "dst": target.ip, "port": port, "timeout": timeout}
                    )
        out = {}
        for key, ok in self.probe(batches).items():
            src, dst, proto, port = key.split("|")
            out[(src, dst, proto, int(port))] = ok
        return out


Expect = Callable[[P, P, str, int], bool]


def open_all(src: P, dst: P, proto: str, port: int) -> bool:
    return True


def expect(world: World, allowed: Expect, what: str, timeout: float = 30) -> None:
    """Probe the whole matrix until it is exactly `allowed` (programming is asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        results = world.matrix()
        wrong = sorted(
            f"{src}->{dst} {proto}/{port}: {'passes' if ok else 'blocked'}, expected {'pass' if not ok else 'block'}"
            for (src, dst, proto, port), ok in results.items()
            if ok != allowed(world.pods[src], world.pods[dst], proto, port)
        )
        if not wrong:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: {len(wrong)} of {len(results)} probes wrong:\n" + "\n".join(wrong[:40]))
        time.sleep(0.3)


@contextmanager
def applied(world: World, manifest: str) -> Iterator[None]:
    """Policies applied with calicoctl for the duration; deleted (and connectivity back) after."""
    text = textwrap.dedent(manifest)
    out = world.calicoctl("apply", "-f", "-", input=text)
    assert "Successfully applied" in out.stdout, out.stdout + out.stderr
    try:
        yield
    finally:
        world.calicoctl("delete", "-f", "-", input=text)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    env = {
        "CALICO_NETWORKING_BACKEND": "vxlan",
        "CALICO_IPV4POOL_VXLAN": "Always",
        "PYCNI_POLICY_LOG_GROUP": str(LOG_GROUP),
        "PYCNI_RECONCILE_INTERVAL": "2",
    }
    with Cluster(nodes=2) as cluster:
        cc = CalicoCluster.create(cluster, pool_cidr(), env)
        cc.conf_extra = {"policy": {"type": "k8s"}}
        w = World(cc)
        try:
            for node in cluster.nodes:
                cc.start(node)
            for name, (index, namespace, labels) in PODS.items():
                info = cc.add_pod(cluster.nodes[index], namespace, labels, name=name)
                prober = info.pod.popen(
                    sys.executable, str(PROBER), "80,81", "53,80", stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=1
                )
                assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
                w.pods[name] = P(name, info, labels, prober)
            expect(w, open_all, "start-up: every pod reaches every other", timeout=60)
            yield w
        finally:
            for p in w.pods.values():
                p.prober.kill()
                p.prober.wait()
            cc.close()


# -- the Kubernetes recipes -----------------------------------------------------------------

DEFAULT_DENY = """
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: default-deny, namespace: prod}
    spec:
      podSelector: {}
      policyTypes: [Ingress]
"""


def test_k8s_default_deny_ingress_in_a_namespace(world: World) -> None:
    with applied(world, DEFAULT_DENY):
        expect(world, lambda s, d, proto, port: d.ns != "prod", "default deny in prod")
    expect(world, open_all, "default deny removed")


def test_k8s_allow_from_pods_with_a_label_on_one_port(world: World) -> None:
    manifest = (
        DEFAULT_DENY
        + """
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: web-from-fe, namespace: prod}
    spec:
      podSelector: {matchLabels: {app: web}}
      ingress:
      - from: [{podSelector: {matchLabels: {role: fe}}}]
        ports: [{protocol: TCP, port: 80}]
    """
    )

    def allowed(s: P, d: P, proto: str, port: int) -> bool:
        if d.ns != "prod":
            return True
        return d.labels.get("app") == "web" and s.labels.get("role") == "fe" and s.ns == "prod" and (proto, port) == ("tcp", 80)

    with applied(world, manifest):
        expect(world, allowed, "web reachable from fe on TCP 80 only")


def test_k8s_allow_from_another_namespace_by_its_labels(world: World) -> None:
    # Namespace labels are the kns.<namespace> profile's labelsToApply, as kube-controllers writes them.
    profile = world.calicoctl("get", "profile", "kns.dev", "-o", "json").stdout
    doc = json.loads(profile)
    labelled = json.loads(profile)
    labelled["spec"]["labelsToApply"]["pcns.team"] = "a"
    for key in ("resourceVersion", "uid", "creationTimestamp"):
        labelled["metadata"].pop(key, None)
    world.calicoctl("apply", "-f", "-", input=json.dumps(labelled))
    manifest = (
        DEFAULT_DENY
        + """
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: db-from-team-a, namespace: prod}
    spec:
      podSelector: {matchLabels: {app: db}}
      ingress:
      - from: [{namespaceSelector: {matchLabels: {team: a}}}]
    """
    )
    try:
        with applied(world, manifest):
            expect(
                world,
                lambda s, d, proto, port: d.ns != "prod" or (d.name == "db-a" and s.ns == "dev"),
                "db from namespaces of team a",
            )
    finally:
        for key in ("resourceVersion", "uid", "creationTimestamp"):
            doc["metadata"].pop(key, None)
        world.calicoctl("replace", "-f", "-", input=json.dumps(doc))


def test_k8s_deny_all_egress_but_dns_to_one_address(world: World) -> None:
    dns = world.pods["dns-b"].ip
    manifest = f"""
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {{name: dns-only, namespace: dev}}
    spec:
      podSelector: {{}}
      policyTypes: [Egress]
      egress:
      - to: [{{ipBlock: {{cidr: {dns}/32}}}}]
        ports: [{{protocol: UDP, port: 53}}]
    """

    def allowed(s: P, d: P, proto: str, port: int) -> bool:
        return s.ns != "dev" or (d.name == "dns-b" and (proto, port) == ("udp", 53))

    with applied(world, manifest):
        expect(world, allowed, "dev pods send only DNS to one address")


def test_k8s_ip_block_with_except(world: World) -> None:
    excluded = world.pods["client-b"].ip
    manifest = f"""
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {{name: web-from-block, namespace: prod}}
    spec:
      podSelector: {{matchLabels: {{app: web}}}}
      ingress:
      - from: [{{ipBlock: {{cidr: {world.cc.pool}, except: [{excluded}/32]}}}}]
    """
    with applied(world, manifest):
        expect(
            world,
            lambda s, d, proto, port: d.labels.get("app") != "web" or s.name != "client-b",
            "web from the pool but one address",
        )


# -- Calico's own features --------------------------------------------------------------------


def test_global_deny_with_lower_order_overrides_namespaced_allow(world: World) -> None:
    manifest = """
    apiVersion: projectcalico.org/v3
    kind: NetworkPolicy
    metadata: {name: web-open, namespace: prod}
    spec:
      order: 100
      selector: app == 'web'
      ingress: [{action: Allow}]
    ---
    apiVersion: projectcalico.org/v3
    kind: GlobalNetworkPolicy
    metadata: {name: no-clients-to-web}
    spec:
      order: 10
      selector: app == 'web'
      ingress: [{action: Deny, source: {selector: role == 'client', namespaceSelector: all()}}]
    """
    with applied(world, manifest):
        expect(
            world,
            lambda s, d, proto, port: d.labels.get("app") != "web" or s.labels.get("role") != "client",
            "the lower order wins",
        )


def test_pass_hands_over_to_profiles(world: World) -> None:
    manifest = """
    apiVersion: projectcalico.org/v3
    kind: GlobalNetworkPolicy
    metadata: {name: fe-passes}
    spec:
      order: 10
      selector: app == 'web'
      ingress: [{action: Pass, source: {selector: role == 'fe', namespaceSelector: all()}}]
    ---
    apiVersion: projectcalico.org/v3
    kind: NetworkPolicy
    metadata: {name: web-closed, namespace: prod}
    spec:
      order: 100
      selector: app == 'web'
      ingress: [{action: Deny}]
    """
    with applied(world, manifest):
        expect(
            world, lambda s, d, proto, port: d.labels.get("app") != "web" or s.labels.get("role") == "fe", "Pass skips the deny"
        )


def test_not_nets_and_not_ports(world: World) -> None:
    web_a = world.pods["web-a"].ip
    manifest = f"""
    apiVersion: projectcalico.org/v3
    kind: GlobalNetworkPolicy
    metadata: {{name: clients-not-to-web-a}}
    spec:
      selector: role == 'client'
      types: [Egress]
      egress: [{{action: Allow, destination: {{notNets: [{web_a}/32]}}}}]
    ---
    apiVersion: projectcalico.org/v3
    kind: NetworkPolicy
    metadata: {{name: db-not-81, namespace: prod}}
    spec:
      selector: app == 'db'
      ingress: [{{action: Allow, protocol: TCP, destination: {{notPorts: [81]}}}}]
    """

    def allowed(s: P, d: P, proto: str, port: int) -> bool:
        if s.labels.get("role") == "client" and d.name == "web-a":
            return False
        if d.name == "db-a":
            return proto == "tcp" and port != 81
        return True

    with applied(world, manifest):
        expect(world, allowed, "notNets and notPorts")


def test_log_writes_an_nftables_log_entry(world: World) -> None:
    node = world.pods["web-a"].info.node
    listener = subprocess.Popen(
        ["ip", "netns", "exec", node.netns, sys.executable, str(NFLOG), str(LOG_GROUP)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        manifest = """
        apiVersion: projectcalico.org/v3
        kind: GlobalNetworkPolicy
        metadata: {name: log-web}
        spec:
          selector: app == 'web'
          ingress: [{action: Log, protocol: TCP}, {action: Allow}]
        """
        fe, web = world.pods["fe-b"], world.pods["web-a"]
        with applied(world, manifest):
            expect(world, open_all, "Log then Allow changes nothing")
            line = listener.stdout.readline().split()
            assert line[0] == "calico-packet:", line
            assert web.ip in line[1:] and line[1] in {p.ip for p in world.pods.values()}, line
            assert world.probe({"fe-b": [{"id": "x", "proto": "tcp", "dst": web.ip, "port": 80}]}) == {"x": True}
            wait_until(
                lambda: listener.stdout is not None and listener.stdout.readline().split()[1:] == [fe.ip, web.ip], timeout=10
            )
    finally:
        listener.kill()
        listener.wait()


# -- lifecycle --------------------------------------------------------------------------------


def test_established_connection_survives_an_unrelated_policy_change(world: World) -> None:
    web, fe = world.pods["web-a"], world.pods["fe-b"]
    assert world.probe({"fe-b": [{"id": "held", "proto": "hold", "dst": web.ip, "port": 80}]}) == {"held": True}
    with applied(world, DEFAULT_DENY.replace("default-deny", "unrelated").replace("namespace: prod", "namespace: dev")):
        expect(world, lambda s, d, proto, port: d.ns != "dev", "an unrelated policy in dev")
        time.sleep(1)
        assert world.probe({"fe-b": [{"id": "held", "proto": "hold-check"}]}) == {"held": True}, f"{fe.name} -> {web.name}"


def _nft(node: Node) -> str:
    return node.run("nft", "list", "table", "inet", "calico").stdout


def test_pod_deletion_removes_its_chains_and_set_entries_on_every_node(world: World) -> None:
    cc = world.cc
    node_a = world.nodes[0]
    extra = cc.add_pod(node_a, "prod", {"app": "web"}, name="web-extra")
    iface = json.loads(cc.calicoctl(node_a, "get", "workloadendpoint", "-n", "prod", "-o", "json").stdout)
    iface_name = next(i["spec"]["interfaceName"] for i in iface["items"] if i["spec"].get("pod") == "web-extra")
    manifest = """
    apiVersion: projectcalico.org/v3
    kind: GlobalNetworkPolicy
    metadata: {name: from-web}
    spec:
      selector: app == 'db' || role == 'fe'
      ingress: [{action: Allow, source: {selector: app == 'web', namespaceSelector: all()}}]
    """
    with applied(world, manifest):
        for node in world.nodes:
            wait_until(
                lambda node=node: extra.ip in _nft(node), timeout=15, what=f"{extra.ip} in a selector's set on {node.name}"
            )
        assert f"filter-cali-tw-{iface_name}" in _nft(node_a)
        policy = cc.calicoctl(node_a, "node", "policy", "web-extra", "-n", "prod").stdout
        assert "filter-cali-tw-" + iface_name in policy and "chain programmed" in policy, policy
        cc.delete_pod(extra)
        for node in world.nodes:
            wait_until(lambda node=node: extra.ip not in _nft(node) and iface_name not in _nft(node), timeout=15,
                       what=f"web-extra gone from {node.name}")  # fmt: skip


def test_calicoctl_node_policy_lists_what_applies_in_order(world: World) -> None:
    manifest = (
        DEFAULT_DENY
        + """
    ---
    apiVersion: projectcalico.org/v3
    kind: GlobalNetworkPolicy
    metadata: {name: first}
    spec:
      order: 5
      selector: app == 'web'
      ingress: [{action: Pass}]
    """
    )
    with applied(world, manifest):
        expect(world, lambda s, d, proto, port: d.ns != "prod" or d.labels.get("app") == "web", "web passes to its profile")
        out = world.cc.calicoctl(world.nodes[0], "node", "policy", "web-a", "-n", "prod").stdout
        ingress = out.split("Ingress")[1].split("Egress")[0]
        first, second = ingress.index("first"), ingress.index("prod/knp.default.default-deny")
        assert first < second, out
        assert ingress.count(" yes") == 2, out
        assert "no policy selects it in this direction" in out.split("Egress")[1], out


def test_pod_labels_come_from_cni_args_and_calicoctl_label_changes_what_applies(world: World) -> None:
    weps = json.loads(world.calicoctl("get", "workloadendpoints", "-A", "-o", "json").stdout)["items"]
    db = next(w for w in weps if w["spec"].get("pod") == "db-a")
    assert db["metadata"]["labels"] == {
        "app": "db",
        "projectcalico.org/namespace": "prod",
        "projectcalico.org/orchestrator": "k8s",
    }
    with pytest.raises(RuntimeError, match=r"args\.cni\.labels"):
        world.cc.add_pod(world.nodes[0], "dev", {"bad key": "x"}, name="bad-labels")
    assert len(json.loads(world.calicoctl("get", "workloadendpoints", "-A", "-o", "json").stdout)["items"]) == len(weps)
    manifest = (
        DEFAULT_DENY
        + """
    ---
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: web-from-fe, namespace: prod}
    spec:
      podSelector: {matchLabels: {app: web}}
      ingress: [{from: [{podSelector: {matchLabels: {role: fe}}}]}]
    """
    )

    def allowed(s: P, d: P, proto: str, port: int) -> bool:
        return d.ns != "prod" or (d.labels.get("app") == "web" and s.labels.get("role") == "fe" and s.ns == "prod")

    name, labels = db["metadata"]["name"], world.pods["db-a"].labels
    with applied(world, manifest):
        expect(world, allowed, "web from fe")
        world.calicoctl("label", "workloadendpoint", name, "role=fe", "-n", "prod")
        labels["role"] = "fe"
        try:
            expect(world, allowed, "db-a labelled role=fe reaches web")
        finally:
            world.calicoctl("label", "workloadendpoint", name, "role", "--remove", "-n", "prod")
            del labels["role"]
        expect(world, allowed, "the label removed")


def test_a_pod_added_while_calico_node_is_down_stays_closed_until_it_is_back(world: World) -> None:
    cc, node = world.cc, world.nodes[0]
    cc.kill(node)
    late = cc.add_pod(node, "prod", {"app": "web"}, name="late")
    try:
        # The table is as calico-node left it: the new interface is unknown there, so dropped.
        ping = {
            "fe-b": [{"id": "ping", "proto": "icmp", "dst": late.ip}],
            "web-a": [{"id": "local", "proto": "icmp", "dst": late.ip}],
        }
        assert world.probe(ping) == {"ping": False, "local": False}
        cc.start(node)
        wait_until(lambda: world.probe(ping) == {"ping": True, "local": True}, timeout=30, what="the late pod covered")
    finally:
        cc.delete_pod(late)


def test_removing_every_policy_restores_connectivity(world: World) -> None:
    listed = world.calicoctl("get", "networkpolicy", "-A").stdout + world.calicoctl("get", "globalnetworkpolicy").stdout
    assert "default-deny" not in listed and "log-web" not in listed, listed
    expect(world, open_all, "no policy left")
