"""Kubernetes NetworkPolicies (networking.k8s.io/v1) stored as Calico stores them.

With etcd, Calico's kube-controllers writes each Kubernetes NetworkPolicy as a Calico
NetworkPolicy named `knp.default.<name>` in the policy's namespace, converted by libcalico-go
(backend/k8s/conversion, K8sNetworkPolicyToCalico): order 1000; the pod selector (and every peer
pod selector) ANDed with `projectcalico.org/orchestrator == 'k8s'`; one Allow rule per
protocol and peer, each protocol's ports merged into ranges; a missing protocol is TCP; an
empty namespaceSelector is `all()`; ipBlock becomes nets and notNets; endPort a range; types
from policyTypes, else Ingress only. pycni has no Kubernetes API: `calicoctl apply` of the
Kubernetes object does what kube-controllers would, after the checks the API server makes.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pycni.calico.policy import model
from pycni.calico.resources import ValidationError

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
ORDER = 1000
_SPEC_FIELDS = ("podSelector", "policyTypes", "ingress", "egress")
_PROTOCOLS = ("TCP", "UDP", "SCTP")


def is_k8s_policy(doc: dict[str, Any]) -> bool:
    return doc.get("apiVersion") == API_VERSION and doc.get("kind") == KIND


def policy_name(name: str) -> str:
    return model.K8S_POLICY_PREFIX + name


def label_selector(raw: Any, path: str, pod: bool) -> str:
    """A metav1.LabelSelector as a Calico selector (k8sSelectorToCalico)."""
    parts = ["projectcalico.org/orchestrator == 'k8s'"] if pod else []
    if raw is None:
        return " && ".join(parts)
    raw = model.as_object(raw, path)
    model.check_known(raw, path, ("matchLabels", "matchExpressions"), "a Kubernetes NetworkPolicy")
    labels = model.check_labels(raw.get("matchLabels"), f"{path}.matchLabels")
    expressions = raw.get("matchExpressions") or []
    if not pod and not labels and not expressions:
        return "all()"
    for key in sorted(labels):
        parts.append(f"{key} == '{labels[key]}'")
    if not isinstance(expressions, list):
        raise ValidationError(f"{path}.matchExpressions", expressions, "must be a list")
    for i, expr in enumerate(expressions):
        where = f"{path}.matchExpressions[{i}]"
        expr = model.as_object(expr, where)
        model.check_known(expr, where, ("key", "operator", "values"), "a Kubernetes NetworkPolicy")
        label, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        model.check_labels({label: ""} if isinstance(label, str) else {"": ""}, f"{where}.key")
        if op in ("In", "NotIn"):
            if not values or not all(isinstance(v, str) for v in values):
                raise ValidationError(f"{where}.values", values, f"must be non-empty when operator is {op}")
            listed = "', '".join(values)
            parts.append(f"{label} {'in' if op == 'In' else 'not in'} {{ '{listed}' }}")
        elif op in ("Exists", "DoesNotExist"):
            if values:
                raise ValidationError(f"{where}.values", values, f"must be empty when operator is {op}")
            parts.append(f"has({label})" if op == "Exists" else f"! has({label})")
        else:
            raise ValidationError(f"{where}.operator", op, "not a valid selector operator (In, NotIn, Exists, DoesNotExist)")
    return " && ".join(parts)


def _peer(raw: Any, path: str) -> dict[str, Any]:
    """One NetworkPolicyPeer as the selector, namespaceSelector, nets and notNets of an entity rule."""
    raw = model.as_object(raw, path)
    model.check_known(raw, path, ("podSelector", "namespaceSelector", "ipBlock"), "a Kubernetes NetworkPolicy")
    if "ipBlock" in raw:
        if "podSelector" in raw or "namespaceSelector" in raw:
            raise ValidationError(f"{path}.ipBlock", raw["ipBlock"], "may not be specified with podSelector or namespaceSelector")
        block = model.as_object(raw["ipBlock"], f"{path}.ipBlock")
        model.check_known(block, f"{path}.ipBlock", ("cidr", "except"), "a Kubernetes NetworkPolicy")
        try:
            cidr = ipaddress.ip_network(str(block.get("cidr")), strict=False)
        except ValueError:
            raise ValidationError(f"{path}.ipBlock.cidr", block.get("cidr"), "must be a valid CIDR") from None
        if "/" not in str(block.get("cidr")):
            raise ValidationError(f"{path}.ipBlock.cidr", block.get("cidr"), "must be a valid CIDR")
        excepts = []
        for i, text in enumerate(block.get("except") or []):
            try:
                net = ipaddress.ip_network(str(text), strict=False)
            except ValueError:
                raise ValidationError(f"{path}.ipBlock.except[{i}]", text, "must be a valid CIDR") from None
            if net.version != cidr.version or not net.subnet_of(cidr) or net == cidr:  # type: ignore[arg-type]
                raise ValidationError(f"{path}.ipBlock.except[{i}]", text, f"must be a strict subset of {cidr}")
            excepts.append(str(net))
        out: dict[str, Any] = {"nets": [str(cidr)]}
        if excepts:
            out["notNets"] = excepts
        return out
    if raw.get("podSelector") is None and raw.get("namespaceSelector") is None:
        raise ValidationError(path, raw, "must specify a podSelector, a namespaceSelector or an ipBlock")
    out = {"selector": label_selector(raw.get("podSelector"), f"{path}.podSelector", pod=True)}
    if raw.get("namespaceSelector") is not None:
        out["namespaceSelector"] = label_selector(raw["namespaceSelector"], f"{path}.namespaceSelector", pod=False)
    return out


def _ports(raw: Any, path: str) -> dict[str, list[Any] | None]:
    """protocol -> ports (None: every port); {"": None} when a port entry allows everything."""
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise ValidationError(path, raw, "must be a list")
    by_protocol: dict[str, list[Any] | None] = {}
    if not raw:
        return {"": None}
    for i, entry in enumerate(raw):
        where = f"{path}[{i}]"
        entry = model.as_object(entry, where)
        model.check_known(entry, where, ("protocol", "port", "endPort"), "a Kubernetes NetworkPolicy")
        protocol = entry.get("protocol") or "TCP"
        if protocol not in _PROTOCOLS:
            raise ValidationError(f"{where}.protocol", protocol, "supported values: TCP, UDP, SCTP")
        port = entry.get("port")
        end = entry.get("endPort")
        ports: list[Any] | None
        if port is None:
            if end is not None:
                raise ValidationError(f"{where}.endPort", end, "may not be specified when port is not specified")
            ports = None
        else:
            parsed = model.parse_port(port, f"{where}.port")
            if parsed.first != parsed.last:
                raise ValidationError(f"{where}.port", port, "must be a port number or a port name")
            if end is not None:
                if parsed.name:
                    raise ValidationError(f"{where}.endPort", end, "may not be specified when port is a named port")
                if isinstance(end, bool) or not isinstance(end, int) or not parsed.first <= end <= 65535:
                    raise ValidationError(f"{where}.endPort", end, "must be greater than or equal to port, at most 65535")
                parsed = model.Port(parsed.first, end)
            ports = [parsed]
        if ports is None:
            by_protocol[protocol] = None
        elif by_protocol.get(protocol, []) is not None:
            by_protocol[protocol] = [*(by_protocol.get(protocol) or []), *ports]
    return by_protocol


def _simplify(ports: list[model.Port]) -> list[Any]:
    """libcalico-go's SimplifyPorts: numeric ports merged into the fewest ranges; names kept."""
    named = [p.name for p in ports if p.name]
    numbers = sorted({n for p in ports if not p.name for n in range(p.first, p.last + 1)})
    if len(ports) <= 1 or len(numbers) <= 1:
        return [_port_json(p) for p in ports]
    out: list[Any] = list(named)
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(_port_json(model.Port(start, prev)))
        if n is not None:
            start = prev = n
    return out


