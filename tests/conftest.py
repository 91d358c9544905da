"""Shared fixtures: real namespaces with unique names, installed plugins, and a leak check.

The suite runs inside a private network namespace standing in for the host
(scripts/in-netns.sh), so plugins under test never touch the machine's own
interfaces, routes or firewall. Every test that creates kernel objects uses names
from `unique()` and must remove them; `no_leaks` fails the test that leaves a
namespace or a link behind.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REFERENCE_DIR = "/usr/lib/cni"
# The stand-in host's uplink (default route via 198.51.100.1 / 2001:db8:ffff::1) and the
# namespace at its other end, where a test can run an "outside" server (scripts/in-netns.sh).
UPLINK = "uplink0"
WAN_NETNS = os.environ.get("PYCNI_TEST_WAN_NETNS", "")
WAN_ADDRESS, WAN_ADDRESS6 = "198.51.100.1", "2001:db8:ffff::1"
# What every developer and CI have next to the checkout: the seed, the spec, libcni fixtures.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def unique(prefix: str = "pct", length: int = 15) -> str:
    """A name no other test (or concurrent test run) uses; fits an interface name by default."""
    return (prefix + secrets.token_hex(8))[:length]


def pytest_configure(config: pytest.Config) -> None:
    """Tests run inside a private namespace standing in for the host (scripts/in-netns.sh)."""
    inode = os.environ.get("PYCNI_TEST_HOST_NETNS_INODE", "")
    if inode != str(os.stat("/proc/self/ns/net").st_ino):
        raise pytest.UsageError(
            "the tests must not run in the machine's own network namespace: "
            "run `make test`, or `scripts/in-netns.sh .venv/bin/python -m pytest ...`"
        )


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines() if ": " in line}


def _netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test that leaves a link in the (stand-in) host, or a namespace, behind.

    The stand-in host's links and its /run/netns belong to this run alone."""
    links, namespaces = _links(), _netns()
    yield
    leaked_links = _links() - links
    leaked_ns = _netns() - namespaces
    for name in leaked_links:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    for name in leaked_ns:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    assert not leaked_links, f"test leaked host links: {sorted(leaked_links)}"
    assert not leaked_ns, f"test leaked namespaces: {sorted(leaked_ns)}"


@dataclass
class NetNS:
    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, check=check)

    def ip_json(self, *argv: str) -> Any:
        return json.loads(self.run("ip", "-j", *argv).stdout or "[]")


def _make_netns() -> NetNS:
    name = unique("pct-ns-", 24)
    subprocess.run(["ip", "netns", "add", name], check=True)
    return NetNS(name)


def _delete_netns(ns: NetNS) -> None:
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, check=False)


@pytest.fixture
def netns() -> Iterator[NetNS]:
    ns = _make_netns()
    try:
        yield ns
    finally:
        _delete_netns(ns)


@pytest.fixture
def make_netns() -> Iterator[Any]:
    made: list[NetNS] = []

    def factory() -> NetNS:
        ns = _make_netns()
        made.append(ns)
        return ns

    try:
        yield factory
    finally:
        for ns in made:
            _delete_netns(ns)


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our plugins, installed as a runtime would find them."""
    from pycni import launcher

    directory = tmp_path_factory.mktemp("cni-bin")
    launcher.install(str(directory))
    return directory


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not os.path.isfile(os.path.join(REFERENCE_DIR, "bridge")):
        pytest.fail("Debian's containernetworking-plugins is not installed: run `make test`, which installs it")
    return Path(REFERENCE_DIR)


@dataclass
class PluginRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


def run_plugin(
    executable: str | Path,
    command: str,
    conf: dict[str, Any] | bytes | str,
    *,
    netns: str = "",
    container_id: str = "pct-container",
    ifname: str = "eth0",
    cni_args: str = "",
    cni_path: str = "",
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> PluginRun:
    """Execute a plugin executable as a runtime would."""
    if isinstance(conf, dict):
        stdin = json.dumps(conf).encode()
    elif isinstance(conf, str):
        stdin = conf.encode()
    else:
        stdin = conf
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": cni_args,
        "CNI_PATH": cni_path or str(Path(executable).parent),
    }
    if env:
        full_env.update(env)
    proc = subprocess.run([str(executable)], input=stdin, capture_output=True, env=full_env, timeout=timeout, check=False)
    return PluginRun(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def normalize_result(result: dict[str, Any], ignore_macs: bool = True, ignore_host_veth: bool = True) -> dict[str, Any]:
    """A result with what legitimately differs between two implementations masked:
    generated MAC addresses and veth names, and an empty `dns` present or not."""
    out = json.loads(json.dumps(result))
    if not out.get("dns"):
        out.pop("dns", None)
    for intf in out.get("interfaces", []):
        if ignore_macs:
            intf.pop("mac", None)
        if ignore_host_veth and not intf.get("sandbox") and intf.get("name", "").startswith("veth"):
            intf["name"] = "veth*"
    return out


def unique_subnet(prefix_len: int = 24) -> str:
    """A private IPv4 subnet unlikely to be used by another test running at the same time."""
    return f"10.{secrets.randbelow(50) + 200}.{secrets.randbelow(256)}.0/{prefix_len}"


def unique_subnet6() -> str:
    """A unique-local /64, in canonical form (as the kernel and results print it)."""
    import ipaddress

    return str(ipaddress.ip_network(f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}::/64"))


def delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
