"""Policy resources checked and converted as libcalico-go does: defaults, the selectors felix
receives, and errors that name the field and the value."""

from __future__ import annotations

from typing import Any

import pytest

from pycni.calico.policy import model, resources
from pycni.calico.resources import ValidationError


def np(spec: dict[str, Any], name: str = "p", namespace: str = "prod") -> dict[str, Any]:
    return {"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def gnp(spec: dict[str, Any], name: str = "g") -> dict[str, Any]:
    return {"kind": "GlobalNetworkPolicy", "metadata": {"name": name}, "spec": spec}


@pytest.mark.parametrize(
    ("spec", "types"),
    [
        ({}, ["Ingress"]),
        ({"ingress": [{"action": "Allow"}]}, ["Ingress"]),
        ({"egress": [{"action": "Allow"}]}, ["Egress"]),
        ({"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}, ["Ingress", "Egress"]),
        ({"types": ["Egress"]}, ["Egress"]),
    ],
)
def test_types_default_as_calico(spec: dict[str, Any], types: list[str]) -> None:
    doc = resources.validate_network_policy(np(spec))
    assert doc["spec"]["types"] == types
    assert doc["spec"]["tier"] == "default"
    assert doc["metadata"]["labels"] == {"projectcalico.org/tier": "default"}


def test_order_is_stored_as_go_writes_it() -> None:
    assert resources.validate_network_policy(np({"order": 1000.0}))["spec"]["order"] == 1000
    assert resources.validate_network_policy(np({"order": 10.5}))["spec"]["order"] == 10.5
    assert resources.go_number(None) == "<nil>" and resources.go_number(100) == "100"


def test_namespaced_policy_selectors_carry_the_namespace() -> None:
    policy = model.parse_policy(
        np(
            {
                "selector": "app == 'web'",
                "ingress": [
                    {"action": "Allow", "source": {"selector": "role == 'fe'"}},
                    {"action": "Allow", "source": {"namespaceSelector": "team == 'a'"}},
                    {"action": "Allow", "source": {"namespaceSelector": "all()", "selector": "x == 'y'"}},
                    {"action": "Allow", "source": {"namespaceSelector": "global()"}},
                    {"action": "Allow", "source": {"notSelector": "role == 'bad'"}},
                    {"action": "Allow", "source": {"nets": ["10.0.0.0/8"]}},
                ],
            }
        )
    )
    assert str(policy.selector) == '(app == "web" && projectcalico.org/namespace == "prod")'
    sources = [
        (str(r.src.selector) if r.src.selector else None, str(r.src.not_selector) if r.src.not_selector else None)
        for r in policy.inbound
    ]
    assert sources == [
        ('(projectcalico.org/namespace == "prod" && role == "fe")', None),
        ('pcns.team == "a"', None),
        ('(has(projectcalico.org/namespace) && x == "y")', None),
        ("!has(projectcalico.org/namespace)", None),
        ('projectcalico.org/namespace == "prod"', 'role == "bad"'),
        (None, None),  # nets alone: no namespace restriction
    ]


def test_global_policy_selectors_and_namespace_selector() -> None:
    policy = model.parse_policy(
        gnp(
            {
                "selector": "app == 'web'",
                "namespaceSelector": "team == 'a'",
                "ingress": [{"action": "Allow", "source": {"selector": "r == 'x'"}}],
            }
        )
    )
    assert str(policy.selector) == '(app == "web" && pcns.team == "a")'
    assert str(policy.inbound[0].src.selector) == 'r == "x"'


def test_rules_parse_every_match() -> None:
    rule = model.parse_rule(
        {
            "action": "Deny",
            "protocol": "ICMP",
            "icmp": {"type": 8, "code": 0},
            "notICMP": {"type": 3},
            "ipVersion": 4,
            "source": {"nets": ["10.0.0.0/8"], "notNets": ["10.1.0.0/16"]},
        },
        "r",
    )
    assert (rule.protocol, rule.icmp_type, rule.icmp_code, rule.not_icmp_type) == (1, 8, 0, 3)
    ports = model.parse_rule(
        {"action": "Allow", "protocol": "TCP", "destination": {"ports": [80, "8000:8080", "http"], "notPorts": ["81"]}}, "r"
    )
    assert ports.dst.ports == (model.Port(80, 80), model.Port(8000, 8080), model.Port(name="http"))
    assert ports.dst.not_ports == (model.Port(81, 81),)


@pytest.mark.parametrize(
    ("doc", "field", "value"),
    [
        (np({"selector": "app =="}), "spec.selector", "app =="),
        (np({"bogus": 1}), "spec.bogus", "1"),
        (
            np({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [70000]}}]}),
            "spec.ingress[0].destination.ports[0]",
            "70000",
        ),
        (
            np({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["90:80"]}}]}),
            "spec.ingress[0].destination.ports[0]",
            "90:80",
        ),
        (np({"ingress": [{"action": "Allow", "destination": {"ports": [80]}}]}), "spec.ingress[0].destination.ports", "['80']"),
        (
            np({"ingress": [{"action": "Allow", "protocol": "ICMP", "destination": {"ports": [80]}}]}),
            "spec.ingress[0].destination.ports",
            "['80']",
        ),
        (np({"ingress": [{"action": "Accept"}]}), "spec.ingress[0].action", "Accept"),
        (np({"ingress": [{"action": "Allow", "protocol": "tcp"}]}), "spec.ingress[0].protocol", "tcp"),
        (np({"ingress": [{"action": "Allow", "protocol": 0}]}), "spec.ingress[0].protocol", "0"),
        (np({"ingress": [{"action": "Allow", "icmp": {"type": 8}}]}), "spec.ingress[0].icmp", "{'type': 8}"),
        (np({"ingress": [{"action": "Allow", "protocol": "ICMP", "icmp": {"code": 1}}]}), "spec.ingress[0].icmp.code", "1"),
        (np({"ingress": [{"action": "Allow", "protocol": "ICMP", "icmp": {"type": 255}}]}), "spec.ingress[0].icmp.type", "255"),
        (np({"ingress": [{"action": "Allow", "protocol": "ICMPv6", "ipVersion": 4}]}), "spec.ingress[0].protocol", "ICMPv6"),
        (
            np({"ingress": [{"action": "Allow", "source": {"nets": ["10.0.0.300/8"]}}]}),
            "spec.ingress[0].source.nets[0]",
            "10.0.0.300/8",
        ),
        (
            np({"ingress": [{"action": "Allow", "source": {"notNets": ["0.0.0.0/0"]}}]}),
            "spec.ingress[0].source.notNets[0]",
            "0.0.0.0/0",
        ),
        (
            np({"ingress": [{"action": "Allow", "source": {"nets": ["10.0.0.0/8"]}, "destination": {"nets": ["fd00::/64"]}}]}),
            "spec.ingress[0].destination.nets",
            "['fd00::/64']",
        ),
        (
            np({"ingress": [{"action": "Allow", "source": {"selector": "global()"}}]}),
            "spec.ingress[0].source.selector",
            "global()",
        ),
        (
            np({"ingress": [{"action": "Allow", "source": {"namespaceSelector": "global() && a == 'b'"}}]}),
            "spec.ingress[0].source.namespaceSelector",
            "global() && a == 'b'",
        ),
        (np({"ingress": [{"action": "Allow", "source": {"bogus": 1}}]}), "spec.ingress[0].source.bogus", "1"),
        (
            np({"ingress": [{"action": "Allow", "destination": {"ports": ["Bad_Name"]}}]}),
            "spec.ingress[0].destination.ports[0]",
            "Bad_Name",
        ),
        (np({"types": ["Ingress", "Ingress"]}), "spec.types", "['Ingress', 'Ingress']"),
        (np({"types": ["Sideways"]}), "spec.types", "Sideways"),
        (np({"tier": "security"}), "spec.tier", "security"),
        (np({"order": "first"}), "spec.order", "first"),
        (np({}, name="Bad_Name"), "metadata.name", "Bad_Name"),
        (np({}, name="a.b.c"), "metadata.name", "a.b.c"),
        (np({}, namespace="Prod"), "metadata.namespace", "Prod"),
        (gnp({"doNotTrack": True}), "spec.doNotTrack", "True"),
        (gnp({"selector": "a == 'b' && global()"}), "spec.selector", "a == 'b' && global()"),
    ],
)
def test_errors_name_the_field_and_value(doc: dict[str, Any], field: str, value: str) -> None:
    validate = resources.validate_network_policy if doc["kind"] == "NetworkPolicy" else resources.validate_global_network_policy
    with pytest.raises(ValidationError) as info:
        validate(doc)
    assert info.value.field == field
    assert str(info.value.value) == value
    assert f"error with field {field} = '{value}'" in str(info.value)


