"""docs/conformance.md, generated: for every plugin, every configuration key of the reference,
whether Debian's 1.1.1 binary has it, whether pycni reads it, and the tests that show it.

- The reference's keys are listed here from the Go sources' configuration structs (upstream
  containernetworking/plugins to date, Calico's cni-plugin types.go), as key paths:
  `runtimeConfig.portMappings[].hostPort` is the `hostPort` of each entry of that list.
- "Debian 1.1.1" is read from /usr/lib/cni: a Go binary keeps its structs' JSON tags.
- "pycni" is what the plugin's parser looks up while it parses its documented configuration
  (tests/plugins/test_key_case.py), recorded at `pycni.spec.gokeys`, the one place keys are read.
- "tests" are test_key_case (the key in another case has the same effect) and the first test
  of the plugin's own test modules that uses the key.

A key of the reference that pycni does not read must be in NOT_READ with the reason; a key
neither read nor explained fails tests/test_conformance.py, as does a docs file that is not
what this module renders (`scripts/conformance.py` writes it).
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "conformance.md"
REFERENCE_DIR = "/usr/lib/cni"

_IPAM_COMMON = ["ipam", "ipam.type", "dns"]
REFERENCE: dict[str, list[str]] = {
    "bridge": [
        "bridge",
        "isGateway",
        "isDefaultGateway",
        "forceAddress",
        "ipMasq",
        "ipMasqBackend",
        "mtu",
        "hairpinMode",
        "promiscMode",
        "vlan",
        "vlanTrunk",
        "vlanTrunk[].minID",
        "vlanTrunk[].maxID",
        "vlanTrunk[].id",
        "preserveDefaultVlan",
        "enabledad",
        "macspoofchk",
        "disableContainerInterface",
        "portIsolation",
        "args.cni.mac",
        "runtimeConfig.mac",
        *_IPAM_COMMON,
    ],
    "ptp": ["ipMasq", "ipMasqBackend", "mtu", *_IPAM_COMMON],
    "macvlan": ["master", "mode", "mtu", "mac", "linkInContainer", "bcqueuelen", "runtimeConfig.mac", *_IPAM_COMMON],
    "ipvlan": ["master", "mode", "mtu", "linkInContainer", *_IPAM_COMMON],
    "vlan": ["master", "vlanId", "mtu", "linkInContainer", *_IPAM_COMMON],
    "host-device": ["device", "hwaddr", "kernelpath", "pciBusID", "runtimeConfig.deviceID", *_IPAM_COMMON],
    "tap": ["mac", "mtu", "selinuxContext", "multiQueue", "owner", "group", "bridge", "runtimeConfig.mac", *_IPAM_COMMON],
    "loopback": ["prevResult"],
    "host-local": [
        "ipam.dataDir",
        "ipam.resolvConf",
        "ipam.routes",
        "ipam.ranges",
        "ipam.ranges[][].subnet",
        "ipam.ranges[][].rangeStart",
        "ipam.ranges[][].rangeEnd",
        "ipam.ranges[][].gateway",
        "ipam.subnet",
        "ipam.rangeStart",
        "ipam.rangeEnd",
        "ipam.gateway",
        "runtimeConfig.ipRanges",
        "runtimeConfig.ips",
        "args.cni.ips",
    ],
    "static": [
        "ipam.addresses",
        "ipam.addresses[].address",
        "ipam.addresses[].gateway",
        "ipam.routes",
        "ipam.dns",
        "runtimeConfig.ips",
        "args.cni.ips",
    ],
    "portmap": [
        "snat",
        "markMasqBit",
        "externalSetMarkChain",
        "conditionsV4",
        "conditionsV6",
        "masqAll",
        "backend",
        "runtimeConfig.portMappings",
        "runtimeConfig.portMappings[].hostPort",
        "runtimeConfig.portMappings[].containerPort",
        "runtimeConfig.portMappings[].protocol",
        "runtimeConfig.portMappings[].hostIP",
        "prevResult",
    ],
    "bandwidth": [
        "ingressRate",
        "ingressBurst",
        "egressRate",
        "egressBurst",
        "unshapedSubnets",
        "shapedSubnets",
        "runtimeConfig.bandwidth",
        "runtimeConfig.bandwidth.ingressRate",
        "runtimeConfig.bandwidth.ingressBurst",
        "runtimeConfig.bandwidth.egressRate",
        "runtimeConfig.bandwidth.egressBurst",
        "prevResult",
    ],
    "tuning": [
        "sysctl",
        "mac",
        "promisc",
        "mtu",
        "txQLen",
        "allmulti",
        "dataDir",
        "runtimeConfig.mac",
        "args.cni.sysctl",
        "args.cni.mac",
        "args.cni.promisc",
        "args.cni.mtu",
        "args.cni.txQLen",
        "args.cni.allmulti",
        "prevResult",
    ],
    "firewall": ["backend", "iptablesAdminChainName", "firewalldZone", "ingressPolicy", "prevResult"],
    "calico": [
        "datastore_type",
        "etcd_endpoints",
        "etcd_discovery_srv",
        "etcd_authority",
        "etcd_scheme",
        "etcd_key_file",
        "etcd_cert_file",
        "etcd_ca_cert_file",
        "log_level",
        "log_file_path",
        "log_file_max_size",
        "log_file_max_age",
        "log_file_max_count",
        "nodename",
        "nodename_file",
        "nodename_file_optional",
        "hostname",
        "mtu",
        "num_queues",
        "require_mtu_file",
        "include_default_routes",
        "policy",
        "policy.type",
        "kubernetes",
        "kubernetes.kubeconfig",
        "kubernetes.node_name",
        "kubernetes.k8s_api_root",
        "container_settings",
        "container_settings.allow_ip_forwarding",
        "feature_control",
        "feature_control.ip_addrs_no_ipam",
        "feature_control.floating_ips",
        "ipam",
        "ipam.type",
        "ipam.assign_ipv4",
        "ipam.assign_ipv6",
        "ipam.ipv4_pools",
        "ipam.ipv6_pools",
        "dataplane_options",
    ],
}
# Keys that are a key of another plugin's reading too (the main plugin's ipam section is read
# by the IPAM plugin, the bridge's dns by bridge itself).
NOT_READ: dict[tuple[str, str], str] = {
    ("bandwidth", "unshapedSubnets"): "upstream v1.6 (htb classes); pycni shapes as Debian's 1.1.1 does (tbf)",
    ("bandwidth", "shapedSubnets"): "upstream v1.6 (htb classes); pycni shapes as Debian's 1.1.1 does (tbf)",
    ("firewall", "iptablesAdminChainName"): "iptables backend; pycni's firewall is nftables only (firewall-nftables)",
    ("firewall", "firewalldZone"): "firewalld backend; pycni's firewall is nftables only (firewall-nftables)",
    ("calico", "kubernetes.k8s_api_root"): "the Kubernetes datastore is refused; pycni has embedded and etcd v3",
    ("calico", "dataplane_options"): "options of Calico's alternative (Windows, VPP) dataplanes",
}
# Configurations besides test_key_case's documented ones, for keys read only in another shape
# (host-local's single range, Calico's etcd_authority and node name from the kubernetes section).
ALTERNATES: dict[str, list[dict[str, Any]]] = {
    "host-local": [
        {
            "cniVersion": "1.0.0",
            "name": "keys",
            "type": "host-local",
            "ipam": {
                "type": "host-local",
                "subnet": "10.9.0.0/24",
                "rangeStart": "10.9.0.10",
                "rangeEnd": "10.9.0.20",
                "gateway": "10.9.0.1",
            },
        }
    ],
    "host-device": [{"cniVersion": "1.0.0", "name": "keys", "type": "host-device", "pciBusID": "0000:00:09.0"}],
    "calico": [
        {
            "cniVersion": "1.0.0",
            "name": "keys",
            "type": "calico",
            "datastore_type": "etcdv3",
            "etcd_authority": "127.0.0.1:2379",
            "etcd_scheme": "http",
            "kubernetes": {"node_name": "n"},
            "ipam": {"type": "calico-ipam"},
        }
    ],
}
PLUGIN_TESTS = {
    "host-local": "ipam/test_host_local.py",
    "static": "ipam/test_static.py",
    "calico-ipam": "ipam/test_calico_ipam.py",
    **{p: f"meta/test_{p}.py" for p in ("portmap", "bandwidth", "tuning", "firewall")},
}


def _paths(value: Any, path: str, out: dict[int, str]) -> None:
    if isinstance(value, dict):
        out[id(value)] = path
        for key, item in value.items():
            _paths(item, f"{path}.{key}" if path else key, out)
    elif isinstance(value, list):
        for item in value:
            _paths(item, f"{path}[]", out)


@contextlib.contextmanager
def _recording(paths: dict[int, str]) -> Iterator[set[str]]:
    """Every key path looked up through pycni.spec.gokeys while the block runs."""
    from pycni.spec import gokeys

    seen: set[str] = set()
    find_key, mentions = gokeys.find_key, gokeys.mentions

    def note(data: Any, field: str) -> None:
        where = paths.get(id(data))
        if where is not None:
            seen.add(f"{where}.{field}" if where else field)

    def recording_find_key(data: Any, field: str) -> str | None:
        note(data, field)
        return find_key(data, field)

    def recording_mentions(data: Any, field: str) -> bool:
        note(data, field)
        return mentions(data, field)

    gokeys.find_key, gokeys.mentions = recording_find_key, recording_mentions  # type: ignore[assignment]
    try:
        yield seen
    finally:
        gokeys.find_key, gokeys.mentions = find_key, mentions  # type: ignore[assignment]


def _canonical(key: str) -> str:
    return re.sub(r"\[\]", "[]", key)


def read_by_pycni(plugin: str) -> set[str]:
    """The key paths the plugin's parser looks up for its documented configuration."""
    import importlib

    from pycni import registry
    from pycni.skel import parse_call

    from .plugins import test_key_case as cases

    parser, documented = cases.CASES[plugin]
    module = importlib.import_module(registry.module_name(plugin))
    read: set[str] = set()
    for conf in [documented, *ALTERNATES.get(plugin, [])]:
        for command in {"ADD", cases.COMMAND.get(plugin, "ADD")}:
            env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "keys", "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0"}
            call = parse_call(plugin, module, env, json.dumps(conf).encode())
            paths: dict[int, str] = {}
            _paths(call.conf.raw, "", paths)
            with _recording(paths) as seen:
                call.conf.has_prev_result  # noqa: B018 - the lookup is what is recorded
                try:
                    parser(call)
                except Exception:  # noqa: BLE001 - what was looked up before a refusal was read
                    pass
            read |= seen
    return {_canonical(k) for k in read}


