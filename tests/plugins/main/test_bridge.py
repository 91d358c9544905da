"""bridge: the reference's result and kernel state for a table of configurations, real traffic,
CHECK, DEL, GC, and a clear error (leaving nothing behind) for every kind of bad input."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pycni import skel
from pycni.net import ipmasq, nft
from pycni.plugins.main import bridge
from pycni.spec.result import IPConfig, Result

from ...conftest import NetNS, delete_link, normalize_result, run_plugin, unique
from . import kernel_state as ks
from .sides import Side, comparable, prefix_text, subnet_pair


def state(side: Side) -> dict[str, Any]:
    return {"container": ks.container(side.ns), "bridge": ks.bridge(side.bridge), "ports": ks.ports(side.bridge)}


KERNEL_NO_VLAN_FILTERING = "this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)"


SEED = {
    "cniVersion": "1.0.0",
    "name": "mynet",
    "type": "bridge",
    "isGateway": True,
    "ipMasq": True,
    "ipam": {"type": "host-local", "subnet": "{subnet0}", "routes": [{"dst": "0.0.0.0/0"}]},
}
DUAL = {
    "cniVersion": "1.0.0",
    "name": "pctdual",
    "type": "bridge",
    "isGateway": True,
    "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "{subnet0}"}], [{"subnet": "{subnet1}"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
    },
}


def variant(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return dict(json.loads(json.dumps(base)), **changes)


# name: (template, families, prefix length, CNI_ARGS)
PARITY: dict[str, tuple[dict[str, Any], tuple[int, ...], int, str]] = {
    "seed bridge.conf": (SEED, (4,), 16, ""),
    "isDefaultGateway": (
        variant(SEED, isDefaultGateway=True, ipMasq=False, ipam={"type": "host-local", "subnet": "{subnet0}"}),
        (4,),
        24,
        "",
    ),
    "ipMasq without gateway": (variant(SEED, isGateway=False), (4,), 24, ""),
    "hairpinMode": (variant(SEED, hairpinMode=True), (4,), 24, ""),
    "promiscMode": (variant(SEED, promiscMode=True), (4,), 24, ""),
    "mtu": (variant(SEED, mtu=1400), (4,), 24, ""),
    "IPv4 + IPv6 range sets": (DUAL, (4, 6), 24, ""),
    "IPv4 + IPv6, isDefaultGateway": (variant(DUAL, isDefaultGateway=True, ipam=dict(DUAL["ipam"], routes=[])), (4, 6), 24, ""),
    "enabledad": (variant(DUAL, enabledad=True), (4, 6), 24, ""),
    "requested IP": (SEED, (4,), 24, "IgnoreUnknown=1;IP={addr77}"),
    "MAC from CNI_ARGS": (SEED, (4,), 24, "IgnoreUnknown=1;MAC=0a:58:0a:f4:00:09"),
    "MAC from args and runtimeConfig": (
        variant(SEED, args={"cni": {"mac": "0a:58:0a:f4:00:07"}}, runtimeConfig={"mac": "0a:58:0a:f4:00:09"}),
        (4,),
        24,
        "",
    ),
    "L2 only": (variant(SEED, isGateway=False, ipMasq=False, ipam={}), (4,), 24, ""),
    "cniVersion 0.4.0": (variant(DUAL, cniVersion="0.4.0"), (4, 6), 24, ""),
    "cniVersion 0.3.1": (variant(SEED, cniVersion="0.3.1"), (4,), 24, ""),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", list(PARITY))
def test_same_result_and_kernel_state_as_reference(case: str, sides: Callable[..., tuple[Side, Side]]) -> None:
    template, families, prefixlen, args = PARITY[case]
    ours, ref = sides(families, prefixlen)
    runs = {}
    for side in (ours, ref):
        runs[id(side)] = side.run("ADD", template, args)
        assert runs[id(side)].returncode == 0, (side.executable, runs[id(side)].stdout)
    ours_result, ref_result = runs[id(ours)].json, runs[id(ref)].json
    assert ours_result["interfaces"][1]["name"].startswith("veth")
    if "MAC" in args or "runtimeConfig" in template:
        assert ours_result["interfaces"][2]["mac"] == ref_result["interfaces"][2]["mac"] == "0a:58:0a:f4:00:09"
    assert comparable(ours, ref, normalize_result(ours_result)) == normalize_result(ref_result)
    assert comparable(ours, ref, state(ours)) == state(ref)
    for side in (ours, ref):
        assert side.run("DEL", template, args).returncode == 0
    assert comparable(ours, ref, state(ours)) == state(ref)
    assert state(ours)["ports"] == [] and state(ours)["container"]["addresses"] == []


def test_seed_config_result(sides: Callable[..., tuple[Side, Side]]) -> None:
    """The walkthrough's numbers: the first container gets .2, the bridge is the gateway .1."""
    ours, _ = sides((4,), 16)
    out = ours.run("ADD", SEED)
    assert out.returncode == 0, out.stdout
    result = out.json
    first = ipaddress.ip_network(ours.subnets[0])
    assert [i["name"] for i in result["interfaces"]][::2] == [ours.bridge, "eth0"]
    assert result["interfaces"][2]["sandbox"] == ours.ns.path
    assert result["ips"] == [{"interface": 2, "address": f"{first[2]}/16", "gateway": str(first[1])}]
    assert result["routes"] == [{"dst": "0.0.0.0/0"}] and result["dns"] == {}
    assert ks.bridge(ours.bridge)["addresses"] == [f"{first[1]}/16"]
    assert ours.run("DEL", SEED).returncode == 0


