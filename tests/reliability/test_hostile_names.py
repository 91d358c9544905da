"""Hostile names: values built to escape their directory, to collide with another attachment,
or to inject into an nftables, iptables-restore or tc command. Each is refused with a clear
error naming the value, or shown harmless; and nothing in pycni runs through a shell.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pycni import skel
from pycni.runtime import CNIConfig, RuntimeConf, cache
from pycni.spec.config import NetworkConfigList
from pycni.spec.errors import CNIError

from ..conftest import NetNS, unique, unique_subnet
from . import snapshot
from .world import check_answer

SRC = Path(__file__).resolve().parents[2] / "src" / "pycni"


def call(plugin: str, command: str, conf: dict[str, Any], ns: NetNS | None = None, **env: str) -> dict[str, Any] | None:
    """Dispatch in-process; the error object (checked well-formed) or None on success."""
    full = {"CNI_COMMAND": command, "CNI_CONTAINERID": "pcthostile", "CNI_IFNAME": "eth0", "PYCNI_AGENT": "off"}
    full["CNI_NETNS"] = ns.path if ns is not None else ""
    full.update(env)
    out = skel.dispatch(plugin, full, json.dumps(conf).encode())
    return check_answer(command, out.code, out.stdout, out.stderr)


def refused(error: dict[str, Any] | None, code: int, *needles: str) -> None:
    assert error is not None, "accepted"
    assert error["code"] == code, error
    text = error["msg"] + error.get("details", "")
    for needle in needles:
        assert needle in text, (needle, error)


# -- nothing through a shell ------------------------------------------------------------------------


def _calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)]


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return func.id if isinstance(func, ast.Name) else ""


def test_nothing_runs_through_a_shell() -> None:
    """Every process pycni starts gets an argument list: no shell=True, os.system, os.popen,
    os.exec*/spawn* with a string, or subprocess with a command string."""
    starters = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call", "subprocess.check_output"}
    forbidden = {"os.system", "os.popen", "os.spawnl", "os.spawnlp", "os.execl", "os.execlp", "commands.getoutput"}
    checked = 0
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in _calls(tree):
            name = _name(node.func)
            where = f"{path.relative_to(SRC)}:{node.lineno}"
            if name in forbidden:
                problems.append(f"{where}: {name}")
            if name in starters:
                checked += 1
                if any(k.arg == "shell" for k in node.keywords):
                    problems.append(f"{where}: {name}(shell=...)")
                first = node.args[0] if node.args else None
                if isinstance(first, (ast.Constant, ast.JoinedStr, ast.BinOp)):
                    problems.append(f"{where}: {name} with a command string")
    assert not problems, problems
    assert checked >= 8  # the audit saw the places that start processes


# -- names that escape their directory ----------------------------------------------------------------

ESCAPING_NAMES = ["../../etc", "/etc/cni", "a/b", ".", "..", "-x", ".hidden", "net\n", "net\x00", "a" * 201, "a b", "a;b"]


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_network_names_that_escape_are_refused(name: str, tmp_path: Path) -> None:
    conf = {"cniVersion": "1.1.0", "name": name, "type": "host-local", "ipam": {"type": "host-local", "subnet": unique_subnet()}}
    conf["ipam"]["dataDir"] = str(tmp_path)
    refused(call("host-local", "ADD", conf, CNI_NETNS="/run/netns/x"), 7, "network name")
    with pytest.raises(CNIError, match="network name"):
        NetworkConfigList.from_bytes(json.dumps({"cniVersion": "1.1.0", "name": name, "plugins": [{"type": "x"}]}).encode())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("container_id", ["../../etc", "/abs", "a/b", "-x", ".x", "x\n", "x y", "x;y", "x\x00", "a" * 201])
def test_container_ids_that_escape_are_refused(container_id: str, tmp_path: Path) -> None:
    conf = {"cniVersion": "1.1.0", "name": "pcthostile", "type": "host-local"}
    conf["ipam"] = {"type": "host-local", "subnet": unique_subnet(), "dataDir": str(tmp_path)}
    for command in ("ADD", "DEL", "CHECK"):
        refused(call("host-local", command, conf, CNI_NETNS="/run/netns/x", CNI_CONTAINERID=container_id), 4, "containerID")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ifname", ["../x", "a/b", "a:b", "a b", ".", "..", "a" * 16, "eth0\n", "\udcff", ""])
def test_interface_names_that_escape_are_refused(ifname: str, tmp_path: Path) -> None:
    conf = {"cniVersion": "1.1.0", "name": "pcthostile", "type": "tuning", "dataDir": str(tmp_path)}
    refused(call("tuning", "ADD", conf, CNI_NETNS="/run/netns/x", CNI_IFNAME=ifname), 4, "CNI_IFNAME")
    assert list(tmp_path.iterdir()) == []


def test_names_that_differ_only_in_case_or_a_trailing_dot_do_not_collide(tmp_path: Path) -> None:
    """Harmless by construction: each network has its own host-local directory, so "Net",
    "net" and "net." never share an address or a file (Linux file names are case-sensitive)."""
    subnet = unique_subnet(29)
    for name in ("pctNet", "pctnet", "pctnet."):
        conf = {"cniVersion": "1.1.0", "name": name, "type": "host-local"}
        conf["ipam"] = {"type": "host-local", "subnet": subnet, "dataDir": str(tmp_path)}
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "pctsame", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/x"}
        out = skel.dispatch("host-local", env, json.dumps(conf).encode())
        assert out.code == 0, out.stdout
        assert [p.name for p in (tmp_path / name).iterdir() if p.name[0].isdigit()] != []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pctNet", "pctnet", "pctnet."]
    for name in ("pctNet", "pctnet", "pctnet."):  # each DEL releases its own network's address only
        conf = {"cniVersion": "1.1.0", "name": name, "type": "host-local"}
        conf["ipam"] = {"type": "host-local", "subnet": subnet, "dataDir": str(tmp_path)}
        env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "pctsame", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/x"}
        held = [p for p in (tmp_path / name).iterdir() if p.name[0].isdigit()]
        assert len(held) == 1
        assert skel.dispatch("host-local", env, json.dumps(conf).encode()).code == 0
        assert not held[0].exists()


@pytest.mark.parametrize(
    ("plugin", "key", "value"),
    [
        ("host-local", "ipam.dataDir", "relative/dir"),
        ("host-local", "ipam.dataDir", "/tmp/x\x00y"),
        ("host-local", "ipam.resolvConf", "etc/resolv.conf"),
        ("tuning", "dataDir", "../tuning"),
        ("calico", "datastore_path", "calico.db"),
        ("calico", "journal_dir", "journal"),
        ("calico", "log_file_path", "/var/log/x\x00"),
    ],
)
def test_relative_or_nul_paths_are_refused(plugin: str, key: str, value: str, tmp_path: Path) -> None:
    """A relative path would be resolved against the working directory of whoever runs the
    call (the agent's is not a plugin process's); a NUL cannot be in a path at all."""
    conf: dict[str, Any] = {"cniVersion": "1.1.0", "name": "pcthostile", "type": plugin, "nodename": "n"}
    conf["ipam"] = {"type": "host-local", "subnet": unique_subnet()} if plugin == "host-local" else {"type": "calico-ipam"}
    section = conf["ipam"] if key.startswith("ipam.") else conf
    section[key.split(".")[-1]] = value
    conf["prevResult"] = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}]}
    error = call(plugin, "ADD", conf, CNI_NETNS="/run/netns/x")
    refused(error, 7, key.split(".")[-1])


def test_symlinks_planted_in_host_local_data_dir_are_not_written_through(tmp_path: Path) -> None:
    """last_reserved_ip and the lock are never opened through a symlink; an address file
    that is a symlink counts as taken and releasing it removes the link, not its target."""
    subnet = unique_subnet(29)
    store = tmp_path / "pctlinks"
    store.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (store / "last_reserved_ip.0").symlink_to(victim)
    first = str(next(iter(__import__("ipaddress").ip_network(subnet).hosts())))
    (store / first).symlink_to(victim)
    conf = {"cniVersion": "1.1.0", "name": "pctlinks", "type": "host-local"}
    conf["ipam"] = {"type": "host-local", "subnet": subnet, "dataDir": str(tmp_path)}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "pctlink", "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/x"}
    out = skel.dispatch("host-local", env, json.dumps(conf).encode())
    assert out.code == 0, out.stdout
    assert not json.loads(out.stdout)["ips"][0]["address"].startswith(first + "/")  # the planted name is taken
    assert victim.read_text() == "precious"
    assert not (store / "last_reserved_ip.0").is_symlink()
    # A lock planted as a symlink: refused (code 5), the target not created.
    (store / "lock").unlink()
    (store / "lock").symlink_to(tmp_path / "created-through-link")
    refused(check_answer("ADD", *_run("host-local", dict(env, CNI_CONTAINERID="pctlink2"), conf)), 5, "store")
    assert not (tmp_path / "created-through-link").exists()


def _run(plugin: str, env: dict[str, str], conf: dict[str, Any]) -> tuple[int, bytes, bytes]:
    out = skel.dispatch(plugin, env, json.dumps(conf).encode())
    return out.code, out.stdout, out.stderr


# -- sysctl keys ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["../../../etc/passwd", "net/../../kernel/hostname", "kernel.hostname", "net", "/proc/sys/net/ipv4/ip_forward/..",
     "net.ipv4.conf.IFNAME.proxy_arp\n", "net/ipv4//ip_forward", "net/./ipv4/ip_forward", "net\x00.ipv4"],
)  # fmt: skip
def test_sysctl_keys_that_escape_are_refused(key: str, netns: NetNS, tmp_path: Path) -> None:
    netns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": netns.path}], "ips": []}
    conf = {"cniVersion": "1.1.0", "name": "pcthostile", "type": "tuning", "dataDir": str(tmp_path / "t")}
    conf |= {"sysctl": {key: "1"}, "prevResult": prev}
    watched = snapshot.Watched(namespaces=[netns.name], directories=[str(tmp_path)])
    before = watched.snapshot()
    refused(call("tuning", "ADD", conf, netns), 7, "sysctl")
    assert snapshot.differences(before, watched.snapshot()) == []


# -- collisions between attachments ------------------------------------------------------------------------


def _veths(ns: NetNS, *names: str) -> None:
    for i, name in enumerate(names):
        ns.run("ip", "link", "add", name, "type", "veth", "peer", "name", f"pctpeer{i}")


def test_tuning_records_of_colliding_attachments(netns: NetNS, tmp_path: Path) -> None:
    """Container "pct_a" interface "c" and container "pct" interface "a_c" name the same file."""
    _veths(netns, "c", "a_c")
    data_dir = tmp_path / "tuning"

    def conf(ifname: str) -> dict[str, Any]:
        prev = {"cniVersion": "1.1.0", "interfaces": [{"name": ifname, "sandbox": netns.path}], "ips": []}
        return {"cniVersion": "1.1.0", "name": "pcthostile", "type": "tuning", "dataDir": str(data_dir), "mtu": 1280,
                "prevResult": prev}  # fmt: skip

    assert call("tuning", "ADD", conf("c"), netns, CNI_CONTAINERID="pct_a", CNI_IFNAME="c") is None
    record = data_dir / "pct_a_c.json"
    saved = record.read_text()
    refused(call("tuning", "ADD", conf("a_c"), netns, CNI_CONTAINERID="pct", CNI_IFNAME="a_c"), 102, "pct_a", "collide")
    assert record.read_text() == saved and netns.ip_json("link", "show", "a_c")[0]["mtu"] == 1500
    # The runtime's DEL after the refused ADD leaves the first attachment's record alone.
    assert call("tuning", "DEL", conf("a_c"), netns, CNI_CONTAINERID="pct", CNI_IFNAME="a_c") is None
    assert record.read_text() == saved
    assert call("tuning", "DEL", conf("c"), netns, CNI_CONTAINERID="pct_a", CNI_IFNAME="c") is None
    assert not record.exists() and netns.ip_json("link", "show", "c")[0]["mtu"] == 1500


def test_portmap_records_of_colliding_attachments() -> None:
    from pycni.plugins.meta import _portmap_records as records

    network = unique("pctpm-", 20)
    first = records.Record(network, "pct_a", "c", "tag-a", [records.Entry(4, "hostport_targets", "tcp . 1")])
    records.write(first)
    try:
        with pytest.raises(CNIError, match="collide"):
            records.write(records.Record(network, "pct", "a_c", "tag-b", []))
        assert records.read(network, "pct", "a_c") is None
        assert records.read(network, "pct_a", "c") == first
        records.remove(network, "pct", "a_c")  # the other attachment's DEL
        assert records.read(network, "pct_a", "c") == first
    finally:
        records.remove(network, "pct_a", "c")
    assert not os.path.exists(records.network_dir(network))


def test_host_device_records_of_colliding_attachments(make_netns: Any) -> None:
    """Container "pct-a" interface "c" and container "pct" interface "a-c" name the same file."""
    devices = [unique("pcthd"), unique("pcthd")]
    for name in devices:
        subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", unique("pcthp")], check=True)
    first_ns, second_ns = make_netns(), make_netns()
    network = unique("pcthd-", 20)

    def conf(device: str) -> dict[str, Any]:
        return {"cniVersion": "1.1.0", "name": network, "type": "host-device", "device": device}

    try:
        assert call("host-device", "ADD", conf(devices[0]), first_ns, CNI_CONTAINERID="pct-a", CNI_IFNAME="c") is None
        refused(call("host-device", "ADD", conf(devices[1]), second_ns, CNI_CONTAINERID="pct", CNI_IFNAME="a-c"), 102, "pct-a")
        assert subprocess.run(["ip", "link", "show", devices[1]], capture_output=True).returncode == 0  # not moved
        assert call("host-device", "DEL", conf(devices[1]), second_ns, CNI_CONTAINERID="pct", CNI_IFNAME="a-c") is None
        assert first_ns.run("ip", "link", "show", "c", check=False).returncode == 0  # the first is untouched
        assert call("host-device", "DEL", conf(devices[0]), first_ns, CNI_CONTAINERID="pct-a", CNI_IFNAME="c") is None
        assert subprocess.run(["ip", "link", "show", devices[0]], capture_output=True).returncode == 0  # given back
    finally:
        for name in devices:
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def test_runtime_cache_files_of_colliding_attachments(tmp_path: Path) -> None:
    """libcni's `<network>-<containerID>-<ifname>`: network "pct" container "a-c" and network
    "pct-a" container "c" name the same file."""
    plugins = tmp_path / "bin"
    plugins.mkdir()
    stub = plugins / "pct-stub"
    stub.write_text('#!/bin/sh\ncat >/dev/null\n[ "$CNI_COMMAND" = ADD ] && echo \'{"cniVersion":"1.1.0"}\'\nexit 0\n')
    stub.chmod(0o755)
    runtime = CNIConfig([str(plugins)], cache_dir=str(tmp_path / "cache"))

    def net(name: str) -> NetworkConfigList:
        return NetworkConfigList.from_bytes(
            json.dumps({"cniVersion": "1.1.0", "name": name, "plugins": [{"type": "pct-stub"}]}).encode()
        )

    first, second = (net("pct-a"), RuntimeConf("c", "/run/netns/x")), (net("pct"), RuntimeConf("a-c", "/run/netns/x"))
    runtime.add_network_list(*first)
    with pytest.raises(CNIError) as refusal:
        runtime.add_network_list(*second)
    assert refusal.value.code == 102 and "'pct-a'" in refusal.value.msg
    runtime.del_network_list(*second)  # the runtime's DEL after the refused ADD
    assert cache.read(str(tmp_path / "cache"), "pct-a", "c", "eth0") is not None
    assert runtime.cached_result(*second) is None
    runtime.del_network_list(*first)
    assert cache.list_attachments(str(tmp_path / "cache")) == []


def _host_veth(ns: NetNS, host_name: str, ifname: str = "eth0") -> None:
    """A container interface whose veth peer is in the (stand-in) host, as a main plugin leaves it."""
    subprocess.run(["ip", "link", "add", host_name, "type", "veth", "peer", "name", ifname, "netns", ns.name], check=True)
    subprocess.run(["ip", "link", "set", host_name, "up"], check=True)
    ns.run("ip", "link", "set", ifname, "up")


def test_bandwidth_ifbs_of_colliding_attachments(make_netns: Any) -> None:
    """The reference's ifb name hashes network + container ID: network "pctbw1" container "abc"
    and network "pctbw" container "1abc" get the same one."""
    first_ns, second_ns = make_netns(), make_netns()
    hosts = [unique("pctbwh"), unique("pctbwh")]
    _host_veth(first_ns, hosts[0])
    _host_veth(second_ns, hosts[1])
    limits = {"egressRate": 1_000_000, "egressBurst": 100_000}

    def conf(network: str, ns: NetNS) -> dict[str, Any]:
        prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": ns.path}], "ips": []}
        return {"cniVersion": "1.1.0", "name": network, "type": "bandwidth", **limits, "prevResult": prev}

    from pycni.plugins.meta.bandwidth import ifb_name

    ifb = ifb_name("pctbw1", "abc", "eth0")
    assert ifb == ifb_name("pctbw", "1abc", "eth0")
    try:
        assert call("bandwidth", "ADD", conf("pctbw1", first_ns), first_ns, CNI_CONTAINERID="abc") is None
        refused(call("bandwidth", "ADD", conf("pctbw", second_ns), second_ns, CNI_CONTAINERID="1abc"), 102, ifb)
        assert call("bandwidth", "DEL", conf("pctbw", second_ns), second_ns, CNI_CONTAINERID="1abc") is None
        assert subprocess.run(["ip", "link", "show", ifb], capture_output=True).returncode == 0, "the first attachment's ifb went"
        assert call("bandwidth", "DEL", conf("pctbw1", first_ns), first_ns, CNI_CONTAINERID="abc") is None
        assert subprocess.run(["ip", "link", "show", ifb], capture_output=True).returncode != 0
    finally:
        for name in [*hosts, ifb]:
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def _calico_conf(tmp_path: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.1.0", "name": "pctcalico", "type": "calico", "nodename": "pct-node", "nodename_file_optional": True,
        "datastore_path": str(tmp_path / "calico.db"), "mtu_file": str(tmp_path / "mtu"),
        "journal_dir": str(tmp_path / "journal"), "ipam_lock_file": str(tmp_path / "ipam.lock"),
        "log_file_path": str(tmp_path / "calico.log"), "ipam": {"type": "calico-ipam"},
    }  # fmt: skip


def test_calico_host_veths_of_colliding_workloads(make_netns: Any, plugin_dir: Path, tmp_path: Path) -> None:
    """Calico names a non-Kubernetes workload's host veth "cali" + its container ID's first 11
    characters: "pctcollide0A" and "pctcollide0B" share one. The second ADD is refused instead
    of deleting the first workload's veth (which Calico does for a new sandbox of a pod)."""
    first_ns, second_ns = make_netns(), make_netns()
    conf = _calico_conf(tmp_path)
    env = {"CNI_PATH": str(plugin_dir), "CALICO_IPV4POOL_CIDR": unique_subnet(24)}
    assert call("calico", "ADD", conf, first_ns, CNI_CONTAINERID="pctcollide0A", **env) is None
    try:
        refused(call("calico", "ADD", conf, second_ns, CNI_CONTAINERID="pctcollide0B", **env), 102, "calipctcollide0", "collide")
        assert call("calico", "DEL", conf, second_ns, CNI_CONTAINERID="pctcollide0B", **env) is None
        assert first_ns.run("ip", "link", "show", "eth0", check=False).returncode == 0
        alias = json.loads(subprocess.run(["ip", "-j", "link", "show", "calipctcollide0"], capture_output=True, text=True).stdout)
        assert alias[0].get("ifalias") == "pycni-calico pctcollide0A"
        # A new sandbox of the same workload (same container ID) still replaces the old veth, as in Calico.
    finally:
        assert call("calico", "DEL", conf, first_ns, CNI_CONTAINERID="pctcollide0A", **env) is None


