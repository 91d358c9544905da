"""The rule compiler and the policy dataplane on a real nftables table (in the test run's own
network namespace): what a rule becomes, incremental updates, drift, the rule count, failures."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from pycni.calico.datastore import KV, WatchEvent
from pycni.calico.node.component import NodeContext
from pycni.calico.node.policy import dataplane as dp
from pycni.calico.node.policy import render
from pycni.calico.node.policy.component import PolicyComponent
from pycni.calico.node.policy.render import Options, compile_rule
from pycni.calico.policy import model
from pycni.net import nft

P = "/calico/resources/v3/projectcalico.org/"
NODE = "node-1"


def rule(raw: dict[str, Any], namespace: str = "") -> model.Rule:
    return model.parse_rule(raw, "r", namespace)


def text(rules: list[list[dict[str, Any]]]) -> list[str]:
    """Rules as nft prints them, through a scratch table (the test's own namespace)."""
    where = {"family": "inet", "table": "pycni-render-test"}
    commands: list[dict[str, Any]] = [{"add": {"table": {"family": "inet", "name": "pycni-render-test"}}},
                                      {"add": {"chain": {**where, "name": "c"}}}]  # fmt: skip
    names = {e["match"]["right"][1:] for r in rules for e in r if "match" in e and str(e["match"]["right"]).startswith("@")}
    for name in names:
        kind: Any = "ifname"
        if name.startswith(("cali40", "cali60")):
            kind = "ipv4_addr" if name.startswith("cali40") else "ipv6_addr"
            if "0p-" in name:
                kind = [kind, "inet_service"]
        commands.append(
            {"add": {"set": {**where, "name": name, "type": kind, **({"flags": ["interval"]} if "0n-" in name else {})}}}
        )
    commands += [{"add": {"rule": {**where, "chain": "c", "expr": r}}} for r in rules]
    nft.run(commands)
    try:
        out = subprocess.run(
            ["nft", "list", "chain", "inet", "pycni-render-test", "c"], capture_output=True, text=True, check=True
        ).stdout
    finally:
        nft.run([{"delete": {"table": {"family": "inet", "name": "pycni-render-test"}}}])
    return [line.strip().replace("counter packets 0 bytes 0 ", "") for line in out.splitlines()[2:-2]]


def no_netsets(_selector: Any) -> list[Any]:
    return []


def test_rules_become_nftables_matches() -> None:
    opts = Options()
    allow_tcp = rule({"action": "Allow", "protocol": "TCP", "destination": {"ports": [80, "8000:8080"], "notPorts": [8005]}})
    assert text(compile_rule(allow_tcp, opts, no_netsets)) == ["tcp dport != 8005 tcp dport { 80, 8000-8080 } accept"]
    deny_nets = rule({"action": "Deny", "source": {"nets": ["10.0.0.0/8"], "notNets": ["10.1.0.0/16", "10.3.0.0/16"]}})
    assert text(compile_rule(deny_nets, opts, no_netsets)) == [
        "ip saddr 10.0.0.0/8 ip saddr != { 10.1.0.0/16, 10.3.0.0/16 } drop"
    ]
    icmp = rule({"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}})
    assert text(compile_rule(icmp, opts, no_netsets)) == ["icmp type echo-request icmp code net-unreachable accept"]
    icmp6 = rule({"action": "Deny", "protocol": "ICMPv6", "notICMP": {"type": 128, "code": 0}})
    assert text(compile_rule(icmp6, opts, no_netsets)) == ["icmpv6 type . icmpv6 code != { echo-request . no-route } drop"]
    any_v6 = rule({"action": "Pass", "ipVersion": 6})
    assert text(compile_rule(any_v6, opts, no_netsets)) == ["meta nfproto ipv6 meta mark set meta mark | 0x00020000 return"]
    assert text(compile_rule(rule({"action": "Pass"}), opts, no_netsets, in_profile=True)) == ["return"]
    log = rule({"action": "Log", "notProtocol": "UDP"})
    assert text(compile_rule(log, Options(log_group=5), no_netsets)) == [
        'meta l4proto != udp log prefix "calico-packet: " group 5'
    ]
    assert text(compile_rule(log, opts, no_netsets)) == ['meta l4proto != udp log prefix "calico-packet: " level info']


def test_selectors_network_sets_and_named_ports_become_sets() -> None:
    r = rule({"action": "Allow", "protocol": "TCP", "source": {"selector": "app == 'web'", "notSelector": "bad == 'y'"},
              "destination": {"ports": [443, "http"]}}, namespace="prod")  # fmt: skip
    assert r.src.selector is not None and r.src.not_selector is not None
    web, bad = r.src.selector, r.src.not_selector
    lines = text(compile_rule(r, Options(ipv6=False), lambda s: [("", "ext")] if s == web else []))
    s4, n4, b4 = render.selector_set(web, 4), render.netset_set(("", "ext"), 4), render.selector_set(bad, 4)
    named = render.named_port_set(model_npk(r), 4)
    assert lines == [
        f"ip saddr != @{b4} ip saddr @{s4} tcp dport 443 accept",
        f"ip saddr != @{b4} ip saddr @{s4} ip daddr . tcp dport @{named} accept",
        f"ip saddr != @{b4} ip saddr @{n4} tcp dport 443 accept",
        f"ip saddr != @{b4} ip saddr @{n4} ip daddr . tcp dport @{named} accept",
    ]


def model_npk(r: model.Rule) -> Any:
    from pycni.calico.policy.calc import NamedPortKey
    from pycni.calico.selector import ALL

    return NamedPortKey(ALL, 6, "http")


def test_rule_families() -> None:
    both = Options()
    assert render.families(rule({"action": "Allow"}), both) == [None]
    assert render.families(rule({"action": "Allow", "source": {"selector": "a == 'b'"}}), both) == [4, 6]
    assert render.families(rule({"action": "Allow", "destination": {"nets": ["fd00::/64"]}}), both) == [6]
    assert render.families(rule({"action": "Allow", "protocol": "ICMP"}), both) == [4]
    assert render.families(rule({"action": "Allow", "source": {"notNets": ["10.0.0.0/8"]}}), both) == [4, 6]
    # the v6 rendering of a v4-only notNets has no address match but keeps to IPv6 packets
    v6 = compile_rule(rule({"action": "Deny", "source": {"notNets": ["10.0.0.0/8"]}}), both, no_netsets)[1]
    assert v6[0] == render.match(render.meta("nfproto"), "ipv6")


# -- the component on a real table --------------------------------------------------------------


def wep(name: str, ip: str, labels: dict[str, str], node: str = NODE, ns: str = "prod") -> KV:
    meta = {
        "name": name,
        "namespace": ns,
        "labels": {"projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s", **labels},
    }
    spec = {"node": node, "interfaceName": f"cali{name}"[:15], "ipNetworks": [f"{ip}/32"], "profiles": [f"kns.{ns}"]}
    return KV(f"{P}workloadendpoints/{ns}/{name}", json.dumps({"metadata": meta, "spec": spec}), 1)


def policy_kv(name: str, spec: dict[str, Any], ns: str = "prod") -> KV:
    if ns:
        return KV(
            f"{P}networkpolicies/{ns}/{name}",
            json.dumps({"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec}),
            1,
        )
    return KV(
        f"{P}globalnetworkpolicies/{name}",
        json.dumps({"kind": "GlobalNetworkPolicy", "metadata": {"name": name}, "spec": spec}),
        1,
    )


PROFILE = KV(
    f"{P}profiles/kns.prod",
    json.dumps({"metadata": {"name": "kns.prod"}, "spec": {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}}),
    1,
)


def listing(endpoints: int, policies: int, remote: int = 0) -> list[KV]:
    out = [PROFILE]
    net = ipaddress.ip_network("10.50.0.0/16")
    out += [wep(f"e{i}", str(net[i + 1]), {"app": f"a{i % 5}"}) for i in range(endpoints)]
    out += [wep(f"r{i}", str(net[30000 + i]), {"app": f"a{i % 5}"}, node="node-2") for i in range(remote)]
    out += [
        policy_kv(f"p{i}", {"order": i, "selector": "all()", "ingress": [{"action": "Allow", "protocol": "TCP",
                                                                          "source": {"selector": f"app == 'a{i % 5}'"},
                                                                          "destination": {"ports": [1000 + i]}}]})
        for i in range(policies)
    ]  # fmt: skip
    return out


@pytest.fixture
def component() -> Iterator[PolicyComponent]:
    comp = PolicyComponent(NodeContext(nodename=NODE), Options(ipv6=False))
    try:
        yield comp
    finally:
        comp.close(cleanup=True)
        nft.run_text("delete table inet calico\n") if nft.table_exists("inet", "calico") else None


def rules_in_kernel() -> int:
    return sum(dp.kernel_objects()[1].values())


def test_rules_grow_with_endpoints_plus_policies(component: PolicyComponent) -> None:
    counts = {}
    for endpoints, policies in ((10, 10), (20, 10), (10, 20), (20, 20)):
        component.needs_rebuild = True
        component.resync(listing(endpoints, policies))
        assert component.ready() == ""
        counts[(endpoints, policies)] = rules_in_kernel()
    per_endpoint = (counts[(20, 10)] - counts[(10, 10)]) / 10
    per_policy = (counts[(10, 20)] - counts[(10, 10)]) / 10
    assert per_endpoint <= 10 and per_policy <= 4, counts
    assert counts[(20, 20)] - counts[(10, 10)] == 10 * per_endpoint + 10 * per_policy, counts  # additive: no product


def test_a_label_change_is_one_small_transaction(component: PolicyComponent) -> None:
    component.resync(listing(20, 10, remote=20))
    calls: list[list[dict[str, Any]]] = []
    run = component.dataplane.run

    def record(commands: list[dict[str, Any]], what: str) -> None:
        calls.append(commands)
        run(commands, what)

    component.dataplane.run = record  # type: ignore[assignment]
    moved = wep("r3", "10.50.117.51", {"app": "a0"}, node="node-2")
    component.on_events([WatchEvent("put", moved.key, moved.value, 5)])
    assert len(calls) == 1
    verbs = [next(iter(c)) + " " + next(iter(next(iter(c.values())))) for c in calls[0][1:]]
    assert sorted(verbs) == ["add element", "delete element"], verbs  # out of one selector's set, into another's
    assert component.ready() == ""


def test_drift_is_repaired(component: PolicyComponent) -> None:
    component.resync(listing(3, 2))
    chain = render.endpoint_chain("calie0", "ingress")
    nft.run_text(f"flush chain inet calico {chain}\n")
    component.reconcile()
    assert dp.kernel_objects()[1][chain] == len(component.dataplane.programmed[("chain", chain)].rules)  # type: ignore[union-attr]


def test_a_policy_the_kernel_refuses_closes_its_endpoints(component: PolicyComponent, monkeypatch: pytest.MonkeyPatch) -> None:
    real = render.verdict

    def refused(action: str, opts: Options, in_profile: bool = False) -> list[dict[str, Any]]:
        if action == "Log":  # stands for a match this kernel lacks
            return [{"jump": {"target": "filter-cali-no-such-chain"}}]
        return real(action, opts, in_profile)

    monkeypatch.setattr(render, "verdict", refused)
    kvs = [*listing(2, 1), policy_kv("logs", {"selector": "app == 'a1'", "ingress": [{"action": "Log"}, {"action": "Allow"}]})]
    component.resync(kvs)
    assert component.ready().startswith("policy prod/logs could not be programmed"), component.ready()
    assert "p0" not in component.ready()
    closed = dp.kernel_objects()
    assert ("chain", render.endpoint_chain("calie1", "ingress")) in closed[0]
    rules = component.dataplane.programmed[("chain", render.endpoint_chain("calie1", "ingress"))]
    assert isinstance(rules, dp.Chain) and len(rules.rules) == 1 and "could not be programmed" in rules.rules[0]
    open_chain = component.dataplane.programmed[("chain", render.endpoint_chain("calie0", "ingress"))]
    assert isinstance(open_chain, dp.Chain) and len(open_chain.rules) > 1  # not selected: not closed
    monkeypatch.setattr(render, "verdict", real)
    component.reconcile()
    assert component.ready() == ""


def test_an_invalid_policy_in_the_datastore_closes_what_it_selects(component: PolicyComponent) -> None:
    bad = KV(
        f"{P}networkpolicies/prod/bad", json.dumps({"spec": {"selector": "app == 'a0'", "ingress": [{"action": "Explode"}]}}), 1
    )
    component.resync([*listing(2, 0), bad])
    assert "policy prod/bad is invalid" in component.ready()
    chain = component.dataplane.programmed[("chain", render.endpoint_chain("calie0", "ingress"))]
    assert isinstance(chain, dp.Chain) and "Closed" in chain.rules[0]
    component.on_events([WatchEvent("delete", bad.key, None, 9)])
    assert component.ready() == ""


def test_cleanup_leaves_other_objects_of_the_table(component: PolicyComponent) -> None:
    component.resync(listing(2, 1))
    nft.run_text("add chain inet calico nat-POSTROUTING\n")
    component.close(cleanup=True)
    objects, _ = dp.kernel_objects()
    assert objects == set()
    assert nft.list_objects("chain inet calico nat-POSTROUTING")


def test_workload_tunnels_are_dropped_unless_allowed() -> None:
    def rules(opts: Options) -> str:
        return json.dumps(render.base_chains(opts)[render.BASE_FROM_WL][1])

    assert "Drop VXLAN encapped" in rules(Options()) and '"right": 4789' in rules(Options())
    assert "Drop IPinIP encapped" in rules(Options())
    allowed = render.options_from_env(
        {"FELIX_ALLOWVXLANPACKETSFROMWORKLOADS": "true", "FELIX_ALLOWIPIPPACKETSFROMWORKLOADS": "1"}
    )
    assert "encapped" not in rules(allowed)
    assert '"right": 8472' in rules(render.options_from_env({"FELIX_VXLANPORT": "8472"}))
    with pytest.raises(ValueError, match="FELIX_DEFAULTENDPOINTTOHOSTACTION"):
        render.options_from_env({"FELIX_DEFAULTENDPOINTTOHOSTACTION": "maybe"})
