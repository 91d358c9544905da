"""Policy resources parsed into what felix computes with, and checked as libcalico-go checks them.

One parser serves both sides: calicoctl runs it on a submitted resource (a `ValidationError`
names the field and the value, nothing is stored), calico-node on what it reads from the
datastore (a resource it cannot parse is not programmed, and what it selects stays closed).

The conversion is libcalico-go's v3 -> v1 (syncersv1/updateprocessors): a namespaced
policy's selector gets `projectcalico.org/namespace == '<ns>'`; a rule's selector is limited to
the policy's namespace, or to the namespaces its namespaceSelector picks (labels prefixed
`pcns.`, `all()` meaning any namespace, `global()` none), as soon as any selector field is
used; a NetworkSet carries its namespace label and inherits the `kns.<ns>` profile's labels.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycni.calico import selector as sel
from pycni.calico.resources import ValidationError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_TIER = "projectcalico.org/tier"
NAMESPACE_LABEL_PREFIX = "pcns."
SERVICE_ACCOUNT_LABEL_PREFIX = "pcsa."
NAMESPACE_PROFILE_PREFIX = "kns."
K8S_POLICY_PREFIX = "knp.default."
DEFAULT_TIER = "default"

ACTIONS = ("Allow", "Deny", "Log", "Pass")
PROTOCOLS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132, "UDPLite": 136}
PORT_PROTOCOLS = {6, 17, 132, 136}
ICMP = {4: 1, 6: 58}

_LABEL_NAME = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN = rf"{_LABEL_NAME}(\.{_LABEL_NAME})*"
NAME_RE = re.compile(rf"^{_SUBDOMAIN}\Z")
NETWORK_POLICY_NAME_RE = re.compile(rf"^(({_LABEL_NAME})(\.{_LABEL_NAME})?|((?:knp|ossg)\.default\.({_SUBDOMAIN})))\Z")
GLOBAL_POLICY_NAME_RE = re.compile(rf"^({_LABEL_NAME}\.)?{_LABEL_NAME}\Z")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")


# -- the parsed model -------------------------------------------------------------------------


@dataclass(frozen=True)
class Port:
    """A port, a range `min:max`, or a named port (`name`, resolved per endpoint)."""

    first: int = 0
    last: int = 0
    name: str = ""

    def __str__(self) -> str:
        if self.name:
            return self.name
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


@dataclass(frozen=True)
class Entity:
    """One side of a rule, with its selectors resolved (namespace included)."""

    nets: tuple[IPNetwork, ...] = ()
    not_nets: tuple[IPNetwork, ...] = ()
    selector: sel.Selector | None = None
    not_selector: sel.Selector | None = None
    ports: tuple[Port, ...] = ()
    not_ports: tuple[Port, ...] = ()

    def selectors(self) -> list[sel.Selector]:
        return [s for s in (self.selector, self.not_selector) if s is not None]


@dataclass(frozen=True)
class Rule:
    action: str  # Allow, Deny, Log, Pass
    ip_version: int | None = None
    protocol: int | None = None
    not_protocol: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_type: int | None = None
    not_icmp_code: int | None = None
    src: Entity = field(default_factory=Entity)
    dst: Entity = field(default_factory=Entity)


@dataclass(frozen=True)
class PolicyKey:
    kind: str  # NetworkPolicy or GlobalNetworkPolicy
    namespace: str  # "" for a global policy
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def sort_key(self) -> str:
        # felix's tie-break for equal orders: "name/namespace/kind"
        return f"{self.name}/{self.namespace}/{self.kind}"


@dataclass(frozen=True)
class Policy:
    key: PolicyKey
    order: float | None
    selector: sel.Selector
    ingress: bool
    egress: bool
    inbound: tuple[Rule, ...] = ()
    outbound: tuple[Rule, ...] = ()

    def sort_key(self) -> tuple[float, str]:
        return (float("inf") if self.order is None else self.order, self.key.sort_key())


@dataclass(frozen=True)
class Profile:
    name: str
    inbound: tuple[Rule, ...] = ()
    outbound: tuple[Rule, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NamedPort:
    name: str
    protocol: int
    port: int


@dataclass(frozen=True)
class Endpoint:
    """A WorkloadEndpoint as the policy calculation needs it."""

    namespace: str
    name: str
    node: str
    iface: str
    addresses: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    labels: tuple[tuple[str, str], ...]
    profiles: tuple[str, ...]
    ports: tuple[NamedPort, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class NetworkSet:
    namespace: str  # "" for a GlobalNetworkSet
    name: str
    nets: tuple[IPNetwork, ...]
    labels: tuple[tuple[str, str], ...]
    profiles: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


# -- checks -----------------------------------------------------------------------------------


def as_object(value: Any, path: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(path, value, "must be an object")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(path, value, "must be a list")
    return value


def check_known(obj: Mapping[str, Any], path: str, known: Sequence[str], what: str) -> None:
    for key in obj:
        if key not in known:
            raise ValidationError(f"{path}.{key}" if path else key, obj[key], f"unknown field of {what}")


def _int(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(path, value, f"must be an integer from {low} to {high}")
    return value


def parse_selector(text: Any, path: str, allow_global: bool = False) -> sel.Selector:
    if not isinstance(text, str):
        raise ValidationError(path, text, "a selector is a string")
    try:
        parsed = sel.parse(text)
    except sel.SelectorError as exc:
        raise ValidationError(path, text, str(exc)) from None
    if parsed.uses_global() and not allow_global:
        raise ValidationError(path, text, "global() can only be used in an EntityRule namespaceSelector")
    return parsed


def check_labels(labels: Any, path: str) -> dict[str, str]:
    """Kubernetes label syntax (qualified names, values of at most 63 characters), as Calico checks it."""
    checked: dict[str, str] = as_object(labels, path)
    for key, value in checked.items():
        prefix, _, name = key.rpartition("/") if "/" in key else ("", "", key)
        if (
            not isinstance(key, str)
            or not name
            or len(name) > 63
            or not _QUALIFIED.match(name)
            or (prefix and (len(prefix) > 253 or not NAME_RE.match(prefix)))
        ):
            raise ValidationError(f"{path}.{key}", key, "not a valid label name (a qualified name, e.g. app or example.com/app)")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise ValidationError(f"{path}.{key}", value, "not a valid label value (at most 63 letters, digits, '-', '_', '.')")
    return checked


def parse_protocol(value: Any, path: str) -> int:
    if isinstance(value, str) and value in PROTOCOLS:
        return PROTOCOLS[value]
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 1 <= value <= 255:
            return value
        raise ValidationError(path, value, "protocol number invalid (1-255)")
    raise ValidationError(path, value, f"protocol name invalid (one of {', '.join(PROTOCOLS)}, or a number 1-255)")


def parse_port(value: Any, path: str) -> Port:
    """A port as numorstring.Port reads it: 80, "80", "8000:9000", or a port name."""
    if isinstance(value, bool):
        raise ValidationError(path, value, "not a port")
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValidationError(path, value, "port range invalid, port number must be between 1 and 65535")
        return Port(value, value)
    if not isinstance(value, str) or not value:
        raise ValidationError(path, value, "not a port, port range or port name")
    if re.fullmatch(r"\d+", value):
        return parse_port(int(value), path)
    if re.fullmatch(r"\d+:\d+", value):
        first, last = (int(x) for x in value.split(":"))
        if not (1 <= first <= 65535 and 1 <= last <= 65535):
            raise ValidationError(path, value, "port range invalid, port number must be between 1 and 65535")
        if first > last:
            raise ValidationError(path, value, "port range invalid (the first port is above the last)")
        return Port(first, last)
    if len(value) > 15 or not _PORT_NAME.match(value) or "--" in value or not re.search("[a-z]", value):
        raise ValidationError(path, value, "not a port, a range 'first:last', or a valid port name (IANA_SVC_NAME)")
    return Port(name=value)


def parse_nets(values: Any, path: str, negated: bool = False) -> tuple[IPNetwork, ...]:
    out: list[IPNetwork] = []
    for i, value in enumerate(_list(values, path)):
        try:
            net = ipaddress.ip_network(str(value), strict=False) if isinstance(value, str) else None
        except ValueError:
            net = None
        if net is None:
            raise ValidationError(f"{path}[{i}]", value, "invalid CIDR")
        if negated and net.prefixlen == 0:
            raise ValidationError(
                f"{path}[{i}]", value, "catch-all CIDR in negation creates logical contradiction (matches no traffic)"
            )
        out.append(net)
    return tuple(out)


_ENTITY_FIELDS = ("nets", "notNets", "selector", "notSelector", "namespaceSelector", "ports", "notPorts",
                  "serviceAccounts", "services")  # fmt: skip
_RULE_FIELDS = ("action", "ipVersion", "protocol", "icmp", "notProtocol", "notICMP", "source", "destination", "http",
                "metadata")  # fmt: skip


def _entity_selector(raw: dict[str, Any], path: str, namespace: str) -> tuple[sel.Selector | None, sel.Selector | None]:
    """The entity's selector as felix gets it (updateprocessors' getEndpointSelector), and its notSelector."""
    ns_text = raw.get("namespaceSelector") or ""
    selector_text = raw.get("selector") or ""
    not_text = raw.get("notSelector") or ""
    parts: list[str] = []
    accounts = as_object(raw.get("serviceAccounts"), f"{path}.serviceAccounts")
    check_known(accounts, f"{path}.serviceAccounts", ("names", "selector"), "a ServiceAccountMatch")
    if accounts:
        account_parts = []
        if accounts.get("selector"):
            prefixed = parse_selector(accounts["selector"], f"{path}.serviceAccounts.selector").prefixed(
                SERVICE_ACCOUNT_LABEL_PREFIX
            )
            account_parts.append(str(prefixed))
        names = [str(n) for n in _list(accounts.get("names"), f"{path}.serviceAccounts.names")]
        if names:
            account_parts.append(
                str(sel.parse("projectcalico.org/serviceaccount in {" + ", ".join(repr(n) for n in names) + "}"))
            )
        if account_parts:
            parts.append(account_parts[0] if len(account_parts) == 1 else f"({account_parts[0]}) && ({account_parts[1]})")
    if selector_text:
        parts.append(str(parse_selector(selector_text, f"{path}.selector")))
    not_selector = parse_selector(not_text, f"{path}.notSelector") if not_text else None
    ns_selector = ""
    if ns_text:
        parsed_ns = parse_selector(ns_text, f"{path}.namespaceSelector", allow_global=True)
        if parsed_ns.uses_global() and str(parsed_ns) != "global()":
            raise ValidationError(f"{path}.namespaceSelector", ns_text, "global() cannot be combined with other selectors")
        ns_selector = str(parsed_ns.prefixed(NAMESPACE_LABEL_PREFIX))
        ns_selector = ns_selector.replace("all()", f"has({LABEL_NAMESPACE})").replace("global()", f"!has({LABEL_NAMESPACE})")
    elif namespace:
        ns_selector = f"{LABEL_NAMESPACE} == '{namespace}'"
    combined = ""
    if parts:
        combined = parts[0] if len(parts) == 1 else "(" + ") && (".join(parts) + ")"
    if ns_selector and (combined or not_text or ns_text):
        combined = f"({ns_selector}) && ({combined})" if combined else ns_selector
    return (sel.parse(combined) if combined else None), not_selector


def _entity(raw: Any, path: str, namespace: str) -> Entity:
    raw = as_object(raw, path)
    check_known(raw, path, _ENTITY_FIELDS, "an EntityRule")
    if raw.get("services"):
        raise ValidationError(
            f"{path}.services", raw["services"], "Kubernetes Service matches need the Kubernetes API, which pycni does not have"
        )
    selector, not_selector = _entity_selector(raw, path, namespace)
    return Entity(
        nets=parse_nets(raw.get("nets"), f"{path}.nets"),
        not_nets=parse_nets(raw.get("notNets"), f"{path}.notNets", negated=True),
        selector=selector,
        not_selector=not_selector,
        ports=tuple(parse_port(p, f"{path}.ports[{i}]") for i, p in enumerate(_list(raw.get("ports"), f"{path}.ports"))),
        not_ports=tuple(
            parse_port(p, f"{path}.notPorts[{i}]") for i, p in enumerate(_list(raw.get("notPorts"), f"{path}.notPorts"))
        ),
    )


def _icmp(raw: Any, path: str) -> tuple[int | None, int | None]:
    raw = as_object(raw, path)
    check_known(raw, path, ("type", "code"), "ICMPFields")
    icmp_type = _int(raw["type"], f"{path}.type", 0, 254) if "type" in raw else None
    icmp_code = _int(raw["code"], f"{path}.code", 0, 255) if "code" in raw else None
    if icmp_code is not None and icmp_type is None:
        raise ValidationError(f"{path}.code", icmp_code, "ICMP code specified without an ICMP type")
    return icmp_type, icmp_code


def parse_rule(raw: Any, path: str, namespace: str = "") -> Rule:
    raw = as_object(raw, path)
    check_known(raw, path, _RULE_FIELDS, "a Rule")
    action = raw.get("action")
    if action not in ACTIONS:
        raise ValidationError(f"{path}.action", action or "", f"must be one of {', '.join(ACTIONS)}")
    if raw.get("http"):
        raise ValidationError(
            f"{path}.http", raw["http"], "HTTP matches need an application-layer proxy, which pycni does not have"
        )
    version = raw.get("ipVersion")
    if version is not None and version not in (4, 6):
        raise ValidationError(f"{path}.ipVersion", version, "must be 4 or 6")
    protocol = parse_protocol(raw["protocol"], f"{path}.protocol") if raw.get("protocol") is not None else None
    not_protocol = parse_protocol(raw["notProtocol"], f"{path}.notProtocol") if raw.get("notProtocol") is not None else None
    for key, value in (("protocol", protocol), ("notProtocol", not_protocol)):
        for family, number in ICMP.items():
            if value == number and version not in (None, family):
                name = "ICMP" if family == 4 else "ICMPv6"
                raise ValidationError(f"{path}.{key}", raw[key], f"protocol {name} requires ipVersion {family}")
    icmp_type, icmp_code = _icmp(raw.get("icmp"), f"{path}.icmp")
    not_type, not_code = _icmp(raw.get("notICMP"), f"{path}.notICMP")
    for key, value in (("icmp", icmp_type), ("notICMP", not_type)):
        if value is not None and protocol not in ICMP.values():
            raise ValidationError(f"{path}.{key}", raw[key], "ICMP fields require protocol to be ICMP or ICMPv6")
    src = _entity(raw.get("source"), f"{path}.source", namespace)
    dst = _entity(raw.get("destination"), f"{path}.destination", namespace)
    for side, entity in (("source", src), ("destination", dst)):
        for key, ports in (("ports", entity.ports), ("notPorts", entity.not_ports)):
            numeric = any(not p.name for p in ports)
            if protocol is None and numeric:
                raise ValidationError(
                    f"{path}.{side}.{key}", [str(p) for p in ports],
                    "rules with numeric port or port range must set protocol to TCP or UDP or SCTP",
                )  # fmt: skip
            if protocol is not None and protocol not in PORT_PROTOCOLS and ports:
                raise ValidationError(
                    f"{path}.{side}.{key}",
                    [str(p) for p in ports],
                    "rules that specify ports must set protocol to TCP or UDP or SCTP",
                )
    families: set[int] = set()
    for side, entity in (("source", src), ("destination", dst)):
        for key, nets in (("nets", entity.nets), ("notNets", entity.not_nets)):
            versions = {n.version for n in nets}
            if version is not None and versions - {version}:
                raise ValidationError(
                    f"{path}.{side}.{key}", [str(n) for n in nets], "rule IP version doesn't match CIDR version"
                )
            families |= versions
            if len(families) > 1:
                raise ValidationError(f"{path}.{side}.{key}", [str(n) for n in nets], "rule contains both IPv4 and IPv6 CIDRs")
    return Rule(
        action=action,
        ip_version=version,
        protocol=protocol,
        not_protocol=not_protocol,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
        not_icmp_type=not_type,
        not_icmp_code=not_code,
        src=src,
        dst=dst,
    )


def parse_rules(raw: Any, path: str, namespace: str = "") -> tuple[Rule, ...]:
    return tuple(parse_rule(r, f"{path}[{i}]", namespace) for i, r in enumerate(_list(raw, path)))


def default_types(spec: Mapping[str, Any]) -> list[str]:
    """libcalico-go's defaultPolicyTypesField: Ingress, unless there are only egress rules."""
    if spec.get("egress") and spec.get("ingress"):
        return ["Ingress", "Egress"]
    if spec.get("egress"):
        return ["Egress"]
    return ["Ingress"]


