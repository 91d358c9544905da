"""Chains for the meta plugins: a main plugin (the reference bridge, or ours) followed by
meta plugins (ours or the reference's), run through pycni's runtime.

`MAIN_IMPLS` lists the bridge implementations the chain tests run with: the Go
reference always, and pycni's own whenever the package ships `bridge` and
`host-local` (it does since they landed; the tests find them by themselves).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pycni import registry
from pycni.runtime import CNIConfig, RuntimeConf
from pycni.spec.config import NetworkConfigList
from pycni.spec.result import Result

from ...conftest import REFERENCE_DIR, NetNS, PluginRun, delete_link, run_plugin, unique, unique_subnet, unique_subnet6

META_TYPES = ("portmap", "bandwidth", "tuning", "firewall")
MAIN_TYPES = ("bridge", "host-local", "loopback")


def _ours_ship(*types: str) -> bool:
    shipped = registry.discover()
    return all(t in shipped for t in types)


MAIN_IMPLS = ["reference"] + (["ours"] if _ours_ship("bridge", "host-local") else [])


def make_cni_path(base: Path, plugin_dir: Path, main: str, meta: str) -> Path:
    """A CNI_PATH directory: main plugins from `main`, meta plugins from `meta` ("ours"/"reference")."""
    directory = base / f"cni-{main}-{meta}"
    if directory.exists():
        return directory
    directory.mkdir()
    for plugin_type in MAIN_TYPES:
        source = Path(plugin_dir if main == "ours" and _ours_ship(plugin_type) else REFERENCE_DIR) / plugin_type
        (directory / plugin_type).symlink_to(source)
    for plugin_type in META_TYPES:
        source = (plugin_dir if meta == "ours" else Path(REFERENCE_DIR)) / plugin_type
        (directory / plugin_type).symlink_to(source)
    return directory


def wrap_in_namespace(path: Path, host: NetNS) -> Path:
    """A CNI_PATH whose plugins run inside `host`: a stand-in host, for tests that change
    host-wide firewall state (a forward chain that drops) without touching the real host."""
    directory = path.parent / f"{path.name}-in-{host.name}"
    if directory.exists():
        return directory
    directory.mkdir()
    for entry in path.iterdir():
        script = directory / entry.name
        script.write_text(f'#!/bin/sh\nexec ip netns exec {host.name} "{entry.resolve()}" "$@"\n')
        script.chmod(0o755)
    return directory


@dataclass
class Attachment:
    net: NetworkConfigList
    rt: RuntimeConf
    result: Result
    ns: NetNS

    def address(self, family: int = 4) -> str:
        for ip in self.result.ips:
            if ip.address.version == family:
                return str(ip.address.ip)
        raise AssertionError(f"no IPv{family} address in {self.result.to_dict()}")


@dataclass
class Network:
    """One bridge network and its chain; `attach` runs ADD, `detach` DEL (cleanup is automatic)."""

    cni: CNIConfig
    conf: dict[str, Any]
    bridge: str
    subnet: str
    subnet6: str | None
    attached: list[Attachment] = field(default_factory=list)

    @property
    def net(self) -> NetworkConfigList:
        return NetworkConfigList.from_bytes(json.dumps(self.conf).encode())

    @property
    def gateway(self) -> str:
        return self.subnet.rsplit(".", 1)[0] + ".1"

    @property
    def gateway6(self) -> str:
        assert self.subnet6 is not None
        return str(ipaddress.ip_network(self.subnet6)[1])

    def attach(
        self, ns: NetNS, capabilities: dict[str, Any] | None = None, container_id: str = "", ifname: str = "eth0"
    ) -> Attachment:
        rt = RuntimeConf(
            container_id=container_id or unique("pctc", 20),
            netns=ns.path,
            ifname=ifname,
            capability_args=capabilities or {},
        )
        net = self.net
        result = self.cni.add_network_list(net, rt)
        att = Attachment(net, rt, result, ns)
        self.attached.append(att)
        return att

    def check(self, att: Attachment) -> None:
        self.cni.check_network_list(self.net, att.rt)

    def detach(self, att: Attachment) -> None:
        self.cni.del_network_list(self.net, att.rt)
        if att in self.attached:
            self.attached.remove(att)

    def gc_plugin(self, plugin_type: str, valid: list[Attachment]) -> PluginRun:
        """GC of one plugin of the chain, given `valid` only: the others are leaked on purpose
        (the runtime's GC would DEL the attachments it has cached first)."""
        plugin = next(p for p in self.conf["plugins"] if p["type"] == plugin_type)
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf.update(cniVersion="1.1.0", name=self.conf["name"])
        conf["cni.dev/valid-attachments"] = [{"containerID": a.rt.container_id, "ifname": a.rt.ifname} for a in valid]
        return run_plugin(Path(self.cni.path[0]) / plugin_type, "GC", conf)


def bridge_conf(
    name: str, bridge: str, subnet: str, subnet6: str | None, ipam_dir: Path, meta: list[dict[str, Any]]
) -> dict[str, Any]:
    ranges = [[{"subnet": subnet}]] + ([[{"subnet": subnet6}]] if subnet6 else [])
    routes = [{"dst": "0.0.0.0/0"}] + ([{"dst": "::/0"}] if subnet6 else [])
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": ranges, "routes": routes, "dataDir": str(ipam_dir)},
            },
            *meta,
        ],
    }