def in_debian(plugin: str) -> set[str] | None:
    """The JSON tags of Debian's binary of `plugin` (None when it has none: Calico, newer plugins)."""
    binary = os.path.join(REFERENCE_DIR, plugin)
    if not os.path.isfile(binary):
        return None
    data = Path(binary).read_bytes()
    return {m.decode(errors="replace").split(",")[0] for m in re.findall(rb'json:"([^"]*)"', data)}


def tests_using(plugin: str, key: str) -> list[str]:
    """test_key_case, and the first test of the plugin's own modules whose code names the key."""
    leaf = key.rsplit(".", 1)[-1].replace("[]", "")
    found = []
    module = PLUGIN_TESTS.get(plugin, f"main/test_{plugin.replace('-', '_')}.py")
    for path in [ROOT / "tests" / "plugins" / module, *sorted((ROOT / "tests" / "interop").glob("test_*.py"))]:
        if not path.exists():
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
                names |= {k.arg for n in ast.walk(node) if isinstance(n, ast.Call) for k in n.keywords if k.arg}
                if leaf in names:
                    found.append(f"{path.relative_to(ROOT / 'tests')}::{node.name}")
                    break
        if found:
            break
    return found


def rows() -> list[dict[str, str]]:
    out = []
    for plugin, keys in REFERENCE.items():
        read = read_by_pycni(plugin)
        debian = in_debian(plugin)
        for key in keys:
            leaf = key.rsplit(".", 1)[-1].replace("[]", "")
            reads = key in read
            reason = NOT_READ.get((plugin, key), "")
            tests = [f"plugins/test_key_case.py[{plugin}]", *tests_using(plugin, key)] if reads else []
            out.append(
                {
                    "plugin": plugin,
                    "key": key,
                    "debian": "n/a" if debian is None else ("yes" if leaf in debian else "no (newer)"),
                    "pycni": "yes" if reads else f"no: {reason}" if reason else "NO",
                    "tests": ", ".join(f"`{t}`" for t in tests),
                }
            )
    return out


def render() -> str:
    lines = [
        "# Configuration keys: the reference and pycni",
        "",
        "Generated by `scripts/conformance.py` from `tests/conformance.py` (do not edit by hand;",
        "`tests/test_conformance.py` fails when this file is not what it renders). For every plugin,",
        "every key of the reference's configuration structs (upstream containernetworking/plugins to",
        "date; Calico's cni-plugin for `calico`): whether Debian's 1.1.1 binary (`/usr/lib/cni`) has it,",
        "whether pycni reads it (looked up at `pycni.spec.gokeys` while the plugin parses its documented",
        "configuration), and the tests that show it. Keys are read as Go reads them: in any case.",
        "Result keys (`prevResult`'s contents) are the spec's and read by one parser for every plugin.",
        "Debian 1.1.1's column looks the key's last name up among the binary's JSON tags.",
        "",
        "| plugin | key | Debian 1.1.1 | pycni reads it | tests |",
        "|---|---|---|---|---|",
    ]
    for row in rows():
        lines.append(f"| {row['plugin']} | `{row['key']}` | {row['debian']} | {row['pycni']} | {row['tests']} |")
    return "\n".join(lines) + "\n"
