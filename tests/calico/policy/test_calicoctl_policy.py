"""calicoctl and the policy kinds: columns, YAML and JSON, Kubernetes NetworkPolicies stored as
knp.default.<name>, namespaces, and errors that name the key and value and store nothing."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import yaml

from pycni.calico.calicoctl import main as calicoctl
from pycni.calico.calicoctl.main import CommandError

POLICIES = """
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: prod}
spec:
  order: 100
  selector: app == 'web'
  ingress: [{action: Allow, protocol: TCP, source: {selector: role == 'fe'}, destination: {ports: [80]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-db}
spec:
  order: 10.5
  selector: app == 'db'
  egress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.prod}
spec:
  labelsToApply: {pcns.team: a, pcns.projectcalico.org/name: prod}
  ingress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: ext, labels: {role: ext}}
spec: {nets: [192.168.0.0/16, 10.9.0.0/24]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: office, namespace: prod}
spec: {nets: [172.16.0.0/12]}
"""
K8S = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {}}], ports: [{port: 80}]}]
"""


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATASTORE_PATH", str(tmp_path / "calico.db"))
    monkeypatch.delenv("DATASTORE_TYPE", raising=False)

    def call(*argv: str, stdin: str = "") -> str:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        return calicoctl.run(argv)

    return call


def test_get_columns_and_documents(run) -> None:  # type: ignore[no-untyped-def]
    assert run("apply", "-f", "-", stdin=POLICIES) == (
        "Successfully applied 5 'GlobalNetworkPolicy', 'GlobalNetworkSet', 'NetworkPolicy', 'NetworkSet', 'Profile' resource(s)\n"
    )
    assert run("get", "networkpolicy", "-n", "prod").splitlines()[:2] == [
        "NAMESPACE   NAME        TIER      ",
        "prod        allow-web   default   ",
    ]
    wide = run("get", "policies", "-A", "-o", "wide").splitlines()
    assert wide[0].split() == ["NAMESPACE", "NAME", "TIER", "ORDER", "SELECTOR"]
    assert wide[1].split() == ["prod", "allow-web", "default", "100", "app", "==", "'web'"]
    assert run("get", "gnp", "-o", "wide").splitlines()[1].split() == ["deny-db", "default", "10.5", "app", "==", "'db'"]
    assert run("get", "profile", "-o", "wide").splitlines()[1].split() == [
        "kns.prod",
        "pcns.projectcalico.org/name=prod,pcns.team=a",
    ]
    assert run("get", "globalnetworksets", "-o", "wide").splitlines()[1].split() == ["ext", "192.168.0.0/16,10.9.0.0/24"]
    assert run("get", "networksets", "-n", "prod").splitlines()[1].split() == ["prod", "office"]
    doc = yaml.safe_load(run("get", "networkpolicy", "allow-web", "-n", "prod", "-o", "yaml"))
    assert doc["spec"]["types"] == ["Ingress"] and doc["spec"]["tier"] == "default"
    assert doc["metadata"]["labels"] == {"projectcalico.org/tier": "default"}
    listed = json.loads(run("get", "gnp", "-o", "json"))
    assert listed["kind"] == "GlobalNetworkPolicyList" and list(listed["items"][0]["spec"]) == [
        "tier",
        "order",
        "selector",
        "egress",
        "types",
    ]


def test_kubernetes_network_policies_are_stored_as_calico_stores_them(run) -> None:  # type: ignore[no-untyped-def]
    assert "Successfully applied 1 'NetworkPolicy'" in run("apply", "-f", "-", stdin=K8S)
    doc = json.loads(run("get", "networkpolicy", "knp.default.web", "-n", "prod", "-o", "json"))
    assert doc["spec"]["selector"] == "projectcalico.org/orchestrator == 'k8s' && app == 'web'"
    assert doc["spec"]["order"] == 1000
    with pytest.raises(CommandError, match="kubernetes network policies must be managed"):
        run("delete", "networkpolicy", "knp.default.web", "-n", "prod")
    assert "Successfully deleted 1 'NetworkPolicy'" in run("delete", "-f", "-", stdin=K8S)
    assert "knp.default.web" not in run("get", "networkpolicy", "-A")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("kind: NetworkPolicy\nmetadata: {name: p}\nspec: {selector: 'app =='}", "error with field spec.selector = 'app =='"),
        ("kind: NetworkPolicy\nmetadata: {name: p}\nspec: {bogus: 1}", "error with field spec.bogus = '1'"),
        (
            "kind: GlobalNetworkPolicy\nmetadata: {name: g}\n"
            "spec: {ingress: [{action: Allow, protocol: UDP, destination: {ports: [0]}}]}",
            "error with field spec.ingress[0].destination.ports[0] = '0'",
        ),
        (
            "kind: NetworkPolicy\nmetadata: {name: p, namespace: dev}\nspec: {}",
            "resource namespace does not match client namespace. dev != prod",
        ),
        (
            "kind: GlobalNetworkPolicy\nmetadata: {name: g, namespace: prod}\nspec: {}",
            "namespace should not be specified for a non-namespaced resource",
        ),
        ("kind: NetworkPolicy\nmetadata: {name: knp.default.x}\nspec: {}", "kubernetes network policies must be managed"),
    ],
)
def test_bad_documents_name_the_key_and_store_nothing(run, document: str, message: str) -> None:  # type: ignore[no-untyped-def]
    good = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: fine, namespace: prod}\nspec: {}\n---\n"
    argv = ["-n", "prod"] if "namespace: dev" in document else []
    with pytest.raises(CommandError) as info:
        run("apply", *argv, "-f", "-", stdin=good + "apiVersion: projectcalico.org/v3\n" + document)
    assert message in str(info.value)
    assert run("get", "networkpolicy", "-A").splitlines()[1:] == [""]
    assert run("get", "gnp").splitlines()[1:] == [""]
