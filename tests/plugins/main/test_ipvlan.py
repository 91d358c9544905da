"""ipvlan: on a kernel without ipvlan links, ours and the reference both fail and leave nothing
(ours naming the missing support); where the kernel has them, the reference's result and
kernel state, traffic, the chained mode, CHECK and DEL. Bad input fails before the kernel is asked."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pycni.plugins.main import ipvlan

from ...conftest import NetNS, run_plugin
from . import kernel_state as ks
from .sides import subnet_pair
from .underlay import (
    IFNAME,
    Attach,
    assert_del_is_idempotent,
    assert_fails_without_kernel_support,
    assert_same_as_reference,
    conf_dual,
    conf_v4,
    creation_request,
    kernel_has,
    link_state,
    plugin_call,
    require_link_type,
    variant,
)

Pair = Callable[..., tuple[Attach, Attach]]

V4 = conf_v4("ipvlan", "pctipv", master="{master}")
DUAL = conf_dual("ipvlan", "pctipv6", master="{master}", mode="l3", mtu=1400)


def chained(master: str, address: str) -> dict[str, Any]:
    """No IPAM and no master: the previous plugin's only interface is the master, its addresses ours."""
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": master}], "ips": [{"address": address, "interface": 0}]}
    return {"cniVersion": "1.0.0", "name": "pctipvc", "type": "ipvlan", "prevResult": prev}


