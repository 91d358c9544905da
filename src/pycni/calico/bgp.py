"""BGPConfiguration and BGPPeer resources: validation and defaults, as libcalico-go checks them.

The global BGPConfiguration is the one named `default`; a node's own is `node.<nodename>`.
A field Calico does not know is an error (calicoctl decodes strictly), naming the field.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pycni.calico import selector
from pycni.calico.resources import Kind, Resource, ValidationError

BGP_CONFIGURATION = Kind("BGPConfiguration", "bgpconfigurations")
BGP_PEER = Kind("BGPPeer", "bgppeers")
DEFAULT_ASN = 64512
GLOBAL_CONFIG = "default"

_CONFIG_FIELDS = {
    "logSeverityScreen", "nodeToNodeMeshEnabled", "asNumber", "serviceLoadBalancerIPs", "serviceExternalIPs",
    "serviceClusterIPs", "listenPort", "bindMode", "communities", "prefixAdvertisements", "nodeMeshPassword",
    "nodeMeshMaxRestartTime", "ignoredInterfaces", "localWorkloadPeeringIPV4", "localWorkloadPeeringIPV6",
    "programClusterRoutes",
}  # fmt: skip
_PEER_FIELDS = {
    "node", "peerIP", "asNumber", "nodeSelector", "peerSelector", "keepOriginalNextHop", "nextHopMode", "password",
    "sourceAddress", "failureDetectionMode", "restartMode", "maxRestartTime", "birdGatewayMode",
    "numAllowedLocalASNumbers", "ttlSecurity", "filters", "localWorkloadSelector", "reachableBy", "keepaliveTime",
    "localASNumber",
}  # fmt: skip
_SEVERITIES = ("Debug", "Info", "Warning", "Error", "Fatal")


def parse_asn(text: str | int) -> int:
    """An AS number as numorstring.ASNumber reads it: "64512" or the dotted "1.10" (4-byte ASN)."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not an AS number")
    if isinstance(text, int):
        value = text
    else:
        raw = str(text).strip()
        if raw.count(".") == 1:
            high, low = raw.split(".")
            if not (high.isdigit() and low.isdigit()) or int(high) > 0xFFFF or int(low) > 0xFFFF:
                raise ValueError(f"{raw!r} is not an AS number")
            value = int(high) << 16 | int(low)
        elif raw.isdigit():
            value = int(raw)
        else:
            raise ValueError(f"{raw!r} is not an AS number")
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{value} is out of range (0-4294967295)")
    return value


def _spec(obj: Resource, kind: str, known: set[str]) -> dict[str, Any]:
    if obj.get("kind", kind) != kind:
        raise ValidationError("kind", obj.get("kind"), f"expected {kind}")
    meta = obj.get("metadata") or {}
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        raise ValidationError("metadata.name", "", f"a {kind} needs a name")
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        raise ValidationError("spec", spec, "not an object")
    for key in spec:
        if key not in known:
            raise ValidationError(f"spec.{key}", spec[key], f"unknown field of a {kind}")
    return dict(spec)


def _check_asn(spec: dict[str, Any], key: str) -> None:
    if key in spec:
        try:
            spec[key] = parse_asn(spec[key])
        except ValueError as exc:
            raise ValidationError(f"spec.{key}", spec[key], str(exc)) from None


def _check_bool(spec: dict[str, Any], key: str) -> None:
    if key in spec and not isinstance(spec[key], bool):
        raise ValidationError(f"spec.{key}", spec[key], "must be true or false")


def _check_selector(spec: dict[str, Any], key: str) -> None:
    if spec.get(key):
        try:
            selector.parse(str(spec[key]))
        except selector.SelectorError as exc:
            raise ValidationError(f"spec.{key}", spec[key], f"invalid selector: {exc}") from None


def _finish(obj: Resource, kind: str, spec: dict[str, Any]) -> Resource:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "namespace"}
    return {"kind": kind, "apiVersion": "projectcalico.org/v3", "metadata": meta, "spec": spec}


def validate_config(obj: Resource) -> Resource:
    spec = _spec(obj, "BGPConfiguration", _CONFIG_FIELDS)
    name = obj["metadata"]["name"]
    _check_asn(spec, "asNumber")
    _check_bool(spec, "nodeToNodeMeshEnabled")
    if "logSeverityScreen" in spec and spec["logSeverityScreen"] not in _SEVERITIES:
        raise ValidationError("spec.logSeverityScreen", spec["logSeverityScreen"], f"must be one of {', '.join(_SEVERITIES)}")
    port = spec.get("listenPort")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
        raise ValidationError("spec.listenPort", port, "must be a port (1-65535)")
    for key in ("serviceClusterIPs", "serviceExternalIPs", "serviceLoadBalancerIPs"):
        for i, item in enumerate(spec.get(key) or []):
            cidr = item.get("cidr") if isinstance(item, dict) else None
            try:
                ipaddress.ip_network(str(cidr), strict=False)
            except ValueError:
                raise ValidationError(f"spec.{key}[{i}].cidr", cidr, "not a CIDR") from None
    if name != GLOBAL_CONFIG and not name.startswith("node."):
        pass  # any name is accepted; only `default` and `node.<name>` are read
    if name.startswith("node.") and ("nodeToNodeMeshEnabled" in spec or "asNumber" in spec):
        field = "nodeToNodeMeshEnabled" if "nodeToNodeMeshEnabled" in spec else "asNumber"
        raise ValidationError(f"spec.{field}", spec[field], "can only be set on the global BGPConfiguration (default)")
    return _finish(obj, "BGPConfiguration", spec)


