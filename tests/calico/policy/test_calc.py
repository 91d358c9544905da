"""The calculation: which policies apply to a local endpoint in felix's order, label
inheritance from profiles, selector membership cluster-wide, and what each change marks dirty."""

from __future__ import annotations

import ipaddress
from typing import Any

from pycni.calico.policy import model
from pycni.calico.policy.calc import EGRESS, INGRESS, Calc, NamedPortKey
from pycni.calico.selector import parse

NODE = "node-1"


def ep(
    name: str, ip: str, labels: dict[str, str], node: str = NODE, ns: str = "prod", ports: tuple[model.NamedPort, ...] = ()
) -> model.Endpoint:
    labels = {"projectcalico.org/namespace": ns, "projectcalico.org/orchestrator": "k8s", **labels}
    return model.Endpoint(
        ns, name, node, "cali" + name, (ipaddress.ip_address(ip),), tuple(sorted(labels.items())), (f"kns.{ns}",), ports
    )


def pol(name: str, spec: dict[str, Any], ns: str = "prod") -> model.Policy:
    kind = "NetworkPolicy" if ns else "GlobalNetworkPolicy"
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return model.parse_policy({"kind": kind, "metadata": meta, "spec": spec})


def profile(name: str, labels: dict[str, str]) -> model.Profile:
    return model.parse_profile(
        {
            "metadata": {"name": name},
            "spec": {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}], "labelsToApply": labels},
        }
    )


def world() -> Calc:
    calc = Calc(NODE)
    calc.put_profile(profile("kns.prod", {"pcns.projectcalico.org/name": "prod", "pcns.team": "a"}))
    calc.put_endpoint(ep("web", "10.0.0.1", {"app": "web"}))
    calc.put_endpoint(ep("db", "10.0.0.2", {"app": "db"}))
    calc.put_endpoint(ep("remote", "10.0.1.1", {"app": "web"}, node="node-2"))
    return calc


def test_order_then_name_namespace_kind() -> None:
    calc = world()
    calc.put_policy(pol("z", {"order": 100, "selector": "app == 'web'"}))
    calc.put_policy(pol("a", {"order": 100, "selector": "app == 'web'"}))
    calc.put_policy(pol("first", {"order": 1, "selector": "all()"}, ns=""))
    calc.put_policy(pol("unordered", {"selector": "all()"}))
    calc.put_policy(pol("egress", {"order": 1, "selector": "all()", "types": ["Egress"]}))
    names = [k.name for k in calc.policies_for(("prod", "web"), INGRESS)]
    assert names == ["first", "a", "z", "unordered"]
    assert [k.name for k in calc.policies_for(("prod", "web"), EGRESS)] == ["egress"]
    assert [k.name for k in calc.policies_for(("prod", "db"), INGRESS)] == ["first", "unordered"]
    # a policy selecting only a remote endpoint is not active here
    calc.put_policy(pol("far", {"selector": "app == 'nothing-local'"}))
    assert "far" not in [k.name for k in calc.active_policies(INGRESS)]


def test_labels_inherited_from_profiles_and_overridden_by_the_endpoint() -> None:
    calc = world()
    assert calc.labels_of(("prod", "web"))["pcns.team"] == "a"
    calc.put_policy(
        pol("team", {"selector": "all()", "ingress": [{"action": "Allow", "source": {"namespaceSelector": "team == 'a'"}}]})
    )
    selector = parse('pcns.team == "a"')
    assert calc.sel_eps[selector] == {("prod", "web"), ("prod", "db"), ("prod", "remote")}
    calc.dirty.take()
    calc.put_profile(profile("kns.prod", {"pcns.team": "b"}))
    dirty = calc.dirty.take()
    assert calc.sel_eps[selector] == set()
    assert selector in dirty.selectors and "kns.prod" in dirty.profiles


