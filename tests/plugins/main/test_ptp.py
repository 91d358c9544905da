"""ptp: the reference's result and kernel state, traffic routed through the host, CHECK, DEL, GC."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from pycni.net import ipmasq, nft

from ...conftest import NetNS, normalize_result
from . import kernel_state as ks
from .sides import Side, comparable

Sides = Callable[..., tuple[Side, Side]]

V4 = {
    "cniVersion": "1.0.0",
    "name": "pctptp",
    "type": "ptp",
    "ipMasq": True,
    "ipam": {"type": "host-local", "subnet": "{subnet0}", "routes": [{"dst": "0.0.0.0/0"}]},
}
DUAL = {
    "cniVersion": "1.0.0",
    "name": "pctptp6",
    "type": "ptp",
    "mtu": 1400,
    "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "{subnet0}"}], [{"subnet": "{subnet1}"}]],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
    },
}
PARITY: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "IPv4, ipMasq": (V4, (4,)),
    "IPv4 + IPv6, mtu": (DUAL, (4, 6)),
    "cniVersion 0.4.0": (dict(V4, cniVersion="0.4.0"), (4,)),
}


def host_veth(result: dict[str, Any]) -> str:
    return str(result["interfaces"][0]["name"])


def state(side: Side, result: dict[str, Any]) -> dict[str, Any]:
    """The container, its host veth, and every route through either, in every table (the local
    table holds the routes of the addresses), once duplicate address detection is over."""
    ks.settled(None, host_veth(result))
    ks.settled(side.ns, "eth0")
    container = ks.container(side.ns)
    # Ours adds the container addresses with noprefixroute rather than deleting the prefix
    # route afterwards: `ip addr` shows the flag, the routing table is the same.
    return {
        "container": container,
        "container_routes": ks.routes(side.ns, table="all"),
        "host": ks.host_veth(host_veth(result)),
        "host_routes": ks.routes(None, host_veth(result), table="all"),
    }


@pytest.mark.reference
@pytest.mark.parametrize("case", list(PARITY))
@pytest.mark.difference("ptp-noprefixroute")
def test_same_result_and_kernel_state_as_reference(case: str, sides: Sides) -> None:
    template, families = PARITY[case]
    ours, ref = sides(families, plugin="ptp")
    results = {}
    for side in (ours, ref):
        out = side.run("ADD", template)
        assert out.returncode == 0, (side.executable, out.stdout)
        results[id(side)] = out.json
    ours_result, ref_result = results[id(ours)], results[id(ref)]
    assert [i.get("sandbox") for i in ours_result["interfaces"]] == [None, ours.ns.path]
    assert comparable(ours, ref, normalize_result(ours_result)) == normalize_result(ref_result)
    assert comparable(ours, ref, state(ours, ours_result)) == state(ref, ref_result)
    # The one difference: the flag (the routing tables, compared above, are the same).
    for side, flagged in ((ours, True), (ref, False)):
        (link,) = side.ns.ip_json("addr", "show", "eth0")
        flags = ["noprefixroute" in a for a in link["addr_info"] if a["scope"] == "global"]
        assert flags and all(f == flagged for f in flags), link
    for side in (ours, ref):
        assert side.run("DEL", template).returncode == 0
        assert "eth0" not in {link["ifname"] for link in side.ns.ip_json("link")}


@pytest.mark.difference("ptp-noprefixroute")
def test_containers_reach_the_host_and_each_other(sides: Sides, make_netns: Callable[[], NetNS]) -> None:
    ours, _ = sides((4, 6), plugin="ptp")
    first = ours.run("ADD", DUAL)
    assert first.returncode == 0, first.stdout
    other = Side(ours.executable, make_netns(), ours.bridge, ours.subnets, ours.data_dir, ours.container_id + "b")
    second = other.run("ADD", DUAL)
    assert second.returncode == 0, second.stdout
    for ip in second.json["ips"]:
        target, gateway = ip["address"].split("/")[0], ip["gateway"]
        for address in (gateway, target):
            ping = ours.ns.run("ping", "-c", "1", "-W", "2", address, check=False)
            assert ping.returncode == 0, (address, ping.stdout, ping.stderr)
    # The prefix route stays away when the interface goes down and up again.
    ours.ns.run("ip", "link", "set", "eth0", "down")
    ours.ns.run("ip", "link", "set", "eth0", "up")
    subnet = ipaddress.ip_network(ours.subnets[0])
    assert not [r for r in ours.ns.ip_json("route") if r["dst"] == str(subnet) and "gateway" not in r]
    for side in (ours, other):
        assert side.run("DEL", DUAL).returncode == 0


@pytest.mark.difference("ipmasq-nftables")
def test_ipmasq_masquerades_traffic_leaving_the_subnet(sides: Sides, outside: tuple[NetNS, str, str]) -> None:
    ours, _ = sides(plugin="ptp")
    _ns, host_ip, far_ip = outside
    out = ours.run("ADD", V4)
    assert out.returncode == 0, out.stdout
    container_ip = out.json["ips"][0]["address"].split("/")[0]
    assert ours.ns.run("ping", "-c", "1", "-W", "2", far_ip, check=False).returncode == 0
    flows = subprocess.run(
        ["conntrack", "-L", "-p", "icmp", "-s", container_ip, "-d", far_ip], capture_output=True, text=True, check=True
    ).stdout
    assert f"src={far_ip} dst={host_ip}" in flows, flows
    assert ours.run("DEL", V4).returncode == 0
    mine = ipmasq.instance_hash("pctptp", "eth0", ours.container_id)
    rules = [o["rule"] for o in nft.list_objects(f"chain inet {ipmasq.TABLE} {ipmasq.CHAIN}") if "rule" in o]
    assert not [r for r in rules if r.get("comment", "").startswith(mine)]


def test_check(sides: Sides) -> None:
    ours, _ = sides((4, 6), plugin="ptp")
    result = ours.run("ADD", DUAL).json
    assert ours.run("CHECK", DUAL, prevResult=result).returncode == 0
    subprocess.run(["ip", "addr", "flush", "dev", host_veth(result), "scope", "global"], check=True)
    bad = ours.run("CHECK", DUAL, prevResult=result)
    assert bad.returncode == 1 and bad.json["code"] == 100 and "does not have address" in bad.json["msg"], bad.json
    assert ours.run("DEL", DUAL).returncode == 0


@pytest.mark.difference("gc-status")
def test_del_is_idempotent_and_gc_collects(sides: Sides) -> None:
    ours, _ = sides(plugin="ptp")
    conf = json.loads(json.dumps(V4))
    conf["cniVersion"] = "1.1.0"
    assert ours.run("ADD", conf).returncode == 0
    assert ours.run("GC", conf, **{"cni.dev/valid-attachments": []}).returncode == 0
    assert list(ours.data_dir.glob("pctptp/10.*")) == []
    for _ in range(2):
        assert ours.run("DEL", conf).returncode == 0


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"ipam": {}}, "ptp needs an IPAM plugin"),
        ({"mtu": -1}, "'mtu'"),
        ({"ipam": {"type": "static", "addresses": [{"address": "10.251.0.5/24"}]}}, "ptp needs a gateway for 10.251.0.5/24"),
    ],
)
def test_bad_input(sides: Sides, changes: dict[str, Any], fragment: str) -> None:
    ours, _ = sides(plugin="ptp")
    out = ours.run("ADD", dict(V4, **changes))
    assert out.returncode == 1 and out.json["code"] == 7 and fragment in out.json["msg"], out.json
    assert "eth0" not in {link["ifname"] for link in ours.ns.ip_json("link")}
