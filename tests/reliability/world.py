"""The scene the fuzz tests run in: a container namespace, an attachment for the meta
plugins to chain after, host interfaces to enslave or move, data directories, a calico
datastore; a working configuration for every plugin; and the checks every answer must pass.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycni import registry, skel
from pycni.spec import version as versions
from pycni.spec.errors import Code

from ..conftest import NetNS, _delete_netns, _make_netns, delete_link, unique, unique_subnet, unique_subnet6
from . import snapshot

META = ("portmap", "bandwidth", "tuning", "firewall")
IPAM = ("host-local", "static", "calico-ipam")
# Codes an error may carry: the spec's, and pycni's own (999 is reported as a finding).
ALLOWED_CODES = {int(c) for c in Code}
MAIN_IFNAME = "eth0"  # the attachment the meta plugins chain after
FUZZ_IFNAME = "fz1"  # what the main plugins under test create


def plugin_types() -> list[str]:
    return list(registry.discover())


def run_cmd(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@dataclass
class World:
    root: Path
    plugin_dir: Path
    ns: NetNS
    network: str = field(default_factory=lambda: unique("fz-net-", 20))
    world_network: str = field(default_factory=lambda: unique("fz-world-", 20))
    v4: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network(unique_subnet(24)))
    v6: ipaddress.IPv6Network = field(default_factory=lambda: ipaddress.IPv6Network(unique_subnet6()))
    world_v4: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network(unique_subnet(24)))
    calico_v4: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network(unique_subnet(24)))
    bridge: str = field(default_factory=lambda: unique("pctfzbr"))
    master: str = field(default_factory=lambda: unique("pctfzm"))
    device: str = field(default_factory=lambda: unique("pctfzd"))
    prev: dict[str, Any] = field(default_factory=dict)
    id_prefix: str = field(default_factory=lambda: unique("fz", 8))
    counter: int = 0

    @property
    def main_container(self) -> str:
        """The container ID of the attachment the meta plugins chain after (and of their calls)."""
        return self.id_prefix + "main"

    # -- paths ---------------------------------------------------------------------------
    @property
    def data_dir(self) -> str:
        return str(self.root / "host-local")

    @property
    def calico_db(self) -> str:
        return str(self.root / "calico.db")

    def watched(self) -> snapshot.Watched:
        """The stand-in host's state directories are private to this test run (scripts/in-netns.sh):
        all of them are watched, so a refused call that writes where a default points is caught."""
        return snapshot.Watched(
            namespaces=[None, self.ns.name],
            directories=[str(self.root), "/run/pycni", "/run/cni", "/var/lib/cni", "/var/lib/calico"],
            datastores=[self.calico_db, "/var/lib/calico/calico.db"],
        )

    # -- a working configuration for every plugin --------------------------------------------
    def host_local(self) -> dict[str, Any]:
        return {
            "type": "host-local",
            "ranges": [[{"subnet": str(self.v4)}], [{"subnet": str(self.v6)}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
            "dataDir": self.data_dir,
        }

    def flannel(self) -> dict[str, Any]:
        """flanneld's subnet.env for the world's range, and the plugin's files in the world."""
        env = self.root.parent / f"{self.root.name}-subnet.env"  # outside the watched world: flanneld's, not a plugin's
        if not env.exists():
            network = self.v4.supernet(new_prefix=16)
            env.write_text(
                f"FLANNEL_NETWORK={network}\nFLANNEL_SUBNET={self.v4.network_address + 1}/{self.v4.prefixlen}\n"
                "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
            )
        return {
            "subnetFile": str(env),
            "dataDir": str(self.root / "flannel"),
            "delegate": {"bridge": self.bridge, "hairpinMode": True, "isDefaultGateway": False},
            "ipam": {"dataDir": self.data_dir},
        }

    def calico(self, plugin_type: str) -> dict[str, Any]:
        return {
            "type": plugin_type,
            "nodename": "fuzz-node",
            "nodename_file_optional": True,
            "datastore_type": "embedded",
            "datastore_path": self.calico_db,
            "datastore_timeout": 5,
            "mtu_file": str(self.root / "calico-mtu"),
            "journal_dir": str(self.root / "calico-journal"),
            "ipam_lock_file": str(self.root / "ipam.lock"),
            "log_file_path": str(self.root / "calico.log"),
            "log_level": "info",
            "ipam": {"type": "calico-ipam", "assign_ipv4": "true"},
        }

    def plugin_conf(self, plugin_type: str) -> dict[str, Any]:
        """A configuration `plugin_type` accepts in this world."""
        v4_host = self.v4.network_address + 5
        v6_host = self.v6.network_address + 5
        confs: dict[str, dict[str, Any]] = {
            "loopback": {},
            "host-local": {"ipam": self.host_local()},
            "static": {
                "ipam": {
                    "type": "static",
                    "addresses": [
                        {"address": f"{v4_host}/{self.v4.prefixlen}", "gateway": str(self.v4.network_address + 1)},
                        {"address": f"{v6_host}/{self.v6.prefixlen}"},
                    ],
                    "routes": [{"dst": "192.0.2.0/24", "gw": str(self.v4.network_address + 1)}],
                    "dns": {"nameservers": ["192.0.2.53"], "domain": "example.test", "search": ["a.test"]},
                }
            },
            "bridge": {
                "bridge": self.bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": False,
                "mtu": 1400,
                "ipam": self.host_local(),
            },
            "ptp": {"ipMasq": True, "mtu": 1400, "ipam": self.host_local()},
            "macvlan": {"master": self.master, "mode": "bridge", "ipam": self.host_local()},
            "ipvlan": {"master": self.master, "mode": "l2", "ipam": self.host_local()},
            "vlan": {"master": self.master, "vlanId": 42, "ipam": self.host_local()},
            "dummy": {"ipam": self.host_local()},
            "tap": {"mtu": 1400, "multiQueue": False, "ipam": self.host_local()},
            "host-device": {"device": self.device, "ipam": self.host_local()},
            "portmap": {
                "snat": True,
                "capabilities": {"portMappings": True},
                "runtimeConfig": {
                    "portMappings": [
                        {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
                        {"hostPort": 18081, "containerPort": 81, "protocol": "udp", "hostIP": "198.51.100.2"},
                    ]
                },
            },
            "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000, "egressRate": 8_000_000, "egressBurst": 80_000},
            "tuning": {
                "sysctl": {"net.ipv4.conf.IFNAME.proxy_arp": "1"},
                "mtu": 1400,
                "promisc": True,
                "txQLen": 500,
                "dataDir": str(self.root / "tuning"),
            },
            "firewall": {"backend": "nftables", "ingressPolicy": "open"},
            "flannel": self.flannel(),
            "calico": self.calico("calico"),
            "calico-ipam": self.calico("calico-ipam"),
        }
        body = confs[plugin_type]
        conf = {"cniVersion": "1.1.0", "name": self.network, "type": plugin_type, **json.loads(json.dumps(body))}
        # GC keeps the world's own attachment (it is not in this network, but an accepted `name` may be anything).
        conf["cni.dev/valid-attachments"] = [{"containerID": self.main_container, "ifname": MAIN_IFNAME}]
        if plugin_type in META:
            conf["prevResult"] = json.loads(json.dumps(self.prev))
        return conf

    def args_values(self) -> dict[str, list[str]]:
        """Values CNI_ARGS keys take when they are right (and near misses)."""
        return {
            "IP": [str(self.v4.network_address + 9), str(self.v6.network_address + 9), f"{self.v4.network_address + 9}/24"],
            "MAC": ["02:42:ac:11:00:02", "02-42-ac-11-00-02"],
            "GATEWAY": [str(self.v4.network_address + 1)],
        }

    def env(self, plugin_type: str) -> dict[str, str]:
        self.counter += 1
        meta = plugin_type in META
        env = {
            "CNI_CONTAINERID": self.main_container if meta else f"{self.id_prefix}{self.counter:06x}",
            "CNI_NETNS": self.ns.path,
            "CNI_IFNAME": MAIN_IFNAME if meta else FUZZ_IFNAME,
            "CNI_PATH": str(self.plugin_dir),
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "PYCNI_LOG_FILE": str(self.root / "plugins.log"),
            "PYCNI_AGENT": "off",
        }
        if plugin_type.startswith("calico"):
            env["CALICO_IPV4POOL_CIDR"] = str(self.calico_v4)
        return env

    # -- the attachment the meta plugins chain after --------------------------------------------
    def attach_main(self) -> None:
        conf = {
            "cniVersion": "1.1.0",
            "name": self.world_network,
            "type": "ptp",
            "ipam": {"type": "host-local", "ranges": [[{"subnet": str(self.world_v4)}]], "dataDir": self.data_dir},
        }
        out = skel.dispatch("ptp", self.main_env("ADD"), json.dumps(conf).encode())
        assert out.code == 0, out.stdout
        self.prev = json.loads(out.stdout)
        self._main_conf = conf

    def main_env(self, command: str) -> dict[str, str]:
        return {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": self.main_container,
            "CNI_NETNS": self.ns.path,
            "CNI_IFNAME": MAIN_IFNAME,
            "CNI_PATH": str(self.plugin_dir),
            "PYCNI_AGENT": "off",
        }

    def detach_main(self) -> None:
        out = skel.dispatch("ptp", self.main_env("DEL"), json.dumps(self._main_conf).encode())
        assert out.code == 0, out.stdout


@contextmanager
def world(root: Path, plugin_dir: Path) -> Iterator[World]:
    """A world in `root`, which is also the working directory while it exists (relative
    paths an accepted configuration names land there)."""
    ns = _make_netns()
    w = World(root=root, plugin_dir=plugin_dir, ns=ns)
    cwd = os.getcwd()
    made: list[str] = []
    try:
        for name, peer in ((w.master, unique("pctfzp")), (w.device, unique("pctfzq"))):
            run_cmd("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
            made.append(name)
            run_cmd("ip", "link", "set", name, "up")
            run_cmd("ip", "link", "set", peer, "up")
        run_cmd("ip", "link", "add", w.bridge, "type", "bridge")  # there before the first snapshot, as on a host
        (root / "file-not-dir").write_text("x")
        os.chdir(root)
        w.attach_main()
        yield w
    finally:
        os.chdir(cwd)
        try:
            if w.prev:
                w.detach_main()
        finally:
            for name in [*made, w.bridge]:
                delete_link(name)
            _delete_netns(ns)


# -- what every answer must be -----------------------------------------------------------------


def check_answer(command: str, code: int, stdout: bytes, stderr: bytes) -> dict[str, Any] | None:
    """A success (exit 0: a result for ADD, VERSION's answer, nothing for the rest) or a
    well-formed error (exit 1: cniVersion, a known code, a message); never a traceback.
    Returns the error object, None on success."""
    for stream, text in (("stdout", stdout), ("stderr", stderr)):
        assert b"Traceback (most recent call last)" not in text, f"a traceback on {stream}: {text[-2000:]!r}"
    if command == "":
        assert code == 0 and b"CNI protocol versions supported" in stderr, (code, stdout, stderr)
        return None
    if code == 0:
        if command == "ADD":
            doc = json.loads(stdout)
            assert isinstance(doc, dict) and isinstance(doc.get("cniVersion"), str), stdout[:500]
        elif command == "VERSION":
            doc = json.loads(stdout)
            assert isinstance(doc.get("supportedVersions"), list), stdout[:500]
        else:
            assert stdout.strip() == b"", f"{command} succeeded but printed {stdout[:500]!r}"
        return None
    assert code == 1, f"exit code {code}: {stdout[:500]!r} {stderr[-500:]!r}"
    try:
        doc = json.loads(stdout)
    except ValueError:
        raise AssertionError(f"the error is not JSON: {stdout[:500]!r} (stderr {stderr[-500:]!r})") from None
    assert isinstance(doc, dict), doc
    assert set(doc) <= {"cniVersion", "code", "msg", "details"}, doc
    assert isinstance(doc.get("cniVersion"), str), doc
    assert isinstance(doc.get("code"), int) and doc["code"] in ALLOWED_CODES, doc
    assert isinstance(doc.get("msg"), str) and doc["msg"].strip(), doc
    assert doc["code"] != Code.INTERNAL, f"an unexpected exception (code 999): {doc}"
    return doc


def dispatch_checked(plugin_type: str, env: Mapping[str, str], stdin: bytes) -> skel.Outcome:
    try:
        out = skel.dispatch(plugin_type, env, stdin)
    except BaseException as exc:
        raise AssertionError(f"dispatch raised {type(exc).__name__}: {exc}") from exc
    check_answer(env.get("CNI_COMMAND", ""), out.code, out.stdout, out.stderr)
    return out


def is_supported_version(stdin: bytes) -> bool:
    try:
        return json.loads(stdin).get("cniVersion") in versions.ALL_VERSIONS
    except (ValueError, AttributeError):
        return False
