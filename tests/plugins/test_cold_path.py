"""The cold path: a plugin process without the agent (PYCNI_AGENT=off) imports only what its
call uses, and talks rtnetlink through one socket per namespace.

Each plugin runs for real, through its launcher, as a runtime would execute it. The launchers
are pycni's own with one line added (the third, a comment in the original, which `launcher.
runs_here` does not read, so bridge still runs host-local in its own process): an audit hook
counting the NETLINK_ROUTE sockets the process opens in each network namespace (whichever
thread opens them), and, at exit, the names of every module the process imported.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pycni import launcher
from pycni.runtime import CNIConfig, RuntimeConf
from pycni.spec.config import NetworkConfigList

from ..conftest import NetNS, delete_link, run_plugin, unique, unique_subnet

PROBE_ENV = "PYCNI_TEST_PROBE"  # the directory each plugin process writes its report to
# Only builtin modules (posix, sys): the probe itself must not import what it counts.
PROBE = (
    "import sys, posix, atexit; _probe = {{}}; "
    "sys.addaudithook(lambda e, a: _probe.__setitem__(k := posix.readlink('/proc/thread-self/ns/net'), _probe.get(k, 0) + 1) "
    "if e == 'socket.__new__' and a[1] == 16 and a[3] == 0 else None); "
    "atexit.register(lambda: open(posix.environ[b'{env}'].decode() + '/{type}.' + posix.environ[b'CNI_COMMAND'].decode() "
    "+ '.' + str(posix.getpid()), 'w').write(repr({{'modules': sorted(sys.modules), 'sockets': _probe}})))"
)

# Never imported by a plugin call of the standard plugins: the wings, the programs, the
# extras' libraries, entry points.
NOWHERE = (
    *("yaml", "grpc", "prometheus_client", "importlib.metadata"),
    *("pycni.calico", "pycni.flannel", "pycni.agent.server", "pycni.cli"),
)


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pycni's launchers, each with the probe line."""
    directory = tmp_path_factory.mktemp("cni-probed")
    launcher.install(str(directory))
    for path in directory.iterdir():
        lines = path.read_text().split("\n")
        assert lines[2].startswith("#"), "the launcher's third line is no longer a comment: move the probe"
        lines[2] = PROBE.format(env=PROBE_ENV, type=path.name)
        path.write_text("\n".join(lines))
    return directory


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    directory = tmp_path / "reports"
    directory.mkdir()
    monkeypatch.setenv(PROBE_ENV, str(directory))
    monkeypatch.setenv("PYCNI_AGENT", "off")
    monkeypatch.setenv("PYCNI_LOG_FILE", str(tmp_path / "plugins.log"))
    yield directory


def read_reports(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(plugin type, command) -> {"modules": [...], "sockets": {netns: count}}."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in directory.iterdir():
        plugin_type, command, _pid = path.name.split(".")
        assert (plugin_type, command) not in found, f"{plugin_type} {command} ran twice"
        found[(plugin_type, command)] = ast.literal_eval(path.read_text())
    return found


@pytest.fixture(scope="module")
def iproute_needs() -> set[str]:
    """The pyroute2 modules a netlink call may load: what `pycni.net.netlink` imports for
    IPRoute and the kernel-filtered dumps, in a fresh interpreter."""
    code = (
        "import sys; from pycni.net import netlink; netlink._load_pyroute2(); "
        "import pyroute2.netlink.rtnl.marshal, pyroute2.netlink.exceptions; "
        "print(repr(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2')))"
    )
    out = subprocess.run([launcher.interpreter(), "-c", code], capture_output=True, text=True, check=True, env=_clean_env())
    return set(ast.literal_eval(out.stdout))


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON") or k == "PYTHONDONTWRITEBYTECODE"} | {
        "PYTHONPATH": os.pathsep.join(launcher.site_paths())
    }


def family(modules: list[str], name: str) -> list[str]:
    return [m for m in modules if m == name or m.startswith(name + ".")]


def assert_lean(
    report: dict[str, Any], what: str, iproute_needs: set[str], *, absent: tuple[str, ...] = (), netlink: bool = True
) -> None:
    modules = report["modules"]
    for name in (*NOWHERE, *absent):
        assert not family(modules, name), f"{what} imported {family(modules, name)}"
    pyroute2 = set(family(modules, "pyroute2"))
    if not netlink:
        assert not pyroute2, f"{what} imported pyroute2, which it does not use"
    extra = sorted(pyroute2 - iproute_needs)
    assert not extra, f"{what} imported pyroute2 modules IPRoute does not need: {extra}"
    many = {ns: n for ns, n in report["sockets"].items() if n > 1}
    assert not many, f"{what} opened several rtnetlink sockets in one namespace: {many}"


