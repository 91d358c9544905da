"""macvlan: the reference's result and kernel state for a table of configurations, traffic
between containers in each mode, the default-route master, linkInContainer, bcqueuelen,
CHECK, DEL, GC, STATUS, and a clear error (leaving nothing behind) for bad input."""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pycni import skel

from ...conftest import UPLINK, WAN_ADDRESS, WAN_ADDRESS6, NetNS, delete_link, run_plugin, unique
from . import kernel_state as ks
from .sides import subnet_pair
from .underlay import (
    IFNAME,
    Attach,
    assert_del_is_idempotent,
    assert_same_as_reference,
    conf_dual,
    conf_v4,
    link_state,
    variant,
    wait_for_dad,
)

Pair = Callable[..., tuple[Attach, Attach]]

V4 = conf_v4("macvlan", "pctmv", master="{master}")
DUAL = conf_dual("macvlan", "pctmv6", master="{master}", mode="private", mtu=1400)
MAC = "0a:58:0a:f4:00:09"


# name: (template, families, CNI_ARGS)
PARITY: dict[str, tuple[dict[str, Any], tuple[int, ...], str]] = {
    "IPv4, bridge mode": (V4, (4,), ""),
    "IPv4 + IPv6, private mode, mtu": (DUAL, (4, 6), ""),
    "vepa mode": (variant(V4, mode="vepa"), (4,), ""),
    "passthru mode": (variant(V4, mode="passthru"), (4,), ""),
    "layer 2 only (no IPAM)": (variant(V4, ipam={}), (4,), ""),
    "mac in the configuration": (variant(V4, mac=MAC), (4,), ""),
    "MAC from CNI_ARGS over the configuration's": (variant(V4, mac="0a:58:0a:f4:00:01"), (4,), f"IgnoreUnknown=1;MAC={MAC}"),
    "mac capability over CNI_ARGS": (variant(V4, runtimeConfig={"mac": MAC}), (4,), "IgnoreUnknown=1;MAC=0a:58:0a:f4:00:05"),
    "requested IP": (V4, (4,), "IgnoreUnknown=1;IP={addr77}"),
    "cniVersion 0.4.0": (variant(DUAL, cniVersion="0.4.0"), (4, 6), ""),
    "cniVersion 0.3.1": (variant(V4, cniVersion="0.3.1"), (4,), ""),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", list(PARITY))
def test_same_result_and_kernel_state_as_reference(case: str, underlay_pair: Pair) -> None:
    template, families, args = PARITY[case]
    ours, ref = underlay_pair("macvlan", families)
    keep_mac = "mac" in template or "runtimeConfig" in template or "MAC" in args
    assert_same_as_reference(ours, ref, template, args, keep_mac=keep_mac)


def test_addresses_are_announced(underlay_pair: Pair) -> None:
    """Gratuitous ARP and unsolicited neighbour advertisements when the interface comes up:
    its MAC is new to the network (the current reference sets both, Debian's 1.1.1 ARP only)."""
    ours, _ = underlay_pair("macvlan")
    for template, expected in ((V4, "1"), (variant(V4, ipam={}), "0")):
        assert ours.run("ADD", template).returncode == 0
        sysctls = link_state(ours.ns)["sysctls"]
        assert sysctls["net/ipv4/conf/{if}/arp_notify"] == sysctls["net/ipv6/conf/{if}/ndisc_notify"] == expected
        assert ours.run("DEL", template).returncode == 0


def _static(address: str, *more: str) -> dict[str, Any]:
    return {"type": "static", "addresses": [{"address": a} for a in (address, *more)]}


@pytest.mark.parametrize(
    ("mode", "hairpin_switch", "reach"),
    [
        ("bridge", False, True),
        ("private", False, False),
        ("vepa", False, False),
        ("vepa", True, True),
        ("private", True, False),
    ],
)
def test_containers_on_one_master_reach_each_other_as_the_mode_says(
    mode: str,
    hairpin_switch: bool,
    reach: bool,
    plugin_dir: Path,
    make_netns: Callable[[], NetNS],
    masters: Callable[..., str],
) -> None:
    """bridge mode switches between the macvlans of a master; private never lets them talk,
    even through a switch that sends frames back (hairpin); vepa only through such a switch."""
    master = masters()
    bridge = unique("pctbr")
    if hairpin_switch:
        peer = _peer_of(master)
        subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", peer, "master", bridge], check=True)
        subprocess.run(["ip", "link", "set", "dev", peer, "type", "bridge_slave", "hairpin", "on"], check=True)
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    v4 = ipaddress.ip_network(subnet_pair()[0])
    v6 = ipaddress.ip_network(subnet_pair(64, 6)[0])
    namespaces = [make_netns(), make_netns()]
    for ns in namespaces:  # no duplicate address detection: addresses are usable at once
        ns.run("sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
    try:
        for i, ns in enumerate(namespaces):
            conf = variant(V4, master=master, mode=mode, ipam=_static(f"{v4[10 + i]}/24", f"{v6[10 + i]}/64"))
            out = run_plugin(plugin_dir / "macvlan", "ADD", conf, netns=ns.path, ifname=IFNAME)
            assert out.returncode == 0, out.stdout
        for target in (str(v4[11]), str(v6[11])):
            ping = namespaces[0].run("ping", "-c", "1", "-W", "0.5" if not reach else "2", target, check=False)
            assert (ping.returncode == 0) == reach, (mode, target, ping.stdout)
        for ns in namespaces:
            conf = variant(V4, master=master, mode=mode, ipam={})
            assert run_plugin(plugin_dir / "macvlan", "DEL", conf, netns=ns.path, ifname=IFNAME).returncode == 0
    finally:
        delete_link(bridge)


def _peer_of(master: str) -> str:
    (link,) = ks.ip_json("link", "show", master)
    return str(link["link"])


def _uplink() -> dict[str, Any]:
    (link,) = ks.ip_json("addr", "show", UPLINK)
    defaults = [r for r in ks.routes(None) if r.get("dst") == "default"]
    return {"up": "UP" in link["flags"], "addresses": ks.addresses(link), "mtu": link["mtu"], "defaults": defaults}


@pytest.mark.reference
def test_without_master_the_default_route_interface_is_used(
    plugin_dir: Path, reference_dir: Path, make_netns: Callable[[], NetNS]
) -> None:
    """The stand-in host's default route goes out of uplink0: a macvlan on it reaches the router
    beyond it directly, for ours and the reference's, and uplink0 is as it was afterwards."""
    before = _uplink()
    host = 100 + secrets.randbelow(150)
    for i, directory in enumerate((plugin_dir, reference_dir)):
        ns = make_netns()
        conf = {
            "cniVersion": "1.0.0",
            "name": "pctmvwan",
            "type": "macvlan",
            "ipam": _static(f"198.51.100.{host + i}/24", f"2001:db8:ffff::{host + i:x}/64"),
        }
        out = run_plugin(directory / "macvlan", "ADD", conf, netns=ns.path, ifname=IFNAME)
        assert out.returncode == 0, (directory, out.stdout)
        wait_for_dad(ns)
        assert link_state(ns)["parent"] == UPLINK and link_state(ns)["data"]["mode"] == "bridge"
        for target in (WAN_ADDRESS, WAN_ADDRESS6):
            ping = ns.run("ping", "-c", "1", "-W", "3", target, check=False)
            assert ping.returncode == 0, (directory, target, ping.stdout, ping.stderr)
        assert run_plugin(directory / "macvlan", "DEL", conf, netns=ns.path, ifname=IFNAME).returncode == 0
        assert IFNAME not in {link["ifname"] for link in ns.ip_json("link")}
    assert _uplink() == before
    assert subprocess.run(["ping", "-c", "1", "-W", "2", WAN_ADDRESS], capture_output=True, check=False).returncode == 0


def test_master_in_the_container(plugin_dir: Path, netns: NetNS) -> None:
    """linkInContainer: the master, given or the container's default route interface, is the container's own."""
    netns.run("ip", "link", "add", "pctcm0", "type", "veth", "peer", "name", "pctcm1")
    for name in ("pctcm0", "pctcm1"):
        netns.run("ip", "link", "set", name, "up")
    netns.run("ip", "addr", "add", "192.0.2.2/24", "dev", "pctcm0")
    netns.run("ip", "route", "add", "default", "via", "192.0.2.1")
    for master in ({"master": "pctcm0"}, {}):
        conf = {"cniVersion": "1.0.0", "name": "pctmvin", "type": "macvlan", "linkInContainer": True, "mtu": 1300, **master}
        out = run_plugin(plugin_dir / "macvlan", "ADD", conf, netns=netns.path, ifname=IFNAME)
        assert out.returncode == 0, out.stdout
        current = link_state(netns)
        assert (current["kind"], current["parent"], current["mtu"], current["up"]) == ("macvlan", "pctcm0", 1300, True)
        check = run_plugin(plugin_dir / "macvlan", "CHECK", dict(conf, prevResult=out.json), netns=netns.path, ifname=IFNAME)
        assert check.returncode == 0, check.stdout
        assert run_plugin(plugin_dir / "macvlan", "DEL", conf, netns=netns.path, ifname=IFNAME).returncode == 0
        assert IFNAME not in {link["ifname"] for link in netns.ip_json("link")}


def test_bcqueuelen(underlay_pair: Pair) -> None:
    ours, _ = underlay_pair("macvlan")
    conf = variant(V4, bcqueuelen=4321)
    out = ours.run("ADD", conf)
    assert out.returncode == 0, out.stdout
    assert link_state(ours.ns)["data"]["bcqueuelen"] == 4321
    assert ours.run("DEL", conf).returncode == 0


@pytest.mark.reference
@pytest.mark.difference("check-whole-attachment")
def test_check_passes_reports_every_difference_and_interoperates(underlay_pair: Pair) -> None:
    ours, ref = underlay_pair("macvlan", (4, 6))
    conf = variant(DUAL, mode="bridge")
    result = ours.run("ADD", conf).json
    assert ours.run("CHECK", conf, prevResult=result).returncode == 0
    # The reference's CHECK accepts our attachment.
    reference_check = run_plugin(
        ref.executable, "CHECK", dict(ours.conf(conf), prevResult=result), netns=ours.ns.path,
        container_id=ours.container_id, ifname=IFNAME,
    )  # fmt: skip
    assert reference_check.returncode == 0, reference_check.stdout
    # What a later plugin may do is fine: tuning's new MAC (in the prevResult), another route.
    ours.ns.run("ip", "link", "set", IFNAME, "address", "0a:58:00:00:00:01")
    ours.ns.run("ip", "route", "add", "192.0.2.0/24", "dev", IFNAME)
    tuned = json.loads(json.dumps(result))
    tuned["interfaces"][0]["mac"] = "0a:58:00:00:00:01"
    assert ours.run("CHECK", conf, prevResult=tuned).returncode == 0
    ours.ns.run("ip", "link", "set", IFNAME, "type", "macvlan", "mode", "private")
    ours.ns.run("ip", "-6", "route", "del", "default")
    ours.ns.run("ip", "-4", "addr", "flush", "dev", IFNAME)
    bad = ours.run("CHECK", conf, prevResult=tuned)
    assert bad.returncode == 1 and bad.json["code"] == 100, bad.stdout
    msg = bad.json["msg"]
    assert "macvlan_mode is private, expected bridge" in msg and "does not have address" in msg and "route ::/0 via" in msg
    assert "has MAC" in ours.run("CHECK", conf, prevResult=result).json["msg"]
    missing = ours.run("CHECK", conf)
    assert missing.returncode == 1 and "prevResult" in missing.json["msg"]
    assert ours.run("DEL", conf).returncode == 0
    assert ours.run("CHECK", conf, prevResult=tuned).returncode == 1


@pytest.mark.difference("del-idempotent")
def test_del_is_idempotent(underlay_pair: Pair) -> None:
    ours, _ = underlay_pair("macvlan")
    assert ours.run("ADD", V4).returncode == 0
    assert_del_is_idempotent(ours, V4)
    # Neither the master nor a default route is needed to clean up.
    assert ours.run("ADD", V4).returncode == 0
    delete_link(ours.master)
    assert ours.run("DEL", variant(V4, master="")).returncode == 0
    assert IFNAME not in ours.names() and ours.allocations() == []


@pytest.mark.difference("del-idempotent")
def test_del_leaves_another_kind_of_interface_alone(underlay_pair: Pair) -> None:
    ours, _ = underlay_pair("macvlan")
    ours.ns.run("ip", "link", "add", IFNAME, "type", "veth", "peer", "name", "other0")
    assert ours.run("DEL", V4).returncode == 0
    assert IFNAME in ours.names()


@pytest.mark.difference("gc-status")
def test_gc_and_status_reach_ipam(underlay_pair: Pair) -> None:
    ours, _ = underlay_pair("macvlan")
    conf = variant(V4, cniVersion="1.1.0")
    assert ours.run("ADD", conf).returncode == 0
    valid = [{"containerID": ours.container_id, "ifname": IFNAME}]
    assert ours.run("GC", conf, **{"cni.dev/valid-attachments": valid}).returncode == 0
    assert len(ours.allocations()) == 1
    assert ours.run("GC", conf, **{"cni.dev/valid-attachments": []}).returncode == 0
    assert ours.allocations() == []
    assert ours.run("STATUS", conf).returncode == 0
    one_address = [[{"subnet": "{subnet0}", "rangeStart": "{addr9}", "rangeEnd": "{addr9}"}]]
    full = variant(conf, ipam={"type": "host-local", "ranges": one_address})
    other = Attach(ours.executable, ours.ns, ours.master, ours.subnets, ours.data_dir, ours.container_id + "x", "net2")
    assert other.run("ADD", full).returncode == 0
    status = ours.run("STATUS", full)
    assert status.returncode == 1 and status.json["code"] == 50, status.stdout
    assert other.run("DEL", full).returncode == 0
    assert ours.run("DEL", conf).returncode == 0


@pytest.mark.parametrize(
    ("changes", "args", "code", "fragment"),
    [
        ({"mode": "bridged"}, "", 7, "unknown macvlan \"mode\" 'bridged'"),
        ({"mtu": 9000}, "", 7, 'invalid "mtu" 9000: must be between 0 and the MTU of master'),
        ({"mtu": -1}, "", 7, "'mtu'"),
        ({"master": "pct-nomaster"}, "", 7, "master 'pct-nomaster' does not exist in the host"),
        ({"mac": "0a:58"}, "", 7, "invalid MAC address '0a:58' in \"mac\""),
        ({"runtimeConfig": {"mac": "zz:zz"}}, "", 7, "invalid MAC address 'zz:zz' in runtimeConfig.mac"),
        ({}, "MAC=nope", 4, "invalid MAC address 'nope' in CNI_ARGS MAC"),
        ({}, "IP=10.0.0.1", 4, "unknown key 'IP'"),
        ({"bcqueuelen": -5}, "", 7, "'bcqueuelen'"),
        ({"linkInContainer": True, "master": ""}, "", 7, "the container"),
        ({"ipam": {"type": "pct-nothere"}}, "", 7, "pct-nothere"),
        ({"ipam": dict(V4["ipam"], routes=[{"dst": "192.0.2.0/24", "gw": "198.18.7.1"}])}, "", 100, "192.0.2.0/24"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error_and_leaves_nothing(
    underlay_pair: Pair, changes: dict[str, Any], args: str, code: int, fragment: str
) -> None:
    ours, _ = underlay_pair("macvlan")
    out = ours.run("ADD", variant(V4, **changes), args)
    assert out.returncode == 1, out.stdout
    assert out.json["code"] == code and fragment in out.json["msg"], out.json
    assert IFNAME not in ours.names() and ours.allocations() == []


def test_existing_container_interface_is_left_untouched(underlay_pair: Pair) -> None:
    ours, _ = underlay_pair("macvlan")
    ours.ns.run("ip", "link", "add", IFNAME, "type", "veth", "peer", "name", "other0")
    out = ours.run("ADD", V4)
    assert out.returncode == 1 and out.json["code"] == 102 and f"'{IFNAME}' already exists" in out.json["msg"], out.stdout
    assert ours.allocations() == [] and link_state(ours.ns)["kind"] == "veth"


def test_add_to_a_missing_namespace_allocates_nothing(underlay_pair: Pair) -> None:
    ours, _ = underlay_pair("macvlan")
    out = ours.run("ADD", V4, netns="/run/netns/pct-missing")
    assert out.returncode == 1 and out.json["code"] == 4 and "does not exist" in out.json["msg"], out.stdout
    assert ours.allocations() == []


def test_concurrent_calls_in_one_process(underlay_pair: Pair, make_netns: Callable[[], NetNS]) -> None:
    """As in the resident agent: macvlans (with bcqueuelen) and taps added and deleted on threads of one process."""
    ours, _ = underlay_pair("macvlan")
    namespaces = [make_netns() for _ in range(6)]
    confs = {"macvlan": ours.conf(variant(V4, bcqueuelen=2000)), "tap": {"cniVersion": "1.0.0", "name": "pcttap", "type": "tap"}}

    def call(command: str, i: int) -> skel.Outcome:
        plugin = "macvlan" if i % 2 else "tap"
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"pcttc{i}",
            "CNI_NETNS": namespaces[i].path,
            "CNI_IFNAME": IFNAME,
            "CNI_PATH": str(ours.executable.parent),
        }
        return skel.dispatch(plugin, env, json.dumps(confs[plugin]).encode())

    with ThreadPoolExecutor(max_workers=6) as pool:
        added = list(pool.map(lambda i: call("ADD", i), range(6)))
        assert all(o.code == 0 for o in added), [o.stdout for o in added if o.code]
        assert [link_state(ns)["kind"] for ns in namespaces] == ["tun", "macvlan"] * 3
        assert len({json.loads(o.stdout)["ips"][0]["address"] for o in added[1::2]}) == 3
        deleted = list(pool.map(lambda i: call("DEL", i), range(6)))
        assert all(o.code == 0 for o in deleted), [o.stdout for o in deleted if o.code]
    assert all(IFNAME not in {link["ifname"] for link in ns.ip_json("link")} for ns in namespaces)
    assert ours.allocations() == []
