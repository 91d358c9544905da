"""vlan: on a kernel without 802.1Q support, ours and the reference both fail and leave nothing
(ours naming the missing support); where the kernel has it, the reference's result and kernel
state, tagged traffic to a switch, CHECK and DEL. Bad input fails before the kernel is asked."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from pycni.plugins.main import vlan

from ...conftest import NetNS, unique
from . import kernel_state as ks
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

V4 = conf_v4("vlan", "pctvlan", master="{master}", vlanId=7)
DUAL = conf_dual("vlan", "pctvlan6", master="{master}", vlanId=4094, mtu=1400)


@pytest.mark.reference
def test_without_kernel_support_both_fail_and_leave_nothing(underlay_pair: Pair) -> None:
    if kernel_has("vlan"):
        pytest.skip("this kernel has vlan links: their absence cannot be shown here")
    ours, ref = underlay_pair("vlan", (4, 6))
    for template in (V4, variant(DUAL, vlanId=0)):
        assert_fails_without_kernel_support(ours, template, "vlan")
        assert_fails_without_kernel_support(ref, template, "vlan", reference=True)


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        (variant(V4, master=""), '"master" is required'),
        (variant(V4, vlanId=4095), "'vlanId'"),
        (variant(V4, vlanId=-1), "'vlanId'"),
        (variant(V4, ipam={}), "vlan needs an IPAM plugin"),
        (variant(V4, mtu=9000), 'invalid "mtu" 9000: must be between 0 and the MTU of master'),
        (variant(V4, master="pct-nomaster"), "master 'pct-nomaster' does not exist in the host"),
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_nothing(underlay_pair: Pair, template: dict[str, Any], fragment: str) -> None:
    ours, _ = underlay_pair("vlan")
    out = ours.run("ADD", template)
    assert out.returncode == 1 and out.json["code"] == 7 and fragment in out.json["msg"], out.stdout
    assert IFNAME not in ours.names() and ours.allocations() == []


def test_del_without_master_or_ipam_cleans_up_what_it_can(underlay_pair: Pair) -> None:
    ours, _ = underlay_pair("vlan")
    for template in (variant(V4, master=""), variant(V4, ipam={})):
        assert ours.run("DEL", template).returncode == 0


def test_the_vlan_is_described_as_the_reference_makes_it(masters: Callable[..., str]) -> None:
    """What this kernel cannot show: the link ADD asks for, down to the netlink attributes."""
    master = masters()
    call = plugin_call("vlan", variant(DUAL, master=master))
    plan = vlan.plan(call)
    link = plan.link
    assert (link.kind, link.creation.parent, link.settings.mtu, plan.mtu_checked, plan.notify) == ("vlan", master, 1400, True, ())
    request = creation_request(link)
    assert ("IFLA_INFO_DATA", {"attrs": [("IFLA_VLAN_ID", 4094)]}) in request["IFLA_LINKINFO"]["attrs"]
    assert request["txqlen"] == 0  # IFLA_TXQLEN, as the reference's netlink.LinkAttrs literal asks


# -- where the kernel has 802.1Q VLANs ----------------------------------------------

PARITY: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "IPv4": (V4, (4,)),
    "IPv4 + IPv6, mtu": (DUAL, (4, 6)),
    "cniVersion 0.3.1": (variant(V4, cniVersion="0.3.1"), (4,)),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", list(PARITY))
def test_same_result_and_kernel_state_as_reference(case: str, underlay_pair: Pair) -> None:
    require_link_type("vlan")
    template, families = PARITY[case]
    ours, ref = underlay_pair("vlan", families)
    assert_same_as_reference(ours, ref, template)


def test_tagged_traffic_reaches_the_same_vlan_only(underlay_pair: Pair, make_netns: Callable[[], NetNS]) -> None:
    """The master's peer is a switch port: VLAN 7 on it answers; the container on VLAN 8 gets no answer."""
    require_link_type("vlan")
    ours, _ = underlay_pair("vlan")
    switch = make_netns()
    peer = str(ks.ip_json("link", "show", ours.master)[0]["link"])
    subprocess.run(["ip", "link", "set", peer, "netns", switch.name, "name", "trunk0"], check=True)
    switch.run("ip", "link", "set", "trunk0", "up")
    switch.run("ip", "link", "add", "link", "trunk0", "name", "vlan7", "type", "vlan", "id", "7")
    switch.run("ip", "addr", "add", ours.fill("{addr1}/24"), "dev", "vlan7")
    switch.run("ip", "link", "set", "vlan7", "up")
    static = {"type": "static", "addresses": [{"address": ours.fill("{addr20}/24")}]}
    assert ours.run("ADD", variant(V4, ipam=static)).returncode == 0
    static["addresses"] = [{"address": ours.fill("{addr21}/24")}]
    assert ours.ns.run("ping", "-c", "1", "-W", "2", ours.fill("{addr1}"), check=False).returncode == 0
    other = Attach(ours.executable, ours.ns, ours.master, ours.subnets, ours.data_dir, unique("pctc"), "net2")
    assert other.run("ADD", variant(V4, vlanId=8, ipam=static)).returncode == 0
    assert other.ns.run("ping", "-c", "1", "-W", "1", "-I", "net2", ours.fill("{addr1}"), check=False).returncode != 0
    for side, conf in ((ours, V4), (other, variant(V4, vlanId=8))):
        assert side.run("DEL", conf).returncode == 0


def test_check_compares_vlan_id_and_mtu(underlay_pair: Pair) -> None:
    require_link_type("vlan")
    ours, _ = underlay_pair("vlan", (4, 6))
    result = ours.run("ADD", DUAL).json
    assert link_state(ours.ns)["data"]["id"] == 4094
    assert ours.run("CHECK", DUAL, prevResult=result).returncode == 0
    ours.ns.run("ip", "link", "set", IFNAME, "mtu", "1300")
    bad = ours.run("CHECK", variant(DUAL, vlanId=5), prevResult=result)
    assert bad.returncode == 1, bad.stdout
    assert "vlan_id is 4094, expected 5" in bad.json["msg"] and "has MTU 1300, expected 1400" in bad.json["msg"]
    assert_del_is_idempotent(ours, DUAL)