@pytest.fixture
def make_network(tmp_path: Path, plugin_dir: Path, reference_dir: Path) -> Iterator[Any]:
    """Factory: make_network(meta_plugins, main="reference", meta="ours", dual_stack=False)."""
    made: list[Network] = []

    def factory(
        meta: list[dict[str, Any]],
        main: str = "reference",
        impl: str = "ours",
        dual_stack: bool = False,
        host: NetNS | None = None,
    ) -> Network:
        path = make_cni_path(tmp_path, plugin_dir, main, impl)
        if host is not None:
            path = wrap_in_namespace(path, host)
        bridge = unique("pctbr")
        subnet = unique_subnet()
        subnet6 = unique_subnet6() if dual_stack else None
        name = unique("pct-net-", 24)
        conf = bridge_conf(name, bridge, subnet, subnet6, tmp_path / f"ipam-{name}", meta)
        cni = CNIConfig([str(path)], cache_dir=str(tmp_path / "cache"))
        network = Network(cni, conf, bridge, subnet, subnet6)
        made.append(network)
        return network

    try:
        yield factory
    finally:
        for network in made:
            for att in list(network.attached):
                try:
                    network.detach(att)
                except Exception as exc:  # noqa: BLE001 - cleanup goes on; the test already failed
                    print(f"cleanup DEL failed: {exc}")
            delete_link(network.bridge)


def free_port() -> int:
    """A host port unlikely to be mapped by a concurrent test run."""
    return 20000 + secrets.randbelow(40000)


# -- a TCP server inside a container namespace --------------------------------------

SERVER = (
    "import socket,sys\n"
    "fam=socket.AF_INET6\n"
    "s=socket.socket(fam,socket.SOCK_STREAM)\n"
    "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\n"
    "s.bind(('::',int(sys.argv[1])))\n"
    "s.listen(16)\n"
    "print('ready',flush=True)\n"
    "while True:\n"
    "    c,a=s.accept()\n"
    "    h=a[0][7:] if a[0].startswith('::ffff:') else a[0]\n"
    "    c.sendall((h+'\\n').encode())\n"
    "    c.close()\n"
)


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int


@pytest.fixture
def tcp_server() -> Iterator[Any]:
    """Factory: tcp_server(ns, port) starts a server that answers each connection with the peer address."""
    started: list[Server] = []

    def start(ns: NetNS, port: int = 8080) -> Server:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, "python3", "-c", SERVER, str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.stderr else ""
        server = Server(proc, port)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.proc.kill()
            server.proc.wait()


def ask(host: str, port: int, ns: NetNS | None = None, timeout: float = 3.0) -> str:
    """Connect to host:port (from the host, or from inside `ns`) and return what the server says."""
    if ns is None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.socket(family, socket.SOCK_STREAM) as s:
                    s.settimeout(min(timeout, 1.5))
                    s.connect((host, port))
                    return s.recv(100).decode().strip()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    code = (
        "import socket,sys\n"
        "h,p=sys.argv[1],int(sys.argv[2])\n"
        "s=socket.create_connection((h,p),timeout=3)\n"
        "print(s.recv(100).decode().strip())\n"
    )
    out = ns.run("python3", "-c", code, host, str(port), check=False)
    if out.returncode != 0:
        raise OSError(f"connection from {ns.name} to {host}:{port} failed: {out.stderr.strip()}")
    return out.stdout.strip()


@dataclass
class Client:
    """A namespace that reaches the host over its own veth pair (a host address we own)."""

    ns: NetNS
    host_if: str
    host_address: str
    address: str


@pytest.fixture
def client_ns(make_netns: Any) -> Iterator[Any]:
    made: list[Client] = []

    def factory() -> Client:
        ns = make_netns()
        host_if, peer = unique("pctv"), unique("pctv")
        third = secrets.randbelow(250) + 2
        host_address, address = f"10.{secrets.randbelow(50) + 200}.{third}.1", None
        address = host_address.rsplit(".", 1)[0] + ".2"
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", peer, "netns", ns.name)
        sh("ip", "addr", "add", f"{host_address}/30", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "-n", ns.name, "addr", "add", f"{address}/30", "dev", peer)
        sh("ip", "-n", ns.name, "link", "set", peer, "up")
        sh("ip", "-n", ns.name, "link", "set", "lo", "up")
        sh("ip", "-n", ns.name, "route", "add", "default", "via", host_address)
        client = Client(ns, host_if, host_address, address)
        made.append(client)
        return client

    try:
        yield factory
    finally:
        for client in made:
            delete_link(client.host_if)


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def nft_json(target: str) -> list[dict[str, Any]]:
    out = subprocess.run(["nft", "-j", "list", *target.split()], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return []
    return [o for o in json.loads(out.stdout)["nftables"] if "metainfo" not in o]


def nft_ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout


def nft_mentions(tag_part: str) -> list[str]:
    """Every line of the host's nftables ruleset mentioning `tag_part` (a container ID)."""
    out = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if tag_part in line]


def portmap_elements(tag_part: str) -> list[tuple[str, str, str]]:
    """(family, set, key) of every element of portmap's tables whose comment mentions `tag_part`."""
    found = []
    for family in ("ip", "ip6"):
        for item in nft_json(f"table {family} cni_hostport"):
            obj = item.get("set") or item.get("map")
            for el in (obj or {}).get("elem", []) or []:
                el = el[0] if isinstance(el, list) else el
                if isinstance(el, dict) and tag_part in el.get("elem", {}).get("comment", ""):
                    found.append((family, obj["name"], json.dumps(el["elem"]["val"])))
    return sorted(found)


def links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}