def split_peer_ip(text: str) -> tuple[str, int]:
    """peerIP as Calico accepts it: an address, `ip:port`, or `[v6]:port`."""
    raw = text.strip()
    port = 0
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
        elif rest:
            raise ValueError(f"{text!r} is not an IP address")
        raw = host
    elif raw.count(":") == 1:
        raw, _, port_text = raw.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"{text!r} is not an IP address")
        port = int(port_text)
    ipaddress.ip_address(raw)
    if port and not 0 < port < 65536:
        raise ValueError(f"{text!r} has an invalid port")
    return raw, port


def validate_peer(obj: Resource) -> Resource:
    spec = _spec(obj, "BGPPeer", _PEER_FIELDS)
    _check_asn(spec, "asNumber")
    _check_asn(spec, "localASNumber")
    _check_bool(spec, "keepOriginalNextHop")
    _check_selector(spec, "nodeSelector")
    _check_selector(spec, "peerSelector")
    if spec.get("node") and spec.get("nodeSelector"):
        raise ValidationError("spec.nodeSelector", spec["nodeSelector"], "cannot be used together with spec.node")
    if spec.get("peerIP") and spec.get("peerSelector"):
        raise ValidationError("spec.peerSelector", spec["peerSelector"], "cannot be used together with spec.peerIP")
    if spec.get("peerIP"):
        try:
            split_peer_ip(str(spec["peerIP"]))
        except ValueError as exc:
            raise ValidationError("spec.peerIP", spec["peerIP"], str(exc)) from None
        if "asNumber" not in spec:
            raise ValidationError("spec.asNumber", "", "required when spec.peerIP is set")
    elif not spec.get("peerSelector"):
        raise ValidationError("spec.peerIP", "", "a BGPPeer needs spec.peerIP or spec.peerSelector")
    if spec.get("sourceAddress", "UseNodeIP") not in ("UseNodeIP", "None"):
        raise ValidationError("spec.sourceAddress", spec["sourceAddress"], "must be UseNodeIP or None")
    if "ttlSecurity" in spec:
        ttl = spec["ttlSecurity"]
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= 255:
            raise ValidationError("spec.ttlSecurity", ttl, "must be a hop count (0-255)")
    return _finish(obj, "BGPPeer", spec)


CONFIG_SPEC_ORDER = (
    "logSeverityScreen", "nodeToNodeMeshEnabled", "nodeMeshPassword", "nodeMeshMaxRestartTime", "asNumber",
    "serviceLoadBalancerIPs", "serviceExternalIPs", "serviceClusterIPs", "communities", "prefixAdvertisements",
    "listenPort", "bindMode", "ignoredInterfaces",
)  # fmt: skip
PEER_SPEC_ORDER = (
    "node", "peerIP", "asNumber", "nodeSelector", "peerSelector", "keepOriginalNextHop", "password", "sourceAddress",
    "maxRestartTime", "numAllowedLocalASNumbers", "ttlSecurity", "filters",
)  # fmt: skip


def config_columns(obj: Resource) -> dict[str, str]:
    """calicoctl's BGPConfiguration table: an unset field shows empty, mesh as true/false."""
    spec = obj.get("spec") or {}
    mesh = spec.get("nodeToNodeMeshEnabled")
    return {
        "NAME": obj["metadata"]["name"],
        "LOGSEVERITY": str(spec.get("logSeverityScreen", "")),
        "MESHENABLED": "" if mesh is None else str(bool(mesh)).lower(),
        "ASNUMBER": str(spec.get("asNumber", "")),
    }


def peer_columns(obj: Resource) -> dict[str, str]:
    spec = obj.get("spec") or {}
    node = spec.get("node") or (f"({spec['nodeSelector']})" if spec.get("nodeSelector") else "(global)")
    return {
        "NAME": obj["metadata"]["name"],
        "PEERIP": str(spec.get("peerIP") or (f"({spec['peerSelector']})" if spec.get("peerSelector") else "")),
        "NODE": str(node),
        "ASN": str(spec.get("asNumber", "")),
    }