def run_chain(probed: Path, tmp_path: Path, conf: dict[str, Any], ns: NetNS, caps: dict[str, Any] | None = None) -> None:
    cni = CNIConfig([str(probed)], cache_dir=str(tmp_path / "cache"), base_env=dict(os.environ))
    net = NetworkConfigList.from_bytes(json.dumps(conf).encode())
    rt = RuntimeConf(container_id=unique("pctcold", 20), netns=ns.path, ifname="eth0", capability_args=caps or {})
    try:
        cni.add_network_list(net, rt)
    finally:
        cni.del_network_list(net, rt)


def test_bridge_chain(probed: Path, reports: Path, tmp_path: Path, netns: NetNS, iproute_needs: set[str]) -> None:
    bridge = unique("pctbr")
    conf = {
        "cniVersion": "1.0.0",
        "name": unique("pct-net-", 24),
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": unique_subnet()}]], "dataDir": str(tmp_path / "ipam")},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        ],
    }
    caps = {
        "portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 100_000, "egressRate": 10_000_000, "egressBurst": 100_000},
    }
    try:
        run_chain(probed, tmp_path, conf, netns, caps)
    finally:
        delete_link(bridge)
    found = read_reports(reports)
    # host-local runs inside bridge's process (its launcher is ours), on ADD and on DEL.
    assert sorted(found) == sorted((t, c) for t in ("bridge", "portmap", "bandwidth") for c in ("ADD", "DEL"))
    for command in ("ADD", "DEL"):
        # No ipMasq: no nftables; the iptables layout of portmap only on request.
        assert_lean(found[("bridge", command)], f"bridge {command}", iproute_needs, absent=("nftables",))
        assert "pycni.plugins.ipam.host_local" in found[("bridge", command)]["modules"]
        assert_lean(
            found[("portmap", command)],
            f"portmap {command}",
            iproute_needs,
            netlink=False,
            absent=("pycni.plugins.meta._portmap_iptables", "subprocess"),
        )
        assert_lean(found[("bandwidth", command)], f"bandwidth {command}", iproute_needs, absent=("nftables",))


def test_ptp_tuning_firewall(probed: Path, reports: Path, tmp_path: Path, netns: NetNS, iproute_needs: set[str]) -> None:
    conf = {
        "cniVersion": "1.0.0",
        "name": unique("pct-net-", 24),
        "plugins": [
            {"type": "ptp", "ipam": {"type": "host-local", "subnet": unique_subnet(), "dataDir": str(tmp_path / "ipam")}},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
            {"type": "firewall"},
        ],
    }
    run_chain(probed, tmp_path, conf, netns)
    found = read_reports(reports)
    assert sorted(found) == sorted((t, c) for t in ("ptp", "tuning", "firewall") for c in ("ADD", "DEL"))
    for command in ("ADD", "DEL"):
        assert_lean(found[("ptp", command)], f"ptp {command}", iproute_needs, absent=("nftables",))
        assert_lean(found[("tuning", command)], f"tuning {command}", iproute_needs, absent=("nftables",))
        assert_lean(found[("firewall", command)], f"firewall {command}", iproute_needs, netlink=False, absent=("subprocess",))


def test_loopback(probed: Path, reports: Path, tmp_path: Path, netns: NetNS, iproute_needs: set[str]) -> None:
    conf = {"cniVersion": "1.0.0", "name": unique("pct-net-", 24), "plugins": [{"type": "loopback"}]}
    run_chain(probed, tmp_path, conf, netns)
    found = read_reports(reports)
    for command in ("ADD", "DEL"):
        assert_lean(found[("loopback", command)], f"loopback {command}", iproute_needs, absent=("nftables",))


@pytest.mark.parametrize("plugin_type", ["host-local", "static"])
def test_ipam(plugin_type: str, probed: Path, reports: Path, tmp_path: Path, netns: NetNS, iproute_needs: set[str]) -> None:
    ipam: dict[str, Any] = {"type": plugin_type}
    if plugin_type == "host-local":
        ipam.update(subnet=unique_subnet(), dataDir=str(tmp_path / "ipam"))
    else:
        ipam["addresses"] = [{"address": "10.254.1.2/24"}]
    conf = {"cniVersion": "1.0.0", "name": unique("pct-net-", 24), "type": "ptp", "ipam": ipam}
    env = {PROBE_ENV: str(reports), "PYCNI_AGENT": "off", "PYCNI_LOG_FILE": str(tmp_path / "plugins.log")}
    for command in ("ADD", "DEL"):
        run = run_plugin(probed / plugin_type, command, conf, netns=netns.path, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
    found = read_reports(reports)
    for command in ("ADD", "DEL"):
        report = found[(plugin_type, command)]
        assert_lean(report, f"{plugin_type} {command}", iproute_needs, netlink=False, absent=("nftables", "subprocess"))
