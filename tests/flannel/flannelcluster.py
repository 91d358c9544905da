"""Flannel on the cluster harness: flanneld on nodes (one etcd), pods through `pycni add` with a
flannel conflist. Shared by the tests, the benchmarks and the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.cluster.harness import Cluster, Node, Pod, wait_until

VENV_BIN = Path(sys.executable).parent
PREFIX = "/coreos.com/network"


def network_config(backend: str = "vxlan", network: str = "10.244.0.0/16", **extra: Any) -> dict[str, Any]:
    return {"Network": network, "Backend": {"Type": backend}, **extra}


def conflist(name: str = "cbr0", plugins_extra: list[dict[str, Any]] | None = None, **flannel: Any) -> dict[str, Any]:
    """kube-flannel's conflist (cni-conf.json)."""
    first = {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}, **flannel}
    return {"name": name, "cniVersion": "0.3.1", "plugins": [first, *(plugins_extra or [])]}


@dataclass
class PodInfo:
    pod: Pod
    node: Node
    ip: str
    name: str
    result: dict[str, Any] = field(default_factory=dict)
    network: str = ""


@dataclass
class FlannelCluster:
    cluster: Cluster
    plugin_dir: Path
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    pods: list[PodInfo] = field(default_factory=list)
    network: str = "cbr0"
    args: list[str] = field(default_factory=list)
    #: plugin directories after ours (e.g. /usr/lib/cni for the reference bridge)
    cni_path: str = ""

    @classmethod
    def create(cls, cluster: Cluster, config: dict[str, Any], args: list[str] | None = None) -> FlannelCluster:
        from pycni import launcher

        plugin_dir = Path(tempfile.mkdtemp(prefix="pycni-cni-bin-", dir=str(cluster.root)))
        launcher.install(str(plugin_dir))
        built = cls(cluster, plugin_dir, args=list(args or []))
        built.cni_path = str(plugin_dir)
        built.set_config(config)
        return built

    def etcdctl(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.cluster.etcd is not None
        return self.cluster.etcd.etcdctl(*argv, check=check)

    def set_config(self, config: dict[str, Any] | str) -> None:
        self.etcdctl("put", f"{PREFIX}/config", config if isinstance(config, str) else json.dumps(config))

    def leases(self) -> dict[str, dict[str, Any]]:
        out = self.etcdctl("get", "--prefix", f"{PREFIX}/subnets/").stdout.splitlines()
        return {out[i].rsplit("/", 1)[-1]: json.loads(out[i + 1]) for i in range(0, len(out) - 1, 2)}

    def write_conflist(self, node: Node, doc: dict[str, Any] | None = None) -> None:
        path = node.private("/etc/cni/net.d") / "10-flannel.conflist"
        path.write_text(json.dumps(doc or conflist(self.network)))

    def start(self, node: Node, extra_args: list[str] | None = None, wait: bool = True) -> subprocess.Popen[bytes]:
        assert self.cluster.etcd is not None
        self.write_conflist(node)
        (node.root / "flanneld.log").write_text("")  # wait_ready reads this run's log only
        argv = [str(VENV_BIN / "flanneld"), f"--etcd-endpoints={self.cluster.etcd.endpoint}", *self.args, *(extra_args or [])]
        proc = node.popen(*argv, log="flanneld.log")
        self.daemons[node.name] = proc
        if wait:
            self.wait_ready(node)
        return proc

    def subnet_env(self, node: Node) -> str:
        try:
            return (node.private("/run/flannel") / "subnet.env").read_text()
        except FileNotFoundError:
            return ""

    def env_values(self, node: Node) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.subnet_env(node).splitlines() if "=" in line)

    def wait_ready(self, node: Node, timeout: float = 60) -> None:
        def ready() -> bool:
            proc = self.daemons.get(node.name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"flanneld on {node.name} exited with {proc.returncode}:\n{self.log(node)}")
            return "ready" in self.log(node) and bool(self.subnet_env(node))

        wait_until(ready, timeout=timeout, interval=0.2, what=f"flanneld ready on {node.name}")

    def log(self, node: Node) -> str:
        try:
            return (node.root / "flanneld.log").read_text()[-8000:]
        except OSError:
            return ""

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        proc = self.daemons.pop(node.name)
        os.kill(proc.pid, sig)  # the harness's wrapper execs flanneld: same pid
        proc.wait(30)
        node.processes.remove(proc)

    def stop(self, node: Node) -> None:
        proc = self.daemons.pop(node.name, None)
        if proc is not None:
            node.stop(proc)

    def cni(self, node: Node, command: str, pod: Pod, name: str, network: str = "") -> subprocess.CompletedProcess[str]:
        env = {
            "NETCONFPATH": "/etc/cni/net.d",
            "CNI_PATH": self.cni_path,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}",
        }
        return node.run(str(VENV_BIN / "pycni"), command, network or self.network, pod.path, env=env, check=False)

    def add_pod(self, node: Node, network: str = "") -> PodInfo:
        pod = node.make_pod()
        name = f"pod-{pod.name[-8:]}"
        out = self.cni(node, "add", pod, name, network)
        if out.returncode != 0:
            node.delete_pod_netns(pod)
            raise RuntimeError(f"ADD on {node.name} failed: {out.stdout}{out.stderr}")
        result = json.loads(out.stdout)
        ip = result["ips"][0]["address"].split("/")[0]
        info = PodInfo(pod, node, ip, name, result, network or self.network)
        self.pods.append(info)
        return info

    def delete_pod(self, info: PodInfo) -> subprocess.CompletedProcess[str]:
        out = self.cni(info.node, "del", info.pod, info.name, info.network)
        info.node.delete_pod_netns(info.pod)
        if info in self.pods:
            self.pods.remove(info)
        return out

    def routes(self, node: Node) -> list[str]:
        """The node's routes of flanneld (protocol 70), as text, sorted."""
        out = node.ip("route", "show", "table", "main", "proto", "70").stdout.splitlines()
        return sorted(line.strip() for line in out)

    def close(self) -> None:
        for info in list(self.pods):
            try:
                self.delete_pod(info)
            except Exception:  # noqa: BLE001 - the cluster goes anyway
                info.node.delete_pod_netns(info.pod)
        for node in self.cluster.nodes:
            self.stop(node)
            # what flanneld and the bridge plugin leave on a node goes with its namespace