@pytest.mark.parametrize(
    ("args", "key"),
    [("K8S_POD_NAMESPACE=a/b;K8S_POD_NAME=web", "K8S_POD_NAMESPACE"),
     ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=Web", "K8S_POD_NAME"),
     ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web\n", "K8S_POD_NAME"), ("CNI_TEST_NAMESPACE=../x", "CNI_TEST_NAMESPACE"),
     ("K8S_POD_NAMESPACE=d\udcff;K8S_POD_NAME=web", "K8S_POD_NAMESPACE")],
)  # fmt: skip
def test_calico_names_from_cni_args_are_refused(args: str, key: str, tmp_path: Path) -> None:
    """Pod names and namespaces become datastore keys: a '/' makes one namespace's keys a
    prefix of another's; undecodable text cannot be stored."""
    conf = _calico_conf(tmp_path)
    refused(call("calico-ipam", "ADD", conf, CNI_NETNS="/run/netns/x", CNI_ARGS=args), 4, key)
    refused(call("calico", "ADD", dict(conf, nodename="a/b"), CNI_NETNS="/run/netns/x"), 7, "node name")
    assert not (tmp_path / "calico.db").exists()


# -- injection into nftables and iptables-restore scripts ------------------------------------------


def _nft_tables() -> list[str]:
    out = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return sorted(f"{t['table']['family']} {t['table']['name']}" for t in json.loads(out)["nftables"] if "table" in t)