def parse_order(value: Any, path: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValidationError(path, value, "must be a number")
    return float(value)


def _types(spec: Mapping[str, Any], path: str) -> tuple[bool, bool]:
    types = _list(spec.get("types"), f"{path}.types") or default_types(spec)
    seen: set[str] = set()
    for t in types:
        if t not in ("Ingress", "Egress"):
            raise ValidationError(f"{path}.types", t, "must be Ingress or Egress")
        if t in seen:
            raise ValidationError(f"{path}.types", types, f"'{t}' type specified more than once")
        seen.add(t)
    return "Ingress" in seen, "Egress" in seen


POLICY_FIELDS = ("tier", "order", "ingress", "egress", "selector", "types", "serviceAccountSelector", "performanceHints")
GLOBAL_POLICY_FIELDS = (*POLICY_FIELDS, "doNotTrack", "preDNAT", "applyOnForward", "namespaceSelector")


def _policy_selector(spec: Mapping[str, Any], namespace: str) -> sel.Selector:
    """The policy's endpoint selector as felix gets it (network/globalnetworkpolicyprocessor)."""
    text = str(parse_selector(spec.get("selector") or "", "spec.selector")) if spec.get("selector") else ""
    if namespace:
        ns = f"{LABEL_NAMESPACE} == '{namespace}'"
        text = f"({text}) && {ns}" if text else ns
    ns_text = spec.get("namespaceSelector") or ""
    if ns_text:
        prefixed = str(parse_selector(ns_text, "spec.namespaceSelector").prefixed(NAMESPACE_LABEL_PREFIX))
        text = f"({text}) && {prefixed}" if text else prefixed
        text = text.replace("all()", f"has({LABEL_NAMESPACE})")
    account_text = spec.get("serviceAccountSelector") or ""
    if account_text:
        prefixed = str(parse_selector(account_text, "spec.serviceAccountSelector").prefixed(SERVICE_ACCOUNT_LABEL_PREFIX))
        text = f"({text}) && {prefixed}" if text else prefixed
        if not namespace:
            text = text.replace("all()", "has(projectcalico.org/serviceaccount)")
    return sel.parse(text) if text else sel.ALL


def parse_policy(obj: Mapping[str, Any]) -> Policy:
    """A NetworkPolicy or GlobalNetworkPolicy resource (stored or submitted)."""
    kind = str(obj.get("kind", ""))
    meta = as_object(obj.get("metadata"), "metadata")
    spec = as_object(obj.get("spec"), "spec")
    namespaced = kind == "NetworkPolicy"
    namespace = str(meta.get("namespace") or "default") if namespaced else ""
    check_known(spec, "spec", POLICY_FIELDS if namespaced else GLOBAL_POLICY_FIELDS, f"a {kind}")
    tier = spec.get("tier") or DEFAULT_TIER
    if tier != DEFAULT_TIER:
        raise ValidationError("spec.tier", tier, "only the default tier is supported (pycni has no Tier resources)")
    for key in ("doNotTrack", "preDNAT"):
        if spec.get(key):
            raise ValidationError(
                f"spec.{key}", spec[key], "untracked and pre-DNAT policies apply to host endpoints, which pycni does not support"
            )
    ingress, egress = _types(spec, "spec")
    return Policy(
        key=PolicyKey(kind, namespace, str(meta.get("name", ""))),
        order=parse_order(spec.get("order"), "spec.order"),
        selector=_policy_selector(spec, namespace),
        ingress=ingress,
        egress=egress,
        inbound=parse_rules(spec.get("ingress"), "spec.ingress", namespace),
        outbound=parse_rules(spec.get("egress"), "spec.egress", namespace),
    )


def parse_profile(obj: Mapping[str, Any]) -> Profile:
    meta = as_object(obj.get("metadata"), "metadata")
    spec = as_object(obj.get("spec"), "spec")
    check_known(spec, "spec", ("ingress", "egress", "labelsToApply"), "a Profile")
    labels = check_labels(spec.get("labelsToApply"), "spec.labelsToApply")
    return Profile(
        name=str(meta.get("name", "")),
        inbound=parse_rules(spec.get("ingress"), "spec.ingress"),
        outbound=parse_rules(spec.get("egress"), "spec.egress"),
        labels=tuple(sorted(labels.items())),
    )


def parse_network_set(obj: Mapping[str, Any]) -> NetworkSet:
    kind = str(obj.get("kind", ""))
    meta = as_object(obj.get("metadata"), "metadata")
    spec = as_object(obj.get("spec"), "spec")
    check_known(spec, "spec", ("nets",), f"a {kind}")
    labels = dict(check_labels(meta.get("labels"), "metadata.labels"))
    if LABEL_NAMESPACE in labels:
        raise ValidationError("metadata.labels", LABEL_NAMESPACE, f"{LABEL_NAMESPACE} is not a valid label name")
    namespace = str(meta.get("namespace") or "default") if kind == "NetworkSet" else ""
    profiles: tuple[str, ...] = ()
    if namespace:
        labels[LABEL_NAMESPACE] = namespace
        profiles = (NAMESPACE_PROFILE_PREFIX + namespace,)
    return NetworkSet(
        namespace=namespace,
        name=str(meta.get("name", "")),
        nets=parse_nets(spec.get("nets"), "spec.nets"),
        labels=tuple(sorted(labels.items())),
        profiles=profiles,
    )


def parse_endpoint(obj: Mapping[str, Any]) -> Endpoint:
    """A WorkloadEndpoint (written by the CNI plugin or calicoctl)."""
    meta = as_object(obj.get("metadata"), "metadata")
    spec = as_object(obj.get("spec"), "spec")
    addresses = tuple(ipaddress.ip_interface(str(n)).ip for n in _list(spec.get("ipNetworks"), "spec.ipNetworks"))
    ports: list[NamedPort] = []
    for i, port in enumerate(_list(spec.get("ports"), "spec.ports")):
        port = as_object(port, f"spec.ports[{i}]")
        if port.get("name") and port.get("port"):
            protocol = parse_protocol(port.get("protocol") or "TCP", f"spec.ports[{i}].protocol")
            ports.append(NamedPort(str(port["name"]), protocol, _int(port["port"], f"spec.ports[{i}].port", 1, 65535)))
    labels = as_object(meta.get("labels"), "metadata.labels")
    return Endpoint(
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name", "")),
        node=str(spec.get("node") or ""),
        iface=str(spec.get("interfaceName") or ""),
        addresses=addresses,
        labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        profiles=tuple(str(p) for p in _list(spec.get("profiles"), "spec.profiles")),
        ports=tuple(ports),
    )
