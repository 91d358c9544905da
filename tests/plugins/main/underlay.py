"""Helpers of the underlay plugins' tests (macvlan, ipvlan, vlan, dummy, tap, host-device):
one attachment per implementation with its own master, namespace and subnets; the kernel
state of a container interface as the comparisons see it; whether the kernel has a link type."""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pycni import skel
from pycni.net import netlink
from pycni.net.attachment import Link
from pycni.skel import CmdArgs

from ...conftest import NetNS, PluginRun, normalize_result, run_plugin, unique
from . import kernel_state as ks
from .sides import prefix_text

IFNAME = "net1"
LINK_TYPE_OPTIONS = {"ipvlan": "CONFIG_IPVLAN", "vlan": "CONFIG_VLAN_8021Q", "dummy": "CONFIG_DUMMY"}
INFO_DATA = ("mode", "bcqueuelen", "id", "protocol", "type", "pi", "vnet_hdr", "multi_queue", "persist", "user", "group")
SYSCTLS = (
    "net/ipv4/conf/{if}/arp_notify",
    "net/ipv6/conf/{if}/ndisc_notify",
    "net/ipv6/conf/{if}/accept_dad",
    "net/ipv6/conf/{if}/disable_ipv6",
    "net/ipv6/conf/lo/disable_ipv6",
)


