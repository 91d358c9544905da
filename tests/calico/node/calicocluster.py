"""Calico on the cluster harness: calico-node on nodes, pods through `pycni add` with the
calico plugin, calicoctl on a node. Shared by the tests, the benchmarks and the demo."""

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


def conflist(etcd_endpoint: str, name: str = "k8s-pod-network", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    calico: dict[str, Any] = {
        "type": "calico",
        "log_level": "info",
        "datastore_type": "etcdv3",
        "etcd_endpoints": etcd_endpoint,
        "ipam": {"type": "calico-ipam"},
    }
    calico.update(extra or {})
    return {"cniVersion": "1.0.0", "name": name, "plugins": [calico]}


@dataclass
class PodInfo:
    pod: Pod
    node: Node
    ip: str
    name: str
    namespace: str = "default"


@dataclass
class CalicoCluster:
    cluster: Cluster
    pool: str
    env: dict[str, str]
    plugin_dir: Path
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    pods: list[PodInfo] = field(default_factory=list)
    network: str = "k8s-pod-network"
    #: more plugin directories after ours (e.g. /usr/lib/cni for portmap and bandwidth)
    cni_path_extra: str = ""
    #: more keys of the calico plugin's configuration for `add_pod` (e.g. "policy")
    conf_extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, cluster: Cluster, pool: str, env: dict[str, str]) -> CalicoCluster:
        from pycni import launcher

        plugin_dir = Path(tempfile.mkdtemp(prefix="pycni-cni-bin-", dir=str(cluster.root)))
        launcher.install(str(plugin_dir))
        assert cluster.etcd is not None
        base = {
            "DATASTORE_TYPE": "etcdv3",
            "CALICO_IPV4POOL_CIDR": pool,
            "FELIX_ROUTEREFRESHINTERVAL": "30",
            "PYCNI_RECONCILE_INTERVAL": "5",
            **env,
        }
        return cls(cluster, pool, base, plugin_dir)

    def write_conflist(self, node: Node, doc: dict[str, Any] | None = None) -> None:
        assert self.cluster.etcd is not None
        path = node.private("/etc/cni/net.d") / "10-calico.conflist"
        path.write_text(json.dumps(doc or conflist(self.cluster.etcd.endpoint, self.network)))

    def start(self, node: Node, extra: dict[str, str] | None = None, wait: bool = True) -> subprocess.Popen[bytes]:
        env = {**self.env, **(extra or {})}
        self.write_conflist(node)
        proc = node.popen(str(VENV_BIN / "calico-node"), env=env, log="calico-node.log")
        self.daemons[node.name] = proc
        if wait:
            self.wait_ready(node)
        return proc

    def node_env(self, node: Node, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**self.env, **(extra or {})}

    def probe(self, node: Node, flag: str) -> subprocess.CompletedProcess[str]:
        return node.run(str(VENV_BIN / "calico-node"), flag, env=self.env, check=False, timeout=60)

    def wait_ready(self, node: Node, timeout: float = 60) -> None:
        def ready() -> bool:
            proc = self.daemons.get(node.name)
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"calico-node on {node.name} exited with {proc.returncode}:\n{self.log(node)}")
            return self.probe(node, "-felix-ready").returncode == 0

        try:
            wait_until(ready, timeout=timeout, interval=0.3, what=f"calico-node ready on {node.name}")
        except TimeoutError:
            raise TimeoutError(f"{node.name} not ready: {self.probe(node, '-felix-ready').stdout}\n{self.log(node)}") from None

    def log(self, node: Node) -> str:
        try:
            return (node.root / "calico-node.log").read_text()[-6000:]
        except OSError:
            return ""

    def kill(self, node: Node, sig: int = signal.SIGKILL) -> None:
        proc = self.daemons.pop(node.name)
        os.kill(_daemon_pid(proc.pid), sig)
        wait_until(lambda: _gone(proc), timeout=30, what="calico-node gone")
        node.processes.remove(proc)

    def stop(self, node: Node) -> None:
        proc = self.daemons.pop(node.name, None)
        if proc is not None:
            node.stop(proc)

    def cni(self, node: Node, command: str, pod: Pod, name: str, namespace: str = "default") -> subprocess.CompletedProcess[str]:
        env = dict(
            self.env,
            NETCONFPATH="/etc/cni/net.d",
            CNI_PATH=":".join(p for p in (str(self.plugin_dir), self.cni_path_extra) if p),
            CNI_ARGS=f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={pod.container_id}",
        )
        return node.run(str(VENV_BIN / "pycni"), command, self.network, pod.path, env=env, check=False)

    def add_pod(self, node: Node, namespace: str = "default", labels: dict[str, str] | None = None, name: str = "") -> PodInfo:
        """A pod through `pycni add`; `labels` go in the conflist's args.cni.labels (CONVENTIONS),
        as a runtime passes them, with `conf_extra` in the calico plugin's configuration."""
        pod = node.make_pod()
        name = name or f"pod-{pod.name[-8:]}"
        if labels is not None or self.conf_extra:
            assert self.cluster.etcd is not None
            doc = conflist(self.cluster.etcd.endpoint, self.network, self.conf_extra)
            if labels:
                doc["plugins"][0]["args"] = {"cni": {"labels": [{"key": k, "value": v} for k, v in labels.items()]}}
            self.write_conflist(node, doc)
        out = self.cni(node, "add", pod, name, namespace)
        if out.returncode != 0:
            node.delete_pod_netns(pod)
            raise RuntimeError(f"ADD on {node.name} failed: {out.stdout}{out.stderr}")
        ip = json.loads(out.stdout)["ips"][0]["address"].split("/")[0]
        info = PodInfo(pod, node, ip, name, namespace)
        self.pods.append(info)
        return info

    def delete_pod(self, info: PodInfo) -> None:
        self.cni(info.node, "del", info.pod, info.name, info.namespace)
        info.node.delete_pod_netns(info.pod)
        if info in self.pods:
            self.pods.remove(info)

    def calicoctl(self, node: Node, *argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return node.run(str(VENV_BIN / "calicoctl"), *argv, env=self.env, check=check, input=input)

    def routes(self, node: Node) -> list[str]:
        """The node's routes of calico-node (protocols 80 and bird), as text, sorted."""
        out = node.ip("route", "show", "table", "main").stdout.splitlines()
        return sorted(line.strip() for line in out if " proto 80" in line or " proto bird" in line)

    def close(self) -> None:
        for info in list(self.pods):
            try:
                self.delete_pod(info)
            except Exception:  # noqa: BLE001 - the cluster goes anyway
                info.node.delete_pod_netns(info.pod)
        for node in self.cluster.nodes:
            self.stop(node)


def _daemon_pid(wrapper_pid: int) -> int:
    """calico-node's own pid: the harness's wrapper `exec`s it, so it is the wrapper's pid."""
    return wrapper_pid


def _gone(proc: subprocess.Popen[bytes]) -> bool:
    return proc.poll() is not None


def reach(src: PodInfo, dst: PodInfo, tcp: bool = True) -> str:
    """ "" when src reaches dst by ICMP (and TCP with `tcp`), else what failed."""
    if not src.pod.ping(dst.ip, count=1, timeout=2) and not src.pod.ping(dst.ip, count=2, timeout=2):
        return f"ping {src.name}@{src.node.name} -> {dst.name}@{dst.node.name} ({dst.ip}) failed"
    if tcp:
        port = 7000 + (abs(hash(dst.name)) % 2000)
        server = dst.pod.popen(
            sys.executable, "-c",
            "import socket,sys\n"
            "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(8)\n"
            "s.settimeout(20)\n"
            "c,_=s.accept(); c.sendall(b'pong'); c.close()\n",
            str(port),
        )  # fmt: skip
        try:
            client = (
                "import socket,sys,time\n"
                "for i in range(50):\n"
                "    try:\n"
                "        c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); break\n"
                "    except ConnectionRefusedError: time.sleep(0.1)\n"
                "print(c.recv(10).decode())\n"
            )
            out = src.pod.run(sys.executable, "-c", client, dst.ip, str(port), check=False, timeout=30)
            if out.stdout.strip() != "pong":
                return f"TCP {src.name} -> {dst.name} ({dst.ip}:{port}) failed: {out.stderr.strip()[-300:]}"
        finally:
            server.kill()
            server.wait()
    return ""
