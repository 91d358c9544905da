"""The policy resource kinds as calicoctl handles them: validation, libcalico-go's defaults,
and calicoctl's table columns.

Defaults are libcalico-go's (api/pkg/defaults): `types` from the rules present (Ingress,
unless there are only egress rules), and the `projectcalico.org/tier` label. pycni has only
the default tier, and writes `tier: default` so that the TIER column reads as on Calico.
Every check is `model.py`'s: a document is parsed exactly as calico-node will parse it, so what
calicoctl stores, calico-node can program.
"""

from __future__ import annotations

from typing import Any

from pycni.calico.policy import model
from pycni.calico.resources import Kind, Resource, ValidationError

NETWORK_POLICY = Kind("NetworkPolicy", "networkpolicies", namespaced=True)
GLOBAL_NETWORK_POLICY = Kind("GlobalNetworkPolicy", "globalnetworkpolicies")
PROFILE = Kind("Profile", "profiles")
NETWORK_SET = Kind("NetworkSet", "networksets", namespaced=True)
GLOBAL_NETWORK_SET = Kind("GlobalNetworkSet", "globalnetworksets")

POLICY_SPEC_ORDER = ("tier", "order", "selector", "namespaceSelector", "serviceAccountSelector", "ingress", "egress",
                     "doNotTrack", "preDNAT", "applyOnForward", "types", "performanceHints")  # fmt: skip
PROFILE_SPEC_ORDER = ("ingress", "egress", "labelsToApply")
RULE_ORDER = ("action", "ipVersion", "protocol", "icmp", "notProtocol", "notICMP", "source", "destination", "http", "metadata")
ENTITY_ORDER = ("nets", "selector", "namespaceSelector", "services", "ports", "notNets", "notSelector", "notPorts",
                "serviceAccounts")  # fmt: skip


def _meta(obj: Resource, kind: str, name_re: Any, namespaced: bool) -> dict[str, Any]:
    if obj.get("kind", kind) != kind:
        raise ValidationError("kind", obj.get("kind"), f"expected {kind}")
    meta = dict(obj.get("metadata") or {})
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValidationError("metadata.name", "", f"a {kind} needs a name")
    if len(name) > 253:
        raise ValidationError("metadata.name", name, f"name is too long by {len(name) - 253} bytes")
    if not name_re.match(name):
        raise ValidationError("metadata.name", name, "name must consist of lower case alphanumeric characters, '-' or '.'")
    if namespaced:
        namespace = meta.get("namespace") or "default"
        if not isinstance(namespace, str) or len(namespace) > 63 or not model.NAME_RE.match(namespace) or "." in namespace:
            raise ValidationError("metadata.namespace", namespace, "not a valid namespace name (a DNS-1123 label)")
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)
    if "labels" in meta:
        model.check_labels(meta["labels"], "metadata.labels")
    return meta


def _number(value: float | None) -> int | float | None:
    """An order as Go's encoding/json writes a float64: 1000, not 1000.0."""
    if value is None:
        return None
    return int(value) if value.is_integer() and abs(value) < 1e15 else value


def validate_policy(obj: Resource, kind: str) -> Resource:
    namespaced = kind == NETWORK_POLICY.kind
    meta = _meta(obj, kind, model.NETWORK_POLICY_NAME_RE if namespaced else model.GLOBAL_POLICY_NAME_RE, namespaced)
    doc: dict[str, Any] = {
        "kind": kind,
        "apiVersion": "projectcalico.org/v3",
        "metadata": meta,
        "spec": dict(obj.get("spec") or {}),
    }
    policy = model.parse_policy(doc)  # every field checked, as calico-node will read it
    spec = doc["spec"]
    spec["tier"] = model.DEFAULT_TIER
    if "order" in spec:
        spec["order"] = _number(policy.order)
    if not spec.get("types"):
        spec["types"] = [t for t, on in (("Ingress", policy.ingress), ("Egress", policy.egress)) if on]
    meta["labels"] = {**(meta.get("labels") or {}), model.LABEL_TIER: model.DEFAULT_TIER}
    return doc


def validate_network_policy(obj: Resource) -> Resource:
    name = str((obj.get("metadata") or {}).get("name") or "")
    if name.startswith(model.K8S_POLICY_PREFIX) and not obj.get("_k8s"):
        raise ValidationError(
            "metadata.name", name,
            "kubernetes network policies must be managed through the kubernetes API: apply the networking.k8s.io/v1 "
            "NetworkPolicy instead",
        )  # fmt: skip
    obj = {k: v for k, v in obj.items() if k != "_k8s"}
    return validate_policy(obj, NETWORK_POLICY.kind)


def validate_global_network_policy(obj: Resource) -> Resource:
    return validate_policy(obj, GLOBAL_NETWORK_POLICY.kind)


def validate_profile(obj: Resource) -> Resource:
    meta = _meta(obj, PROFILE.kind, model.NAME_RE, False)
    doc = {"kind": PROFILE.kind, "apiVersion": "projectcalico.org/v3", "metadata": meta, "spec": dict(obj.get("spec") or {})}
    model.parse_profile(doc)
    return doc


def _validate_set(obj: Resource, kind: Kind) -> Resource:
    meta = _meta(obj, kind.kind, model.NAME_RE, kind.namespaced)
    doc = {"kind": kind.kind, "apiVersion": "projectcalico.org/v3", "metadata": meta, "spec": dict(obj.get("spec") or {})}
    model.parse_network_set(doc)
    return doc


def validate_network_set(obj: Resource) -> Resource:
    return _validate_set(obj, NETWORK_SET)


def validate_global_network_set(obj: Resource) -> Resource:
    return _validate_set(obj, GLOBAL_NETWORK_SET)


# -- calicoctl's columns ------------------------------------------------------------------------


def go_number(value: Any) -> str:
    """A number as Go's text/template prints a *float64 (`<nil>` when unset)."""
    if value is None:
        return "<nil>"
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 1e21 else repr(number)


def policy_columns(obj: Resource) -> dict[str, str]:
    spec = obj.get("spec") or {}
    return {
        "NAME": obj["metadata"]["name"],
        "TIER": str(spec.get("tier", "")),
        "ORDER": go_number(spec.get("order")),
        "SELECTOR": str(spec.get("selector", "")),
    }


def profile_columns(obj: Resource) -> dict[str, str]:
    labels = (obj.get("spec") or {}).get("labelsToApply") or {}
    return {"NAME": obj["metadata"]["name"], "LABELS": ",".join(sorted(f"{k}={v}" for k, v in labels.items()))}


def set_columns(obj: Resource) -> dict[str, str]:
    nets = ",".join((obj.get("spec") or {}).get("nets") or [])
    return {"NAME": obj["metadata"]["name"], "NETS": nets if len(nets) <= 80 else nets[:77] + "..."}


def order_rule(rule: dict[str, Any]) -> dict[str, Any]:
    out = {k: rule[k] for k in RULE_ORDER if k in rule}
    for side in ("source", "destination"):
        if isinstance(out.get(side), dict):
            entity = out[side]
            out[side] = {k: entity[k] for k in ENTITY_ORDER if k in entity} | {
                k: v for k, v in entity.items() if k not in ENTITY_ORDER
            }
    return out | {k: v for k, v in rule.items() if k not in out}