def test_k8s_policy_names_are_reserved() -> None:
    with pytest.raises(ValidationError, match="kubernetes network policies must be managed"):
        resources.validate_network_policy(np({}, name="knp.default.x"))


def test_profiles_and_network_sets() -> None:
    profile = resources.validate_profile(
        {
            "kind": "Profile",
            "metadata": {"name": "kns.prod"},
            "spec": {"labelsToApply": {"pcns.team": "a"}, "ingress": [{"action": "Allow"}]},
        }
    )
    assert model.parse_profile(profile).labels == (("pcns.team", "a"),)
    with pytest.raises(ValidationError, match=r"spec\.labelsToApply"):
        resources.validate_profile({"kind": "Profile", "metadata": {"name": "p"}, "spec": {"labelsToApply": {"bad key": "x"}}})
    netset = model.parse_network_set(
        {
            "kind": "NetworkSet",
            "metadata": {"name": "n", "namespace": "prod", "labels": {"a": "b"}},
            "spec": {"nets": ["10.0.0.0/8"]},
        }
    )
    assert dict(netset.labels) == {"a": "b", "projectcalico.org/namespace": "prod"}
    assert netset.profiles == ("kns.prod",)
    with pytest.raises(ValidationError) as info:
        resources.validate_global_network_set({"kind": "GlobalNetworkSet", "metadata": {"name": "g"}, "spec": {"nets": ["nope"]}})
    assert info.value.field == "spec.nets[0]"
    with pytest.raises(ValidationError, match=r"projectcalico\.org/namespace is not a valid label name"):
        resources.validate_network_set(
            {"kind": "NetworkSet", "metadata": {"name": "n", "labels": {"projectcalico.org/namespace": "x"}}, "spec": {}}
        )