def _ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout


def _portmap_conf(ns: NetNS, **extra: Any) -> dict[str, Any]:
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": ns.path}], "ips": [{"address": "10.250.0.2/24"}]}
    mappings = [{"hostPort": 18090, "containerPort": 80, "protocol": "tcp"}]
    return {"cniVersion": "1.1.0", "name": "pctinject", "type": "portmap", "runtimeConfig": {"portMappings": mappings},
            "prevResult": prev, **extra}  # fmt: skip


@pytest.mark.parametrize(
    "condition",
    ["ip saddr 192.0.2.1; add table ip pctpwned", "ip saddr 192.0.2.1\nadd table ip pctpwned", "ip saddr 192.0.2.1 # x",
     "ip saddr 192.0.2.1 } ; add table ip pctpwned", 'ip saddr 192.0.2.1 comment "x', "ip saddr 192.0.2.1\radd table ip x"],
)  # fmt: skip
def test_portmap_nft_conditions_cannot_inject(condition: str, netns: NetNS) -> None:
    before = _ruleset()
    refused(call("portmap", "ADD", _portmap_conf(netns, conditionsV4=[condition]), netns), 7, "conditionsV4")
    assert "pctpwned" not in _ruleset() and _ruleset() == before


def test_portmap_iptables_conditions_cannot_inject(netns: NetNS) -> None:
    save = ["iptables-save", "-t", "nat"]
    before = subprocess.run(save, capture_output=True, text=True, check=True).stdout
    condition = ["-s", "192.0.2.1\nCOMMIT\n*filter\n-A INPUT -j DROP"]
    conf = _portmap_conf(netns, backend="iptables", conditionsV4=condition)
    refused(call("portmap", "ADD", conf, netns), 7, "conditionsV4")
    after = subprocess.run(save, capture_output=True, text=True, check=True).stdout
    assert [line for line in after.splitlines() if not line.startswith("#")] == [
        line for line in before.splitlines() if not line.startswith("#")
    ]
    assert "-A INPUT -j DROP" not in subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("host_ip", ["fd00::1%x } ; add table ip pctpwned", "fd00::1%eth0", "10.0.0.1%x"])