def variant(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return dict(json.loads(json.dumps(base)), **changes)


def conf_v4(plugin: str, name: str, **settings: Any) -> dict[str, Any]:
    """A configuration with host-local IPv4 addresses and a default route."""
    ipam = {"type": "host-local", "subnet": "{subnet0}", "routes": [{"dst": "0.0.0.0/0"}]}
    return {"cniVersion": "1.0.0", "name": name, "type": plugin, **settings, "ipam": ipam}


def conf_dual(plugin: str, name: str, **settings: Any) -> dict[str, Any]:
    """A configuration with host-local IPv4 and IPv6 addresses and default routes."""
    ranges = [[{"subnet": "{subnet0}"}], [{"subnet": "{subnet1}"}]]
    ipam = {"type": "host-local", "ranges": ranges, "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
    return {"cniVersion": "1.0.0", "name": name, "type": plugin, **settings, "ipam": ipam}


def no_link_type(kind: str) -> str:
    """The reason the functional tests of a link type skip where the kernel lacks it."""
    return f"this kernel has no {kind} link type ({LINK_TYPE_OPTIONS[kind]})"


@functools.cache
def kernel_has(kind: str) -> bool:
    """Whether the kernel makes links of `kind`, asked with iproute2 in a scratch namespace
    (independently of the plugins under test, so a plugin that wrongly reports a missing
    link type fails its tests instead of skipping them)."""
    ns = unique("pct-probe-", 24)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = functools.partial(subprocess.run, capture_output=True, text=True, check=False)
        run(["ip", "-n", ns, "link", "add", "pctpa", "type", "veth", "peer", "name", "pctpb"])
        extra = {"vlan": ["link", "pctpa", "type", "vlan", "id", "5"], "ipvlan": ["link", "pctpa", "type", "ipvlan"]}
        proc = run(["ip", "-n", ns, "link", "add", "probe", *extra.get(kind, ["type", kind])])
        if proc.returncode != 0 and "Unknown device type" not in proc.stderr:
            raise AssertionError(f"probing for {kind} links failed otherwise: {proc.stderr}")
        return proc.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def make_master(mtu: int = 1500) -> str:
    """A veth pair in the (stand-in) host, both ends up: the returned end is a master."""
    master, peer = unique("pctm"), unique("pctp")
    subprocess.run(["ip", "link", "add", master, "mtu", str(mtu), "type", "veth", "peer", "name", peer], check=True)
    for name in (master, peer):
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
    return master


@dataclass
class Attach:
    """One implementation's attachment: its plugin, namespace, master, subnets and data directory."""

    executable: Path
    ns: NetNS
    master: str
    subnets: list[str]
    data_dir: Path
    container_id: str = field(default_factory=lambda: unique("pctc"))
    ifname: str = IFNAME

    def fill(self, text: str) -> str:
        """Placeholders made this side's: {master}, {subnetN}, {prefixN}, {addrK} (the first subnet's K-th address)."""
        text = text.replace("{master}", self.master)
        for i, subnet in enumerate(self.subnets):
            text = text.replace(f"{{subnet{i}}}", subnet).replace(f"{{prefix{i}}}", prefix_text(subnet))
        if self.subnets:
            network = ipaddress.ip_network(self.subnets[0])
            text = re.sub(r"\{addr(\d+)\}", lambda m: str(network[int(m.group(1))]), text)
        return text

    def conf(self, template: dict[str, Any]) -> dict[str, Any]:
        conf = json.loads(self.fill(json.dumps(template)))
        if conf.get("ipam", {}).get("type") == "host-local":
            conf["ipam"]["dataDir"] = str(self.data_dir)
        return conf  # type: ignore[no-any-return]

    def run(self, command: str, template: dict[str, Any], args: str = "", netns: str | None = None, **extra: Any) -> PluginRun:
        return run_plugin(
            self.executable,
            command,
            dict(self.conf(template), **extra),
            netns=self.ns.path if netns is None else netns,
            container_id=self.container_id,
            ifname=self.ifname,
            cni_args=self.fill(args),
            env={"PYCNI_LOG_FILE": str(self.data_dir / "plugin.log")},
        )

    def names(self) -> set[str]:
        return {link["ifname"] for link in self.ns.ip_json("link")}

    def allocations(self) -> list[Path]:
        """host-local's allocation files (one per address)."""
        return [p for p in self.data_dir.glob("*/*") if p.name[0].isdigit() and not p.name.startswith("last_")]


def comparable(side: Attach, other: Attach, data: Any) -> Any:
    """`data` (a result or a state) with `side`'s subnets, master and namespace written as `other`'s."""
    pairs = [(prefix_text(a), prefix_text(b)) for a, b in zip(side.subnets, other.subnets, strict=True)]
    pairs += [(side.master, other.master), (side.ns.path, other.ns.path)]
    return ks.renamed(data, pairs)


def host_index_names() -> dict[int, str]:
    return {link["ifindex"]: link["ifname"] for link in ks.ip_json("link", "show")}


def link_state(ns: NetNS, ifname: str = IFNAME) -> dict[str, Any]:
    """A container interface: its kind and kind-specific settings, the host link it is made
    from, MTU, state, addresses, routes and the sysctls the plugins set."""
    (link,) = ns.ip_json("-d", "addr", "show", ifname) or [{}]
    info = link.get("linkinfo", {})
    data = info.get("info_data", {})
    parent = link.get("link_index")
    return {
        "kind": info.get("info_kind"),
        "data": {k: data[k] for k in INFO_DATA if k in data},
        "parent": host_index_names().get(parent) if parent and "link_netnsid" in link else link.get("link"),
        "mtu": link.get("mtu"),
        "txqlen": link.get("txqlen"),  # `ip -j` leaves out a queue length of 0
        "up": "UP" in link.get("flags", []),
        "alias": link.get("ifalias", ""),
        "master": link.get("master"),
        "addresses": ks.addresses(link),
        "routes": ks.routes(ns),
        "sysctls": {k: sysctl(ns, k.format(**{"if": ifname})) for k in SYSCTLS},
    }


def sysctl(ns: NetNS | None, key: str) -> str:
    cmd = ["cat", "/proc/sys/" + key]
    proc = subprocess.run(["ip", "netns", "exec", ns.name, *cmd] if ns else cmd, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "missing"


def wait_for_dad(ns: NetNS, timeout: float = 5.0) -> None:
    """Until no IPv6 address in `ns` is tentative (a static address without a gateway is not waited for)."""
    deadline = time.monotonic() + timeout
    while ns.run("ip", "-6", "addr", "show", "tentative").stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.05)


def require_link_type(kind: str) -> None:
    """Skip a functional test where the kernel lacks the link type, with exactly that reason."""
    if not kernel_has(kind):
        pytest.skip(no_link_type(kind))


def parity_state(side: Attach, unannounced: tuple[str, ...] = ("ndisc_notify",)) -> dict[str, Any]:
    """The state compared with the reference's, without the sysctls by which Debian's 1.1.1
    and the current reference (which we follow) differ: 1.1.1's macvlan announces IPv4
    addresses only (arp_notify), the current one IPv6 ones too (ndisc_notify)."""
    out = link_state(side.ns, side.ifname)
    for key in unannounced:
        out["sysctls"].pop(f"net/ipv{4 if key == 'arp_notify' else 6}/conf/{{if}}/{key}")
    return out


def assert_same_as_reference(
    ours: Attach,
    ref: Attach,
    template: dict[str, Any],
    args: str = "",
    keep_mac: bool = False,
    unannounced: tuple[str, ...] = ("ndisc_notify",),
) -> None:
    """ADD with both: the same result (but generated MACs) and kernel state; DEL with both: nothing left."""
    results = []
    for side in (ours, ref):
        out = side.run("ADD", template, args)
        assert out.returncode == 0, (side.executable, out.stdout)
        results.append(out.json)
    assert comparable(ours, ref, normalize_result(results[0], ignore_macs=not keep_mac)) == normalize_result(
        results[1], ignore_macs=not keep_mac
    )
    assert results[0]["interfaces"][0]["mac"] == ours.ns.ip_json("link", "show", ours.ifname)[0]["address"]
    assert comparable(ours, ref, parity_state(ours, unannounced)) == parity_state(ref, unannounced)
    for side in (ours, ref):
        assert side.run("DEL", template, args).returncode == 0
        assert side.ifname not in side.names() and side.allocations() == []


def assert_fails_without_kernel_support(side: Attach, template: dict[str, Any], kind: str, reference: bool = False) -> None:
    """ADD fails (ours: code 101 naming the kernel support; the reference: "operation not
    supported") before IPAM allocates anything, leaving no interface; DEL succeeds."""
    out = side.run("ADD", template)
    assert out.returncode == 1, out.stdout
    if reference:
        assert "operation not supported" in out.json["msg"], out.json
    else:
        assert out.json["code"] == 101 and no_link_type(kind) in out.json["msg"], out.json
    assert side.ifname not in side.names()
    assert side.allocations() == [] and list(side.data_dir.glob("*/last_reserved_ip*")) == []  # IPAM never ran
    if reference:
        out = side.run("DEL", template)
        assert out.returncode == 0, out.stdout
    else:
        assert_del_is_idempotent(side, template)


def assert_del_is_idempotent(side: Attach, template: dict[str, Any]) -> None:
    """DEL twice, then with the namespace gone and with none: each succeeds, nothing is left."""
    for netns in (None, None, "/run/netns/pct-gone", ""):
        out = side.run("DEL", template, netns=netns)
        assert out.returncode == 0, out.stdout
    assert side.ifname not in side.names() and side.allocations() == []


def plugin_call(plugin: str, conf: dict[str, Any], netns: str = "/run/netns/pct-described") -> CmdArgs:
    """An ADD call of one of our plugins, parsed as skel does (for describing, not running)."""
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "pctdescribed", "CNI_NETNS": netns, "CNI_IFNAME": IFNAME}
    return skel.parse_call(plugin, skel.plugin_module(plugin), env, json.dumps(conf).encode())


def creation_request(link: Link) -> dict[str, Any]:
    """The RTM_NEWLINK attributes pyroute2 sends for `link` (as `pycni.net.links.create` asks):
    shows that the kind-specific keywords reach the kernel as the attributes they mean."""
    netlink.netlink_error()  # loads pyroute2 the way pycni does
    from pyroute2.iproute.linux import get_arguments_processor

    request = get_arguments_processor("link", "add", {"ifname": link.name, "kind": link.kind, **link.creation.create})
    return dict(request.items())