@pytest.mark.reference
def test_without_kernel_support_both_fail_and_leave_nothing(underlay_pair: Pair) -> None:
    if kernel_has("ipvlan"):
        pytest.skip("this kernel has ipvlan links: their absence cannot be shown here")
    ours, ref = underlay_pair("ipvlan")
    for template in (V4, variant(V4, mode="l3s", linkInContainer=False)):
        assert_fails_without_kernel_support(ours, template, "ipvlan")
        assert_fails_without_kernel_support(ref, template, "ipvlan", reference=True)
    out = ours.run("ADD", chained(ours.master, "192.0.2.5/24"))
    assert out.returncode == 1 and out.json["code"] == 101 and IFNAME not in ours.names()


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        (variant(V4, mode="l4"), "unknown ipvlan \"mode\" 'l4'"),
        (variant(V4, ipam={}), 'ipvlan needs an IPAM plugin ("ipam": {"type": ...}) or, in a chain, a prevResult with addresses'),
        (variant(V4, mtu=9000), 'invalid "mtu" 9000: must be between 0 and the MTU of master'),
        (variant(V4, master="pct-nomaster"), "master 'pct-nomaster' does not exist in the host"),
        (variant(V4, master="", linkInContainer=True), '"master" is not set and the container'),
        (
            dict(chained("x", "192.0.2.5/24"), prevResult={"cniVersion": "1.0.0", "interfaces": [{"name": "a"}, {"name": "b"}],
             "ips": [{"address": "192.0.2.5/24"}]}),
            "the prevResult has 2 interfaces, not one to take as the master",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error_and_leaves_nothing(underlay_pair: Pair, template: dict[str, Any], fragment: str) -> None:
    ours, _ = underlay_pair("ipvlan")
    out = ours.run("ADD", template)
    assert out.returncode == 1 and out.json["code"] == 7 and fragment in out.json["msg"], out.stdout
    assert IFNAME not in ours.names() and ours.allocations() == []


@pytest.mark.parametrize(("mode", "value"), [("l2", 0), ("l3", 1), ("l3s", 2)])
def test_the_ipvlan_is_described_as_the_reference_makes_it(mode: str, value: int, masters: Callable[..., str]) -> None:
    """What this kernel cannot show: the link ADD asks for, down to the netlink attributes."""
    master = masters()
    call = plugin_call("ipvlan", variant(V4, master=master, mode=mode, mtu=1400, linkInContainer=False))
    plan = ipvlan.plan(call)
    link = plan.link
    assert (link.name, link.ns, link.kind, link.creation.parent, link.creation.parent_in_ns, link.settings.mtu) == (
        IFNAME,
        call.netns,
        "ipvlan",
        master,
        False,
        1400,
    )
    assert plan.ipam_type == "host-local" and len(plan.notify) == 2  # arp_notify, ndisc_notify
    request = creation_request(link)
    assert ("IFLA_INFO_DATA", {"attrs": [("IFLA_IPVLAN_MODE", value)]}) in request["IFLA_LINKINFO"]["attrs"]
    assert request["txqlen"] == 0  # IFLA_TXQLEN, as the reference's netlink.LinkAttrs literal asks


# -- where the kernel has ipvlan links ----------------------------------------------

PARITY: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "IPv4, l2": (V4, (4,)),
    "IPv4 + IPv6, l3, mtu": (DUAL, (4, 6)),
    "l3s": (variant(V4, mode="l3s"), (4,)),
    "cniVersion 0.4.0": (variant(DUAL, cniVersion="0.4.0"), (4, 6)),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", list(PARITY))
def test_same_result_and_kernel_state_as_reference(case: str, underlay_pair: Pair) -> None:
    require_link_type("ipvlan")
    template, families = PARITY[case]
    ours, ref = underlay_pair("ipvlan", families)
    # Older ipvlan plugins announce nothing; the current one (and we) both families.
    assert_same_as_reference(ours, ref, template, unannounced=("arp_notify", "ndisc_notify"))


@pytest.mark.parametrize("mode", ["l2", "l3"])
def test_two_containers_on_one_master_reach_each_other(
    mode: str, plugin_dir: Path, make_netns: Callable[[], NetNS], masters: Callable[..., str]
) -> None:
    require_link_type("ipvlan")
    master = masters()
    subnet = ipaddress.ip_network(subnet_pair()[0])
    namespaces = [make_netns(), make_netns()]
    for i, ns in enumerate(namespaces):
        conf = variant(V4, master=master, mode=mode, ipam={"type": "static", "addresses": [{"address": f"{subnet[10 + i]}/24"}]})
        out = run_plugin(plugin_dir / "ipvlan", "ADD", conf, netns=ns.path, ifname=IFNAME)
        assert out.returncode == 0, out.stdout
        assert out.json["interfaces"][0]["mac"] == _mac_of(master)  # an ipvlan shares its master's MAC
    ping = namespaces[0].run("ping", "-c", "1", "-W", "2", str(subnet[11]), check=False)
    assert ping.returncode == 0, ping.stdout
    for ns in namespaces:
        assert run_plugin(plugin_dir / "ipvlan", "DEL", variant(V4, master=master), netns=ns.path, ifname=IFNAME).returncode == 0


def _mac_of(name: str) -> str:
    return str(ks.ip_json("link", "show", name)[0]["address"])


@pytest.mark.reference
def test_chained_without_ipam_or_master(underlay_pair: Pair) -> None:
    """The prevResult's addresses go on the ipvlan, its only interface is the master; the
    result names the ipvlan alone, as the reference's does."""
    require_link_type("ipvlan")
    ours, ref = underlay_pair("ipvlan")
    results = []
    for side in (ours, ref):
        conf = chained(side.master, "192.0.2.5/24")
        out = side.run("ADD", conf)
        assert out.returncode == 0, out.stdout
        results.append(out.json)
        current = link_state(side.ns)
        assert current["parent"] == side.master and current["addresses"] == ["192.0.2.5/24"]
        assert side.run("DEL", conf).returncode == 0
    for side, result in zip((ours, ref), results, strict=True):
        assert result.pop("interfaces") == [{"name": IFNAME, "mac": _mac_of(side.master), "sandbox": side.ns.path}]
    assert results[0] == results[1]


def test_check_and_del(underlay_pair: Pair) -> None:
    require_link_type("ipvlan")
    ours, _ = underlay_pair("ipvlan", (4, 6))
    result = ours.run("ADD", DUAL).json
    assert ours.run("CHECK", DUAL, prevResult=result).returncode == 0
    ours.ns.run("ip", "link", "set", IFNAME, "type", "ipvlan", "mode", "l2")
    bad = ours.run("CHECK", DUAL, prevResult=result)
    assert bad.returncode == 1 and "ipvlan_mode is 0, expected 1" in bad.json["msg"], bad.stdout
    assert_del_is_idempotent(ours, DUAL)