def test_portmap_host_ip_with_a_scope_is_refused(host_ip: str, netns: NetNS) -> None:
    """Python's ipaddress keeps an IPv6 scope's free text in the address's string form."""
    conf = _portmap_conf(netns)
    conf["runtimeConfig"]["portMappings"][0]["hostIP"] = host_ip
    before = _ruleset()
    refused(call("portmap", "ADD", conf, netns), 7, "hostIP")
    assert _ruleset() == before


@pytest.mark.parametrize("policy", ["same-bridge", "isolated"])
@pytest.mark.parametrize("name", ['br" } ; add table ip pctpwned ; #', 'br"x', "br\\x", "a/b", "br\nx"])
def test_firewall_names_from_prev_result_cannot_inject(policy: str, name: str, netns: NetNS) -> None:
    interfaces = [{"name": name}, {"name": "vethx"}, {"name": "eth0", "sandbox": netns.path}]
    if policy == "isolated":
        interfaces = [{"name": "pctbr0"}, {"name": name}, {"name": "eth0", "sandbox": netns.path}]
    prev = {"cniVersion": "1.1.0", "interfaces": interfaces, "ips": [{"address": "10.250.1.2/24", "interface": 2}]}
    conf = {"cniVersion": "1.1.0", "name": "pctinject", "type": "firewall", "ingressPolicy": policy, "prevResult": prev}
    before = _ruleset()
    refused(call("firewall", "ADD", conf, netns), 7, "prevResult")
    assert _ruleset() == before


