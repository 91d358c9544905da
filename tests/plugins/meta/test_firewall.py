"""firewall on nftables, in a stand-in host namespace whose forward chain drops by policy."""

from __future__ import annotations

from typing import Any

import pytest

from ...conftest import NetNS
from .conftest import MAIN_IMPLS


def reaches(ns: NetNS, address: str) -> bool:
    return ns.run("ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


def firewall(policy: str) -> dict[str, Any]:
    return {"type": "firewall", "ingressPolicy": policy}


@pytest.fixture
def host(make_netns: Any) -> NetNS:
    """A host namespace with a default-drop forward chain, as a locked-down host has."""
    ns = make_netns()
    ns.run("ip", "link", "set", "lo", "up")
    ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    ns.run("nft", "add table inet hostfw; add chain inet hostfw forward { type filter hook forward priority 0; policy drop; }")
    return ns


@pytest.mark.parametrize("main", MAIN_IMPLS)
def test_open_same_bridge_and_isolated(main: str, host: NetNS, make_network: Any, make_netns: Any) -> None:
    same1 = make_network([firewall("same-bridge")], main=main, host=host)
    same2 = make_network([firewall("same-bridge")], main=main, host=host)
    isolated = make_network([firewall("isolated")], main=main, host=host)
    a, b, c, d, e = (make_netns() for _ in range(5))
    att_a, att_b = same1.attach(a), same1.attach(b)
    att_c = same2.attach(c)
    att_d, att_e = isolated.attach(d), isolated.attach(e)
    # Through the host's drop policy: the host's accept rule lets marked container traffic pass.
    rules = host.run("nft", "list", "chain", "inet", "hostfw", "forward").stdout
    assert "CNI firewall plugin rules" in rules
    assert reaches(a, att_b.address())  # same bridge: allowed
    assert not reaches(a, att_c.address())  # another same-bridge network: isolated
    assert not reaches(d, att_e.address())  # isolated: not even the same bridge
    assert reaches(d, isolated.gateway)  # the host is still reachable
    for network, att in ((same1, att_a), (same2, att_c), (isolated, att_d)):
        network.check(att)
    for network, att in ((same1, att_a), (same1, att_b), (same2, att_c), (isolated, att_d), (isolated, att_e)):
        tag_id = att.rt.container_id
        network.detach(att)
        assert tag_id not in host.run("nft", "list", "ruleset").stdout
    ruleset = host.run("nft", "list", "ruleset").stdout
    assert same1.bridge not in ruleset and isolated.bridge not in ruleset


@pytest.mark.parametrize("main", MAIN_IMPLS)
def test_forwarding_through_a_dropping_host(main: str, host: NetNS, make_network: Any, make_netns: Any) -> None:
    """Two open networks: without the firewall plugin the host's policy drops routed traffic."""
    with_fw = make_network([firewall("open")], main=main, host=host)
    without = make_network([], main=main, host=host)
    a, b, c = make_netns(), make_netns(), make_netns()
    att_a, att_b = with_fw.attach(a), with_fw.attach(b)
    att_c = without.attach(c)
    assert not reaches(c, att_a.address())  # c is not let through (neither is the reply to it)
    with_fw.detach(att_b)
    assert reaches(a, with_fw.gateway)
    with_fw.detach(att_a)
    without.detach(att_c)


def test_gc_collects_only_leaked_entries_of_its_network(host: NetNS, make_network: Any, make_netns: Any) -> None:
    network = make_network([firewall("isolated")], host=host)
    other = make_network([firewall("isolated")], host=host)
    keep, leaked = network.attach(make_netns()), network.attach(make_netns())
    elsewhere = other.attach(make_netns())
    ruleset = host.run("nft", "list", "ruleset").stdout
    assert all(att.rt.container_id in ruleset for att in (keep, leaked, elsewhere))
    out = network.gc_plugin("firewall", [keep])
    assert out.returncode == 0, out.stdout
    ruleset = host.run("nft", "list", "ruleset").stdout
    assert leaked.rt.container_id not in ruleset and leaked.address() not in ruleset
    assert keep.rt.container_id in ruleset and elsewhere.rt.container_id in ruleset
    assert network.bridge in ruleset  # the network still has a container: its policy stays
    network.check(keep)
    other.check(elsewhere)
    assert reaches(keep.ns, network.gateway)
    # Nothing valid: the network's entries and its bridge policy go.
    out = network.gc_plugin("firewall", [])
    assert out.returncode == 0, out.stdout
    ruleset = host.run("nft", "list", "ruleset").stdout
    assert keep.rt.container_id not in ruleset and network.bridge not in ruleset and other.bridge in ruleset


def test_del_with_an_unreadable_configuration_still_removes(host: NetNS, make_network: Any, make_netns: Any) -> None:
    network = make_network([firewall("isolated")], host=host)
    att = network.attach(make_netns())
    network.conf["plugins"][1]["ingressPolicy"] = "no-such-policy"
    network.detach(att)
    assert att.rt.container_id not in host.run("nft", "list", "ruleset").stdout


@pytest.mark.difference("firewall-nftables")
@pytest.mark.parametrize("backend", ["iptables", "firewalld"])
def test_other_backends_are_refused(plugin_dir: Any, netns: NetNS, backend: str) -> None:
    from ...conftest import run_plugin

    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns.path}]}
    conf = {"cniVersion": "1.0.0", "name": "fw", "type": "firewall", "backend": backend, "prevResult": prev}
    out = run_plugin(plugin_dir / "firewall", "ADD", conf, netns=netns.path)
    assert out.returncode == 1 and out.json["code"] == 7 and backend in out.json["msg"], out.stdout