def test_a_label_change_touches_only_what_it_changes() -> None:
    calc = world()
    calc.put_policy(
        pol("web", {"selector": "app == 'web'", "ingress": [{"action": "Allow", "source": {"selector": "role == 'fe'"}}]})
    )
    calc.put_policy(
        pol("db", {"selector": "app == 'db'", "ingress": [{"action": "Allow", "source": {"selector": "role == 'x'"}}]})
    )
    calc.dirty.take()
    fe = parse('(projectcalico.org/namespace == "prod" && role == "fe")')
    calc.put_endpoint(ep("remote", "10.0.1.1", {"app": "web", "role": "fe"}, node="node-2"))
    dirty = calc.dirty.take()
    assert dirty.selectors == {fe} and calc.sel_eps[fe] == {("prod", "remote")}
    assert not (dirty.endpoints or dirty.members or dirty.policies or dirty.profiles or dirty.dispatch)
    # a local endpoint moving from one policy to another: its chains, both member sets, the dispatch order
    calc.put_endpoint(ep("web", "10.0.0.1", {"app": "db"}))
    dirty = calc.dirty.take()
    assert dirty.endpoints == {("prod", "web")}
    assert {k.name for k in dirty.members} == {"web", "db"}
    assert dirty.dispatch  # "web" selects nothing here any more
    assert not calc.members.get(model.PolicyKey("NetworkPolicy", "prod", "web"))


def test_deleting_an_endpoint_removes_it_from_every_selector() -> None:
    calc = world()
    calc.put_policy(pol("web", {"selector": "all()", "ingress": [{"action": "Allow", "source": {"selector": "app == 'web'"}}]}))
    web = parse('(projectcalico.org/namespace == "prod" && app == "web")')
    assert calc.sel_eps[web] == {("prod", "web"), ("prod", "remote")}
    calc.dirty.take()
    calc.delete_endpoint(("prod", "remote"))
    assert calc.sel_eps[web] == {("prod", "web")} and web in calc.dirty.take().selectors
    calc.delete_endpoint(("prod", "web"))
    calc.delete_endpoint(("prod", "db"))
    assert calc.sel_owners == {} and calc.members == {} and calc.ep_policies == {}


def test_named_ports_and_network_sets() -> None:
    calc = world()
    calc.put_endpoint(ep("web", "10.0.0.1", {"app": "web"}, ports=(model.NamedPort("http", 6, 8080),)))
    calc.put_netset(
        model.parse_network_set(
            {
                "kind": "GlobalNetworkSet",
                "metadata": {"name": "ext", "labels": {"role": "ext"}},
                "spec": {"nets": ["192.168.0.0/16"]},
            }
        )
    )
    calc.put_policy(pol("g", {"selector": "all()", "ingress": [
        {"action": "Allow", "protocol": "TCP", "destination": {"ports": ["http"]}},
        {"action": "Deny", "source": {"selector": "role == 'ext'"}},
    ]}, ns=""))  # fmt: skip
    npk = NamedPortKey(parse("all()"), 6, "http")
    assert calc.named_port_elements(npk, 4) == {("10.0.0.1", 8080)}
    assert calc.netsets_of(parse("role == 'ext'")) == [("", "ext")]
    assert calc.active_netsets() == {("", "ext")}


def test_an_unparseable_policy_closes_what_it_may_select() -> None:
    calc = world()
    key = model.PolicyKey("NetworkPolicy", "prod", "broken")
    calc.put_broken_policy(key, "bad rule", None)
    assert calc.closed(("prod", "web")) == [key] and calc.closed(("prod", "db")) == [key]
    calc.delete_policy(key)
    assert calc.closed(("prod", "web")) == []


def test_an_interface_change_rewrites_the_member_sets() -> None:
    calc = world()
    calc.put_policy(pol("web", {"selector": "app == 'web'"}))
    calc.dirty.take()
    moved = ep("web", "10.0.0.1", {"app": "web"})
    calc.put_endpoint(
        model.Endpoint(*[moved.namespace, moved.name, moved.node, "calinew"], moved.addresses, moved.labels, moved.profiles)
    )
    dirty = calc.dirty.take()
    assert {k.name for k in dirty.members} == {"web"} and dirty.endpoints == {("prod", "web")}