def test_valid_but_odd_interface_names_are_harmless(netns: NetNS, plugin_dir: Path, tmp_path: Path) -> None:
    """`e;"{#'x` is a valid Linux interface name. Through ptp, portmap, bandwidth, tuning and
    firewall it is never part of a command: nftables comments carry a digest of it (owner
    tags), tc is netlink, sysctl paths are files. ADD, CHECK and DEL all work."""
    ifname = "e;\"{#'x"
    env = {"CNI_IFNAME": ifname, "CNI_CONTAINERID": "pctodd", "CNI_PATH": str(plugin_dir)}
    subnet = unique_subnet(24)
    base = {"cniVersion": "1.1.0", "name": "pctodd"}
    ptp = {**base, "type": "ptp", "ipMasq": True, "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(tmp_path)}}
    tables_before = _nft_tables()
    out = skel.dispatch("ptp", {**env, "CNI_COMMAND": "ADD", "CNI_NETNS": netns.path}, json.dumps(ptp).encode())
    assert out.code == 0, out.stdout
    prev = json.loads(out.stdout)
    metas = [
        {"type": "portmap", "runtimeConfig": {"portMappings": [{"hostPort": 18091, "containerPort": 80, "protocol": "tcp"}]}},
        {"type": "bandwidth", "ingressRate": 1_000_000, "ingressBurst": 100_000, "egressRate": 1_000_000, "egressBurst": 100_000},
        {"type": "tuning", "dataDir": str(tmp_path / "tuning"), "sysctl": {"net.ipv4.conf.IFNAME.proxy_arp": "1"}},
        {"type": "firewall", "ingressPolicy": "isolated"},
    ]
    try:
        for meta in metas:
            conf = {**base, **meta, "prevResult": prev}
            if meta["type"] == "firewall":
                conf["prevResult"] = {**prev, "interfaces": [{"name": unique("pctbr")}, *prev["interfaces"]]}
            assert call(meta["type"], "ADD", conf, netns, **env) is None, meta["type"]
            assert call(meta["type"], "CHECK", conf, netns, **env) is None, meta["type"]
        assert netns.run("cat", f"/proc/sys/net/ipv4/conf/{ifname}/proxy_arp").stdout.strip() == "1"
        assert ifname not in _ruleset()  # only digests of it
    finally:
        for meta in reversed(metas):
            conf = {**base, **meta, "prevResult": prev}
            assert call(meta["type"], "DEL", conf, netns, **env) is None, meta["type"]
        assert call("ptp", "DEL", ptp, netns, **env) is None
    assert "pctodd" not in _ruleset()
    assert set(_nft_tables()) - set(tables_before) <= {"ip cni_hostport", "ip6 cni_hostport", "inet cni_firewall",
                                                        "bridge cni_firewall", "inet cni_plugins_masquerade"}  # fmt: skip