def test_two_containers_reach_each_other_and_the_gateway(
    plugin_dir: Path, make_netns: Callable[[], NetNS], tmp_path: Path
) -> None:
    bridge = unique("pctbr")
    subnet = subnet_pair()[0]
    gateway = str(ipaddress.ip_network(subnet)[1])
    conf = {**SEED, "bridge": bridge, "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(tmp_path)}}
    a, b = make_netns(), make_netns()
    try:
        ra = run_plugin(plugin_dir / "bridge", "ADD", conf, netns=a.path, container_id="pcta")
        rb = run_plugin(plugin_dir / "bridge", "ADD", conf, netns=b.path, container_id="pctb")
        assert ra.returncode == rb.returncode == 0, ra.stdout + rb.stdout
        addr_b = rb.json["ips"][0]["address"].split("/")[0]
        for ns, target in ((a, gateway), (a, addr_b), (b, ra.json["ips"][0]["address"].split("/")[0])):
            ping = ns.run("ping", "-c", "1", "-W", "2", target, check=False)
            assert ping.returncode == 0, ping.stdout + ping.stderr
        for ns, cid in ((a, "pcta"), (b, "pctb")):
            assert run_plugin(plugin_dir / "bridge", "DEL", conf, netns=ns.path, container_id=cid).returncode == 0
    finally:
        delete_link(bridge)


@pytest.mark.reference
@pytest.mark.parametrize("implementation", ["ours", "reference"])
def test_ipmasq_masquerades_traffic_leaving_the_subnet(
    implementation: str, sides: Callable[..., tuple[Side, Side]], outside: tuple[NetNS, str, str]
) -> None:
    """The outside namespace has no route back to the containers: a reply arrives only if the
    host rewrote the source to its own address (conntrack shows it)."""
    ours, ref = sides()
    side = ours if implementation == "ours" else ref
    _far_ns, host_ip, far_ip = outside
    out = side.run("ADD", SEED)
    assert out.returncode == 0, out.stdout
    container_ip = out.json["ips"][0]["address"].split("/")[0]
    ping = side.ns.run("ping", "-c", "1", "-W", "2", far_ip, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    flows = subprocess.run(
        ["conntrack", "-L", "-p", "icmp", "-s", container_ip, "-d", far_ip], capture_output=True, text=True, check=True
    ).stdout
    assert f"src={far_ip} dst={host_ip}" in flows, flows
    assert side.run("DEL", SEED).returncode == 0


@pytest.mark.difference("ipmasq-nftables")
def test_ipmasq_rules_are_per_attachment_and_go_on_del(sides: Callable[..., tuple[Side, Side]]) -> None:
    ours, _ = sides()
    assert ours.run("ADD", SEED).returncode == 0
    mine = ipmasq.instance_hash("mynet", "eth0", ours.container_id)
    rules = [o["rule"] for o in nft.list_objects(f"chain inet {ipmasq.TABLE} {ipmasq.CHAIN}") if "rule" in o]
    assert len([r for r in rules if r.get("comment", "").startswith(mine)]) == 1
    ours.ns.run("ip", "link", "del", "eth0")  # even without its interface, DEL finds the rules
    assert ours.run("DEL", SEED).returncode == 0
    rules = [o["rule"] for o in nft.list_objects(f"chain inet {ipmasq.TABLE} {ipmasq.CHAIN}") if "rule" in o]
    assert not [r for r in rules if r.get("comment", "").startswith(mine)]


@pytest.mark.difference("gc-status")
def test_gc_removes_stale_ipmasq_rules_and_addresses(sides: Callable[..., tuple[Side, Side]]) -> None:
    ours, _ = sides()
    conf = variant(SEED, cniVersion="1.1.0", name=unique("pctgc"))
    assert ours.run("ADD", conf).returncode == 0
    prefix = ipmasq.network_hash(conf["name"])

    def rules() -> list[dict[str, Any]]:
        listed = nft.list_objects(f"chain inet {ipmasq.TABLE} {ipmasq.CHAIN}")
        return [o["rule"] for o in listed if "rule" in o and o["rule"].get("comment", "").startswith(prefix)]

    valid = [{"containerID": ours.container_id, "ifname": "eth0"}]
    assert ours.run("GC", conf, **{"cni.dev/valid-attachments": valid}).returncode == 0
    assert len(rules()) == 1 and len(list((ours.data_dir / conf["name"]).glob("10.*"))) == 1
    assert ours.run("GC", conf, **{"cni.dev/valid-attachments": []}).returncode == 0
    assert rules() == [] and list((ours.data_dir / conf["name"]).glob("10.*")) == []
    assert ours.run("DEL", conf).returncode == 0


@pytest.mark.difference("check-whole-attachment")
def test_check_passes_and_reports_every_difference(sides: Callable[..., tuple[Side, Side]]) -> None:
    ours, _ = sides((4, 6))
    conf = variant(DUAL, ipMasq=True)
    result = ours.run("ADD", conf).json
    assert ours.run("CHECK", conf, prevResult=result).returncode == 0
    # What later plugins may do is fine: tuning's new MAC (recorded in the prevResult), an extra route.
    ours.ns.run("ip", "link", "set", "eth0", "address", "0a:58:00:00:00:01")
    ours.ns.run("ip", "route", "add", "192.0.2.0/24", "dev", "eth0")
    tuned = json.loads(json.dumps(result))
    tuned["interfaces"][2]["mac"] = "0a:58:00:00:00:01"
    assert ours.run("CHECK", conf, prevResult=tuned).returncode == 0
    ours.ns.run("ip", "-6", "route", "del", "default")
    ours.ns.run("ip", "addr", "flush", "dev", "eth0", "scope", "global", "to", prefix_text(ours.subnets[0]) + "0/24")
    bad = ours.run("CHECK", conf, prevResult=tuned)
    assert bad.returncode == 1 and bad.json["code"] == 100
    msg = bad.json["msg"]
    assert "does not have address" in msg and "route ::/0 via" in msg and "ipMasq rule for" not in msg
    assert ours.run("CHECK", conf, prevResult=result).json["msg"].count("has MAC") == 1
    assert ours.run("DEL", conf).returncode == 0
    assert "Failed to find address added by container" in ours.run("CHECK", conf, prevResult=tuned).json["msg"]


@pytest.mark.difference("del-idempotent")
def test_del_is_idempotent(sides: Callable[..., tuple[Side, Side]], tmp_path: Path) -> None:
    ours, _ = sides()
    assert ours.run("ADD", SEED).returncode == 0
    for _ in range(2):
        assert ours.run("DEL", SEED).returncode == 0
    gone = run_plugin(ours.executable, "DEL", ours.conf(SEED), netns="/run/netns/pct-gone", container_id=ours.container_id)
    assert gone.returncode == 0, gone.stdout
    no_netns = run_plugin(ours.executable, "DEL", ours.conf(SEED), netns="", container_id=ours.container_id)
    assert no_netns.returncode == 0, no_netns.stdout


def test_port_isolation_and_disabled_container_interface(sides: Callable[..., tuple[Side, Side]]) -> None:
    ours, _ = sides()
    conf = {"cniVersion": "1.0.0", "name": "pctl2", "type": "bridge", "portIsolation": True, "disableContainerInterface": True}
    out = ours.run("ADD", conf)
    assert out.returncode == 0, out.stdout
    (port,) = ks.ports(ours.bridge)
    assert port["flags"]["isolated"] is True
    assert ks.container(ours.ns)["up"] is False
    assert ours.run("CHECK", conf, prevResult=out.json).returncode == 0
    assert ours.run("DEL", conf).returncode == 0


def test_macspoofchk_drops_frames_with_another_source_mac(sides: Callable[..., tuple[Side, Side]]) -> None:
    ours, _ = sides()
    conf = variant(SEED, macspoofchk=True, ipMasq=False)
    out = ours.run("ADD", conf)
    assert out.returncode == 0, out.stdout
    gateway = out.json["ips"][0]["gateway"]
    assert ours.ns.run("ping", "-c", "1", "-W", "2", gateway, check=False).returncode == 0
    assert ours.run("CHECK", conf, prevResult=out.json).returncode == 0
    ours.ns.run("ip", "neigh", "flush", "all")
    ours.ns.run("ip", "link", "set", "eth0", "address", "0a:58:00:00:00:02")
    assert ours.ns.run("ping", "-c", "1", "-W", "1", gateway, check=False).returncode != 0
    chain = f"cni-br-iface-{ours.container_id}-eth0"
    assert nft.list_objects(f"chain bridge nat {chain}")
    assert ours.run("DEL", conf).returncode == 0
    assert nft.list_objects(f"chain bridge nat {chain}") == []


@pytest.mark.reference
def test_vlan_needs_bridge_vlan_filtering(sides: Callable[..., tuple[Side, Side]]) -> None:
    """The reference fails too on this kernel (code 999, "operation not supported"); ours names
    the missing kernel feature, and neither leaves anything behind."""
    ours, ref = sides()
    ref_out = ref.run("ADD", variant(SEED, vlan=100))
    assert ref_out.returncode == 1 and "operation not supported" in ref_out.json["msg"]
    for extra in ({"vlan": 100}, {"vlanTrunk": [{"minID": 10, "maxID": 12}], "preserveDefaultVlan": False}):
        conf = variant(SEED, **extra)
        out = ours.run("ADD", conf)
        assert out.returncode == 1 and out.json["code"] == 101, out.stdout
        assert "CONFIG_BRIDGE_VLAN_FILTERING" in out.json["msg"]
        assert ks.ports(ours.bridge) == []
        assert list(ours.data_dir.glob("mynet/10.*")) == []
        assert "eth0" not in {link["ifname"] for link in ours.ns.ip_json("link")}
        assert ours.run("DEL", conf).returncode == 0


def test_vlan_traffic(sides: Callable[..., tuple[Side, Side]]) -> None:
    ours, _ = sides()
    out = ours.run("ADD", variant(SEED, vlan=100))
    if out.returncode and out.json.get("code") == 101:
        pytest.skip(KERNEL_NO_VLAN_FILTERING)
    raise AssertionError("VLAN filtering is available: extend this test with traffic checks")


@pytest.mark.parametrize(
    ("changes", "args", "code", "fragment"),
    [
        ({"hairpinMode": True, "promiscMode": True}, "", 7, "cannot set hairpin mode and promiscuous mode"),
        ({"vlan": 5000}, "", 7, "'vlan'"),
        ({"vlan": 10, "vlanTrunk": [{"id": 11}]}, "", 7, "cannot set vlan and vlanTrunk"),
        ({"vlanTrunk": [{"minID": 5}]}, "", 7, "maxID is missing"),
        ({"vlanTrunk": [{"minID": 9, "maxID": 5}]}, "", 7, "greater than maxID"),
        ({"disableContainerInterface": True}, "", 7, "cannot use IPAM when disableContainerInterface"),
        ({"mtu": "big"}, "", 7, "'mtu'"),
        ({"bridge": "a-bridge-name-too-long"}, "", 7, 'invalid "bridge": interface name'),
        ({"runtimeConfig": {"mac": "zz:zz"}}, "", 7, "invalid MAC address 'zz:zz' in runtimeConfig.mac"),
        ({}, "MAC=nope", 4, "invalid MAC address 'nope' in CNI_ARGS MAC"),
        ({}, "IP=10.0.0.1", 4, "unknown key 'IP'"),
        ({"ipam": {"type": "host-local", "subnet": "10.250.0.0/31"}}, "", 7, "too small"),
        ({"ipam": {"type": "nothere"}}, "", 7, "nothere"),
    ],
)
@pytest.mark.difference("error-codes")
def test_bad_input_is_a_clear_error_and_leaves_nothing(
    sides: Callable[..., tuple[Side, Side]], changes: dict[str, Any], args: str, code: int, fragment: str
) -> None:
    ours, _ = sides()
    template = variant(SEED, **changes)
    conf = ours.conf(template)
    if "bridge" in changes:
        conf["bridge"] = changes["bridge"]
    out = run_plugin(ours.executable, "ADD", conf, netns=ours.ns.path, container_id=ours.container_id, cni_args=args)
    assert out.returncode == 1, out.stdout
    assert fragment in out.json["msg"] and out.json["code"] == code, out.json
    assert "eth0" not in {link["ifname"] for link in ours.ns.ip_json("link")}
    assert list(ours.data_dir.glob("*/10.*")) == []


def test_existing_container_interface_is_left_untouched(sides: Callable[..., tuple[Side, Side]]) -> None:
    ours, _ = sides()
    ours.ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    out = ours.run("ADD", SEED)
    assert out.returncode == 1 and out.json["code"] == 102 and "'eth0' already exists" in out.json["msg"]
    assert list(ours.data_dir.glob("mynet/10.*")) == [] and ks.ports(ours.bridge) == []
    assert "eth0" in {link["ifname"] for link in ours.ns.ip_json("link")}


def test_existing_non_bridge_link_is_refused(sides: Callable[..., tuple[Side, Side]]) -> None:
    ours, _ = sides()
    subprocess.run(["ip", "link", "add", ours.bridge, "type", "veth", "peer", "name", ours.bridge[:-1] + "p"], check=True)
    out = ours.run("ADD", SEED)
    assert out.returncode == 1 and out.json["code"] == 102 and "is not a bridge" in out.json["msg"]
    assert list(ours.data_dir.glob("mynet/10.*")) == []


def test_force_address_replaces_a_conflicting_gateway(sides: Callable[..., tuple[Side, Side]]) -> None:
    ours, _ = sides()
    subprocess.run(["ip", "link", "add", ours.bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "192.0.2.1/24", "dev", ours.bridge], check=True)
    refused = ours.run("ADD", SEED)
    assert refused.returncode == 1 and "already has an IP address different from" in refused.json["msg"]
    assert "eth0" not in {link["ifname"] for link in ours.ns.ip_json("link")}
    forced = ours.run("ADD", variant(SEED, forceAddress=True))
    assert forced.returncode == 0, forced.stdout
    prefixlen = forced.json["ips"][0]["address"].split("/")[1]
    assert ks.bridge(ours.bridge)["addresses"] == [f"{forced.json['ips'][0]['gateway']}/{prefixlen}"]
    assert ours.run("DEL", SEED).returncode == 0


@pytest.mark.difference("gc-status")
def test_status_forwards_to_ipam(sides: Callable[..., tuple[Side, Side]]) -> None:
    ours, _ = sides()
    conf = variant(SEED, cniVersion="1.1.0", ipam={"type": "host-local", "subnet": "{subnet0}"})
    assert ours.run("STATUS", conf).returncode == 0
    full = variant(
        conf, ipam={"type": "host-local", "ranges": [[{"subnet": "{subnet0}", "rangeStart": "{addr9}", "rangeEnd": "{addr9}"}]]}
    )
    assert ours.run("ADD", full).returncode == 0
    status = ours.run("STATUS", full)
    assert status.returncode == 1 and status.json["code"] == 50
    assert ours.run("DEL", full).returncode == 0


def test_concurrent_adds_share_one_new_bridge(sides: Callable[..., tuple[Side, Side]], make_netns: Callable[[], NetNS]) -> None:
    """Eight containers at once on a bridge that does not exist yet: one creates it, all use it."""
    ours, _ = sides()
    namespaces = [make_netns() for _ in range(8)]
    conf = ours.conf(SEED)

    def add(i: int) -> Any:
        return run_plugin(ours.executable, "ADD", conf, netns=namespaces[i].path, container_id=f"pctcc{i}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        runs = list(pool.map(add, range(8)))
    assert all(r.returncode == 0 for r in runs), [r.stdout for r in runs if r.returncode]
    assert len({r.json["ips"][0]["address"] for r in runs}) == 8
    assert len(ks.ports(ours.bridge)) == 8
    for ns in namespaces[:2]:
        assert ns.run("ping", "-c", "1", "-W", "2", runs[7].json["ips"][0]["gateway"], check=False).returncode == 0
    for i, ns in enumerate(namespaces):
        assert run_plugin(ours.executable, "DEL", conf, netns=ns.path, container_id=f"pctcc{i}").returncode == 0
    assert ks.ports(ours.bridge) == []


def test_concurrent_calls_in_one_process(sides: Callable[..., tuple[Side, Side]], make_netns: Callable[[], NetNS]) -> None:
    """As in the resident agent: ADD and DEL of several containers on threads of one process."""
    ours, _ = sides()
    namespaces = [make_netns() for _ in range(6)]
    stdin = json.dumps(ours.conf(SEED)).encode()

    def call(command: str, i: int) -> skel.Outcome:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"pcttc{i}",
            "CNI_NETNS": namespaces[i].path,
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(ours.executable.parent),
        }
        return skel.dispatch("bridge", env, stdin)

    with ThreadPoolExecutor(max_workers=6) as pool:
        added = list(pool.map(lambda i: call("ADD", i), range(6)))
        assert all(o.code == 0 for o in added), [o.stdout for o in added if o.code]
        deleted = list(pool.map(lambda i: call("DEL", i), range(6)))
        assert all(o.code == 0 for o in deleted), [o.stdout for o in deleted if o.code]
    assert ks.ports(ours.bridge) == [] and list(ours.data_dir.glob("mynet/10.*")) == []


def test_gc_removes_macspoofchk_of_containers_that_are_gone(
    sides: Callable[..., tuple[Side, Side]], make_netns: Callable[[], NetNS]
) -> None:
    ours, _ = sides()
    conf = variant(SEED, cniVersion="1.1.0", macspoofchk=True, ipMasq=False)
    assert ours.run("ADD", conf).returncode == 0
    gone = Side(ours.executable, make_netns(), ours.bridge, ours.subnets, ours.data_dir, ours.container_id + "x")
    assert gone.run("ADD", conf).returncode == 0
    subprocess.run(["ip", "netns", "del", gone.ns.name], check=True)  # its veth goes with it
    valid = [{"containerID": ours.container_id, "ifname": "eth0"}]
    assert ours.run("GC", conf, **{"cni.dev/valid-attachments": valid}).returncode == 0
    assert nft.list_objects(f"chain bridge nat cni-br-iface-{gone.container_id}-eth0") == []
    assert nft.list_objects(f"chain bridge nat cni-br-iface-{ours.container_id}-eth0")
    assert ours.run("GC", conf, **{"cni.dev/valid-attachments": []}).returncode == 0  # its veth is still there
    assert nft.list_objects(f"chain bridge nat cni-br-iface-{ours.container_id}-eth0")
    assert ours.run("DEL", conf).returncode == 0
    assert nft.list_objects(f"chain bridge nat cni-br-iface-{ours.container_id}-eth0") == []


def test_vlan_gateway_is_described_as_the_reference_builds_it() -> None:
    """The kernel here cannot show it; the description is what a kernel with VLAN filtering gets."""
    stdin = json.dumps(variant(SEED, vlan=100, preserveDefaultVlan=False, bridge="pctbrv")).encode()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0"}
    call = skel.parse_call("bridge", bridge, env, stdin)
    conf = bridge.load_conf(call)
    result = Result(ips=[IPConfig(address=ipaddress.ip_interface("10.22.0.2/16"))])
    parts = bridge.describe(conf, call, result)
    assert parts.bridge.creation.create == {"br_vlan_filtering": 1}
    assert parts.host.port is not None
    assert parts.host.port.vlans == [(100, True, True)] and parts.host.port.drop_default_vlan
    gateway = parts.vlan_gateway
    assert gateway is not None and gateway.name == "pctbrv.100" and gateway.shared
    assert gateway.peer is not None and gateway.peer.port is not None and gateway.peer.master is parts.bridge
    assert gateway.peer.port.vlans == [(100, True, True)]
    addresses = [(a.link.name, str(a.address)) for a in parts.att.addresses if a.link.ns is None]
    assert addresses == [("pctbrv.100", "10.22.0.1/16")]


def test_a_late_failure_rolls_everything_back(sides: Callable[..., tuple[Side, Side]]) -> None:
    """A route the kernel refuses fails ADD after the veth, addresses and bridge address exist."""
    ours, _ = sides()
    conf = variant(
        SEED, ipam={"type": "host-local", "subnet": "{subnet0}", "routes": [{"dst": "192.0.2.0/24", "gw": "198.51.100.1"}]}
    )
    out = ours.run("ADD", conf)
    assert out.returncode == 1 and out.json["code"] == 100 and "192.0.2.0/24" in out.json["msg"], out.stdout
    assert "eth0" not in {link["ifname"] for link in ours.ns.ip_json("link")}
    assert ks.ports(ours.bridge) == [] and list(ours.data_dir.glob("mynet/10.*")) == []
    mine = ipmasq.instance_hash("mynet", "eth0", ours.container_id)
    rules = [o["rule"] for o in nft.list_objects(f"chain inet {ipmasq.TABLE} {ipmasq.CHAIN}") if "rule" in o]
    assert not [r for r in rules if r.get("comment", "").startswith(mine)]


def test_add_to_a_missing_namespace_allocates_nothing(sides: Callable[..., tuple[Side, Side]]) -> None:
    ours, _ = sides()
    out = run_plugin(ours.executable, "ADD", ours.conf(SEED), netns="/run/netns/pct-missing", container_id="x")
    assert out.returncode == 1 and out.json["code"] == 4 and "does not exist" in out.json["msg"]
    assert not (ours.data_dir / "mynet").exists()


@pytest.mark.reference
@pytest.mark.difference("bridge-ipam-dns")
def test_ipam_dns_is_returned_when_the_bridge_has_none(sides: Callable[..., tuple[Side, Side]]) -> None:
    """Upstream v1.2.0 and later return the IPAM plugin's DNS; Debian's 1.1.1 drops it."""
    dns = {"nameservers": ["10.53.0.53"], "domain": "example.test", "search": ["a.test"], "options": ["ndots:2"]}
    template = {
        "cniVersion": "1.0.0",
        "name": "dnsnet",
        "type": "bridge",
        "ipam": {"type": "static", "addresses": [{"address": "{prefix0}7/24"}], "dns": dns},
    }
    ours, ref = sides()
    results = [side.run("ADD", template) for side in (ours, ref)]
    assert all(r.returncode == 0 for r in results), [r.stdout for r in results]
    assert results[0].json["dns"] == dns
    assert results[1].json.get("dns", {}) == {}
    with_own = dict(template, dns={"nameservers": ["10.99.0.1"]})  # the bridge's own dns wins in both
    for side in (ours, ref):
        assert side.run("DEL", template).returncode == 0
        out = side.run("ADD", with_own)
        assert out.returncode == 0 and out.json["dns"] == {"nameservers": ["10.99.0.1"]}, out.stdout
        assert side.run("DEL", with_own).returncode == 0