_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64); s.settimeout(120)
print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"pong"); c.close()
"""
_CLIENT = """
import socket, sys
port = int(sys.argv[1])
for dst in sys.argv[2:]:
    try:
        with socket.create_connection((dst, port), timeout=5) as c:
            answer = c.recv(10)
        print(dst, "ok" if answer == b"pong" else "bad answer")
    except OSError as exc:
        print(dst, "failed:", exc)
"""
TCP_PORT = 7007


def mesh(pods: list[PodInfo], tcp: bool = True) -> list[str]:
    """Every pod to every other: ICMP, and TCP (one server per pod, one client per pod); what failed."""
    problems = []
    for src in pods:
        for dst in pods:
            if src is not dst and not src.pod.ping(dst.ip, count=1, timeout=2) and not src.pod.ping(dst.ip, count=2, timeout=2):
                problems.append(f"ping {src.name}@{src.node.name} -> {dst.name}@{dst.node.name} ({dst.ip})")
    if not tcp:
        return problems
    servers = [p.pod.popen(sys.executable, "-c", _SERVER, p.ip, str(TCP_PORT), stdout=subprocess.PIPE) for p in pods]
    try:
        for server in servers:
            assert server.stdout is not None
            server.stdout.readline()
        for src in pods:
            targets = [p.ip for p in pods if p is not src]
            out = src.pod.run(sys.executable, "-c", _CLIENT, str(TCP_PORT), *targets, check=False, timeout=120).stdout
            problems += [f"TCP {src.name}@{src.node.name} -> {line}" for line in out.splitlines() if not line.endswith(" ok")]
    finally:
        for server in servers:
            server.kill()
            server.wait()
    return problems
