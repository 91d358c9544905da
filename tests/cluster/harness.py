"""A cluster on one machine, for tests, benchmarks and demos.

    underlay bridge (in the host, or the test run's stand-in host)
      ├── 172.31.x.1/24, fdXX::1/64   the host: etcd listens here; routes between subnets
      ├── node-1  eth0 172.31.x.11    a network namespace, its own hostname (UTS namespace),
      ├── node-2  eth0 172.31.x.12    and private bind mounts of the directories its daemons own
      └── outside eth0 172.31.x.200   a plain host on the underlay (no route to any pod)

A node is a network namespace plus private copies of `PRIVATE_DIRS` (`/var/lib/calico`,
`/var/run/calico`, `/run/flannel`, `/var/lib/cni`, ...): every command run "on the node"
(`Node.run`, `Node.popen`) is wrapped in `ip netns exec` (which gives it its own mount
namespace), `unshare --uts` (the node's hostname) and bind mounts of the node's directories,
so a daemon and the CNI plugins it serves on one node see the same files, and nodes see each
other only through the underlay and etcd. Pods are network namespaces in the shared
/run/netns, given to the plugins as CNI_NETNS.

With `subnets=2`, nodes alternate between two IPv4 subnets on the same bridge and the host
routes between them (Calico's CrossSubnet, Flannel's DirectRouting).

Everything is removed by `Cluster.close()` (daemons first: their process groups are killed),
also when a test fails; nothing outside the names it generated is touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .etcd import EtcdServer

# What a node's daemons and plugins keep on disk: each node has its own copy of each.
# (/var/run is a symlink to /run on Debian: the /run form is what gets mounted.)
PRIVATE_DIRS = (
    "/var/lib/calico",
    "/run/calico",
    "/var/log/calico",
    "/run/flannel",
    "/var/lib/cni",
    "/run/cni",
    "/run/pycni",
    "/etc/cni/net.d",
)


def _name(prefix: str, length: int = 15) -> str:
    return (prefix + secrets.token_hex(8))[:length]


def _ip(*argv: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-n", netns] if netns else []), *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}: {out.stderr.strip()}")
    return out


@dataclass
class Pod:
    """A pod's network namespace (CNI_NETNS = `path`)."""

    name: str
    node: Node | None  # None for an outside host on the underlay
    container_id: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True, text=True, check=check, timeout=timeout, input=input,
        )  # fmt: skip

    def popen(self, *argv: str, **kwargs: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], text=True, start_new_session=True, **kwargs)

    def addresses(self, ifname: str = "eth0", family: int = 4) -> list[str]:
        out = _ip("-j", f"-{family}", "addr", "show", "dev", ifname, netns=self.name, check=False).stdout
        import json

        return [a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", []) if a.get("scope") == "global"]

    def ping(self, address: str, count: int = 1, timeout: float = 2) -> bool:
        out = self.run(
            "ping", "-n", "-q", "-c", str(count), "-W", str(timeout), address, check=False, timeout=timeout * count + 10
        )
        return out.returncode == 0


@dataclass
class Node:
    """One node: a network namespace on the underlay with private state directories."""

    name: str  # the node's name (its hostname, Calico's nodename)
    netns: str
    address: ipaddress.IPv4Interface
    address6: ipaddress.IPv6Interface
    gateway: ipaddress.IPv4Address
    gateway6: ipaddress.IPv6Address
    root: Path  # holds the node's copy of every PRIVATE_DIRS entry
    host_veth: str
    cluster: Cluster
    processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)

    def private(self, directory: str) -> Path:
        """The node's own copy of `directory` (one of PRIVATE_DIRS), as seen from outside the node."""
        return self.root / directory.lstrip("/")

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """`argv` as a command run on this node (its netns, hostname and directories)."""
        mounts = " && ".join(
            f"mkdir -p {shlex.quote(d)} && mount --bind {shlex.quote(str(self.private(d)))} {shlex.quote(d)}"
            for d in PRIVATE_DIRS
        )
        script = f'{mounts} && hostname {shlex.quote(self.name)} && exec "$@"'
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--", "sh", "-c", script, "node-sh", *argv]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.cluster.node_env)
        env.update(extra or {})
        return env

    def run(
        self, *argv: str, env: dict[str, str] | None = None, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            self.wrap(argv), capture_output=True, text=True, env=self.env(env), timeout=timeout, input=input, check=False
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"{self.name}: {shlex.join(argv)} exited {out.returncode}:\n{out.stdout}{out.stderr}")
        return out

    def popen(self, *argv: str, env: dict[str, str] | None = None, log: str | None = None) -> subprocess.Popen[bytes]:
        """Start a daemon on the node (its own process group; stopped by `stop`/`Cluster.close`).
        Its output goes to `log` (a file name under the node's root), default `<argv0>.log`."""
        log_path = self.root / (log or f"{Path(argv[0]).name}.log")
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                self.wrap(argv), stdout=out, stderr=subprocess.STDOUT, env=self.env(env), start_new_session=True
            )
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        """Stop a daemon started by `popen` and everything it started (its process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # Children that outlived their parent (BIRD after a SIGKILLed calico-node) are in the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.processes:
            self.processes.remove(proc)

    def ip(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _ip(*argv, netns=self.netns, check=check)

    def ip_json(self, *argv: str) -> Any:
        import json

        return json.loads(self.ip("-j", *argv).stdout or "[]")

    def make_pod(self) -> Pod:
        """A new pod network namespace (empty: the CNI plugin sets it up)."""
        pod = Pod(_name("pcp-", 20), self, _name("ctr", 24))
        subprocess.run(["ip", "netns", "add", pod.name], check=True)
        _ip("link", "set", "lo", "up", netns=pod.name)
        self.pods.append(pod)
        return pod

    def delete_pod_netns(self, pod: Pod) -> None:
        subprocess.run(["ip", "netns", "del", pod.name], capture_output=True, check=False)
        if pod in self.pods:
            self.pods.remove(pod)

    def close(self) -> None:
        for proc in list(self.processes):
            self.stop(proc)
        for pod in list(self.pods):
            self.delete_pod_netns(pod)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)
        _ip("link", "del", self.host_veth, check=False)


class Cluster:
    """An underlay bridge, its nodes, an optional etcd on the bridge, and outside hosts.

    `with Cluster(nodes=3) as cluster:` ... `cluster.nodes[0].run(...)`. `node_env` is added
    to the environment of every command run on a node (ETCD_ENDPOINTS is set when etcd runs).
    """

    def __init__(self, nodes: int = 3, *, subnets: int = 1, etcd: bool = True, workdir: str | None = None) -> None:
        self.bridge = _name("pcu")
        # One random /16 of 172.16.0.0/12 is this cluster's: subnet k is 172.B.(C+k).0/24.
        second, third = 16 + secrets.randbelow(16), secrets.randbelow(200)
        self.subnets = [ipaddress.ip_network(f"172.{second}.{third + k}.0/24") for k in range(subnets)]
        self.subnet6 = ipaddress.ip_network(f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}::/64")
        self.root = Path(workdir or tempfile.mkdtemp(prefix="pycni-cluster-"))
        self._own_root = workdir is None
        self.nodes: list[Node] = []
        self.outside: list[Pod] = []
        self._outside_veths: list[str] = []
        self.etcd: EtcdServer | None = None
        self.node_env: dict[str, str] = {}
        self._want_nodes, self._want_etcd = nodes, etcd

    # -- building ----------------------------------------------------------------

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        for subnet in self.subnets:
            _ip("addr", "add", f"{subnet[1]}/{subnet.prefixlen}", "dev", self.bridge)
        _ip("addr", "add", f"{self.subnet6[1]}/64", "dev", self.bridge, "nodad")
        _ip("link", "set", self.bridge, "up")
        if self._want_etcd:
            self.etcd = EtcdServer(self.root / "etcd" / "data", host=str(self.subnets[0][1]))
            self.etcd.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self.etcd.start()
            self.node_env["ETCD_ENDPOINTS"] = self.etcd.endpoint
        for _ in range(self._want_nodes):
            self.add_node()

    def add_node(self, name: str | None = None) -> Node:
        """A new node on the underlay (subnets alternate when there are two)."""
        index = len(self.nodes) + 1
        subnet = self.subnets[(index - 1) % len(self.subnets)]
        name = name or f"node-{index}-{secrets.token_hex(2)}"
        netns, host_veth = _name("pcn-", 24), _name("pcv")
        node = Node(
            name=name,
            netns=netns,
            address=ipaddress.IPv4Interface(f"{subnet[10 + index]}/{subnet.prefixlen}"),
            address6=ipaddress.IPv6Interface(f"{self.subnet6[10 + index]}/64"),
            gateway=subnet[1],
            gateway6=self.subnet6[1],
            root=self.root / name,
            host_veth=host_veth,
            cluster=self,
        )
        for directory in PRIVATE_DIRS:
            node.private(directory).mkdir(parents=True, exist_ok=True)
        self.nodes.append(node)
        self._plug(netns, host_veth, node.address, node.address6, node.gateway, node.gateway6)
        return node

    def add_outside(self) -> Pod:
        """A plain host on the underlay (first subnet), with no route to any pod: only traffic
        masqueraded to a node's address gets an answer from it."""
        index = 200 + len(self.outside)
        host = Pod(_name("pco-", 20), None, "")
        subnet = self.subnets[0]
        host_veth = _name("pcv")
        self._outside_veths.append(host_veth)
        self._plug(
            host.name,
            host_veth,
            ipaddress.IPv4Interface(f"{subnet[index]}/{subnet.prefixlen}"),
            ipaddress.IPv6Interface(f"{self.subnet6[index]}/64"),
            None,
            None,
        )
        self.outside.append(host)
        return host

    def _plug(
        self,
        netns: str,
        host_veth: str,
        address: ipaddress.IPv4Interface,
        address6: ipaddress.IPv6Interface,
        gateway: ipaddress.IPv4Address | None,
        gateway6: ipaddress.IPv6Address | None,
    ) -> None:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        _ip("link", "set", "lo", "up", netns=netns)
        _ip("link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", host_veth, "master", self.bridge, "up")
        _ip("addr", "add", str(address), "dev", "eth0", netns=netns)
        _ip("addr", "add", str(address6), "dev", "eth0", "nodad", netns=netns)
        _ip("link", "set", "eth0", "up", netns=netns)
        if gateway is not None:
            _ip("route", "add", "default", "via", str(gateway), netns=netns)
        if gateway6 is not None:
            _ip("-6", "route", "add", "default", "via", str(gateway6), netns=netns)

    # -- tearing down ------------------------------------------------------------

    def remove_node(self, node: Node) -> None:
        node.close()
        self.nodes.remove(node)

    def close(self) -> None:
        for node in list(self.nodes):
            node.close()
        self.nodes.clear()
        for host in self.outside:
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True, check=False)
        self.outside.clear()
        for veth in self._outside_veths:
            _ip("link", "del", veth, check=False)
        self._outside_veths.clear()
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
        _ip("link", "del", self.bridge, check=False)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


def wait_until(predicate: Any, timeout: float = 30, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something true; that value, or TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
        time.sleep(interval)


@contextlib.contextmanager
def cluster(nodes: int = 3, **kwargs: Any) -> Iterator[Cluster]:
    with Cluster(nodes, **kwargs) as built:
        yield built
