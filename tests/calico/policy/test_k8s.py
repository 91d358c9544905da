"""Kubernetes NetworkPolicies converted as libcalico-go converts them (K8sNetworkPolicyToCalico)
and stored as kube-controllers stores them (knp.default.<name>)."""

from __future__ import annotations

from typing import Any

import pytest

from pycni.calico.policy import k8s, model
from pycni.calico.resources import ValidationError

K8S = "projectcalico.org/orchestrator == 'k8s'"


def knp(spec: dict[str, Any], name: str = "web") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "prod"},
        "spec": spec,
    }


def test_default_deny_ingress() -> None:
    doc = k8s.to_calico(knp({"podSelector": {}, "policyTypes": ["Ingress"]}, name="default-deny"))
    assert doc == {
        "kind": "NetworkPolicy",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": "knp.default.default-deny", "namespace": "prod"},
        "spec": {"tier": "default", "order": 1000, "selector": K8S, "types": ["Ingress"]},
    }
    policy = model.parse_policy(doc)
    assert policy.ingress and not policy.egress and policy.inbound == ()


def test_types_without_policy_types_are_ingress_only() -> None:
    spec = k8s.to_calico(knp({"podSelector": {}, "egress": [{}]}))["spec"]
    assert spec["types"] == ["Ingress"] and spec["egress"] == [{"action": "Allow"}]


def test_empty_rule_allows_everything_and_empty_lists() -> None:
    rules = {"ingress": [{}], "egress": [{"to": [], "ports": []}], "policyTypes": ["Ingress", "Egress"]}
    spec = k8s.to_calico(knp({"podSelector": {"matchLabels": {"app": "web"}}, **rules}))["spec"]
    assert spec["selector"] == f"{K8S} && app == 'web'"
    assert spec["ingress"] == [{"action": "Allow"}] and spec["egress"] == [{"action": "Allow"}]


def test_peers_ports_protocols() -> None:
    spec = k8s.to_calico(
        knp(
            {
                "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                                     {"key": "x", "operator": "DoesNotExist"}]},
                "ingress": [
                    {
                        "from": [
                            {"podSelector": {"matchLabels": {"role": "fe"}}},
                            {"namespaceSelector": {}},
                            {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {}},
                            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                        ],
                        "ports": [{"port": 80}, {"port": 81, "protocol": "TCP"}, {"port": "http"},
                                  {"protocol": "UDP", "port": 5000, "endPort": 5010}, {"protocol": "SCTP"}],
                    }
                ],
            }
        )
    )["spec"]  # fmt: skip
    assert spec["selector"] == f"{K8S} && tier in {{ 'a', 'b' }} && ! has(x)"
    sources = [
        {"selector": f"{K8S} && role == 'fe'"},
        {"selector": K8S, "namespaceSelector": "all()"},
        {"selector": K8S, "namespaceSelector": "team == 'a'"},
        {"nets": ["10.0.0.0/8"], "notNets": ["10.1.0.0/16"]},
    ]
    expected = []
    for protocol, ports in (("SCTP", None), ("TCP", ["http", "80:81"]), ("UDP", ["5000:5010"])):
        for source in sources:
            rule: dict[str, Any] = {"action": "Allow", "protocol": protocol}
            if ports:
                rule["destination"] = {"ports": ports}
            rule["source"] = source
            expected.append(rule)
    assert spec["ingress"] == expected
    model.parse_policy(k8s.to_calico(knp({"podSelector": {}, "ingress": spec["ingress"][:0]})))


def test_egress_ports_go_with_the_destination() -> None:
    egress = [{"to": [{"ipBlock": {"cidr": "10.96.0.10/32"}}], "ports": [{"protocol": "UDP", "port": 53}]}]
    spec = k8s.to_calico(knp({"podSelector": {}, "policyTypes": ["Egress"], "egress": egress}))["spec"]
    assert spec["egress"] == [{"action": "Allow", "protocol": "UDP", "destination": {"nets": ["10.96.0.10/32"], "ports": [53]}}]
    assert spec["types"] == ["Egress"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({}, "spec.podSelector"),
        ({"podSelector": {}, "bogus": 1}, "spec.bogus"),
        ({"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}, "spec.ingress[0].ports[0].port"),
        ({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 79}]}]}, "spec.ingress[0].ports[0].endPort"),
        ({"podSelector": {}, "ingress": [{"ports": [{"port": "http", "endPort": 90}]}]}, "spec.ingress[0].ports[0].endPort"),
        ({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}, "spec.ingress[0].ports[0].protocol"),
        (
            {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
            "spec.ingress[0].from[0].ipBlock.except[0]",
        ),
        ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1"}}]}]}, "spec.ingress[0].from[0].ipBlock.cidr"),
        (
            {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
            "spec.ingress[0].from[0].ipBlock",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
            "spec.podSelector.matchExpressions[0].operator",
        ),
        ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "spec.podSelector.matchExpressions[0].values"),
        ({"podSelector": {}, "policyTypes": ["Both"]}, "spec.policyTypes"),
    ],
)
def test_errors_name_the_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        k8s.to_calico(knp(spec))
    assert info.value.field == field