def _port_json(port: model.Port) -> Any:
    if port.name:
        return port.name
    return port.first if port.first == port.last else f"{port.first}:{port.last}"


def _rules(raw: Any, path: str, peers_key: str, ingress: bool) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValidationError(path, raw, "must be a list")
    rules: list[dict[str, Any]] = []
    for i, entry in enumerate(raw):
        where = f"{path}[{i}]"
        entry = model.as_object(entry, where)
        model.check_known(entry, where, (peers_key, "ports"), "a Kubernetes NetworkPolicy")
        peers_raw = entry.get(peers_key) or []
        if not isinstance(peers_raw, list):
            raise ValidationError(f"{where}.{peers_key}", peers_raw, "must be a list")
        peers = [_peer(p, f"{where}.{peers_key}[{j}]") for j, p in enumerate(peers_raw)] or [{}]
        by_protocol = _ports(entry.get("ports"), f"{where}.ports")
        for protocol in sorted(by_protocol):
            ports = by_protocol[protocol]
            for peer in peers:
                rule: dict[str, Any] = {"action": "Allow"}
                if protocol:
                    rule["protocol"] = protocol
                entity = dict(peer)
                if ports:
                    if ingress:
                        rule["destination"] = {"ports": _simplify(ports)}
                    else:
                        entity["ports"] = _simplify(ports)
                if entity:
                    rule["source" if ingress else "destination"] = entity
                rules.append(rule)
    return rules


def to_calico(doc: dict[str, Any]) -> dict[str, Any]:
    """The Calico NetworkPolicy kube-controllers would store for this Kubernetes one."""
    meta = model.as_object(doc.get("metadata"), "metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name or not model.NAME_RE.match(name):
        raise ValidationError("metadata.name", name or "", "a NetworkPolicy needs a DNS-1123 subdomain name")
    spec = model.as_object(doc.get("spec"), "spec")
    model.check_known(spec, "spec", _SPEC_FIELDS, "a NetworkPolicy")
    if "podSelector" not in spec:
        raise ValidationError("spec.podSelector", "", "required (use {} to select every pod in the namespace)")
    selector = label_selector(spec["podSelector"] or {}, "spec.podSelector", pod=True)
    types_raw = spec.get("policyTypes") or []
    if not isinstance(types_raw, list) or any(t not in ("Ingress", "Egress") for t in types_raw):
        raise ValidationError("spec.policyTypes", types_raw, "each must be Ingress or Egress")
    ingress = _rules(spec.get("ingress"), "spec.ingress", "from", True)
    egress = _rules(spec.get("egress"), "spec.egress", "to", False)
    types = [t for t in ("Ingress", "Egress") if t in types_raw] or ["Ingress"]
    out_spec: dict[str, Any] = {"tier": model.DEFAULT_TIER, "order": ORDER, "selector": selector}
    if ingress:
        out_spec["ingress"] = ingress
    if egress:
        out_spec["egress"] = egress  # kept, as Calico keeps them, even where policyTypes lacks Egress
    out_spec["types"] = types
    out_meta = {"name": policy_name(name), "namespace": meta.get("namespace") or "default"}
    return {"kind": "NetworkPolicy", "apiVersion": "projectcalico.org/v3", "metadata": out_meta, "spec": out_spec}
