"""The resource types calicoctl handles, as calicoctl's resourcemgr registers them: the names
it accepts on the command line, its table columns, and how each is created, updated and deleted.

A type with nothing special is validated by its `validate` function (if any) and written with
the generic compare-and-swap `Resources`; one with side effects (an IPPool must not overlap
another; deleting a Node releases its IPAM blocks) gives its own operations. Adding a type is
one `Manager` in `MANAGERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pycni.calico import bgp, nodes
from pycni.calico.datastore import Datastore
from pycni.calico.endpoints import Endpoints, order_spec
from pycni.calico.policy import resources as policy
from pycni.calico.pools import Pools, normalize
from pycni.calico.resources import IPPOOL, NODE, WORKLOAD_ENDPOINT, Kind, Resource, ResourceError, Resources

Columns = Callable[[Resource], dict[str, str]]
Validate = Callable[[Resource], Resource]


def _generic_create(kind: Kind, validate: Validate | None) -> Callable[[Datastore, Resource], Resource]:
    def create(store: Datastore, doc: Resource) -> Resource:
        return Resources(store, kind).create(validate(doc) if validate else doc)

    return create


def _generic_update(kind: Kind, validate: Validate | None) -> Callable[[Datastore, Resource], Resource]:
    def update(store: Datastore, doc: Resource) -> Resource:
        doc = validate(doc) if validate else doc
        meta = doc.setdefault("metadata", {})
        current = Resources(store, kind).get(meta.get("name", ""), meta.get("namespace"))
        if current is None:
            where = f"{meta.get('namespace')}/" if kind.namespaced else ""
            raise ResourceError(f"resource does not exist: {kind.kind}({where}{meta.get('name', '')})")
        for key in ("uid", "creationTimestamp"):
            if key in current["metadata"]:
                meta.setdefault(key, current["metadata"][key])
        return Resources(store, kind).update(doc)

    return update


def _generic_delete(kind: Kind) -> Callable[[Datastore, Resource], None]:
    def delete(store: Datastore, doc: Resource) -> None:
        meta = doc.get("metadata") or {}
        revision = int(meta["resourceVersion"]) if str(meta.get("resourceVersion") or "").isdigit() else None
        Resources(store, kind).delete(str(meta.get("name", "")), meta.get("namespace"), revision)

    return delete


@dataclass(frozen=True)
class Manager:
    kind: Kind
    #: what `calicoctl get|delete|label <type>` accepts (lower case)
    names: tuple[str, ...]
    headings: tuple[str, ...]
    wide_headings: tuple[str, ...]
    #: a resource's table cells by heading (every heading of both tables)
    columns: Columns
    #: validates and fills in defaults; raises ValidationError (or PoolError) naming the field
    validate: Validate | None = None
    #: the order the Go type marshals its spec's fields in (the rest follow)
    spec_order: tuple[str, ...] = ()
    create: Callable[[Datastore, Resource], Resource] | None = None
    update: Callable[[Datastore, Resource], Resource] | None = None
    delete: Callable[[Datastore, Resource], None] | None = None
    #: table cells that need the datastore (e.g. a default read from another resource)
    columns_in: Callable[[Datastore], Columns] | None = None

    def columns_for(self, store: Datastore) -> Columns:
        return self.columns_in(store) if self.columns_in is not None else self.columns

    def do_create(self, store: Datastore, doc: Resource) -> Resource:
        return (self.create or _generic_create(self.kind, self.validate))(store, doc)

    def do_update(self, store: Datastore, doc: Resource) -> Resource:
        return (self.update or _generic_update(self.kind, self.validate))(store, doc)

    def do_delete(self, store: Datastore, doc: Resource) -> None:
        (self.delete or _generic_delete(self.kind))(store, doc)

    def resources(self, store: Datastore) -> Resources:
        return Endpoints(store) if self.kind is WORKLOAD_ENDPOINT else Resources(store, self.kind)


def _bool(value: object) -> str:
    return str(bool(value)).lower()


def _pool_columns(obj: Resource) -> dict[str, str]:
    spec = obj.get("spec") or {}
    return {
        "NAME": obj["metadata"]["name"],
        "CIDR": spec.get("cidr", ""),
        "NAT": _bool(spec.get("natOutgoing")),
        "IPIPMODE": spec.get("ipipMode") or "Never",
        "VXLANMODE": spec.get("vxlanMode") or "Never",
        "DISABLED": _bool(spec.get("disabled")),
        "DISABLEBGPEXPORT": _bool(spec.get("disableBGPExport")),
        "SELECTOR": spec.get("nodeSelector", ""),
    }


def _wep_columns(obj: Resource) -> dict[str, str]:
    spec = obj.get("spec") or {}
    return {
        "NAME": obj["metadata"]["name"],
        "WORKLOAD": spec.get("workload") or spec.get("pod", ""),
        "NODE": spec.get("node", ""),
        "NETWORKS": ",".join(spec.get("ipNetworks") or []),
        "INTERFACE": spec.get("interfaceName", ""),
        "PROFILES": ",".join(spec.get("profiles") or []),
        "NATS": ",".join(f"{{{n.get('internalIP', '')} {n.get('externalIP', '')}}}" for n in spec.get("ipNATs") or []),
    }


def _node_columns(obj: Resource) -> dict[str, str]:
    bgp = (obj.get("spec") or {}).get("bgp") or {}
    asn = str(bgp.get("asNumber", "")) if bgp.get("asNumber") else ("(64512)" if bgp else "")
    return {
        "NAME": obj["metadata"]["name"],
        "ASN": asn,
        "IPV4": bgp.get("ipv4Address", ""),
        "IPV6": bgp.get("ipv6Address", ""),
    }


def _endpoint_delete(store: Datastore, doc: Resource) -> None:
    meta = doc.get("metadata") or {}
    Endpoints(store).delete(str(meta.get("name", "")), str(meta.get("namespace") or "default"))


POOL_SPEC_ORDER = (
    "cidr", "vxlanMode", "ipipMode", "natOutgoing", "disabled", "disableBGPExport", "blockSize", "nodeSelector", "allowedUses",
)  # fmt: skip

MANAGERS: list[Manager] = [
    Manager(
        IPPOOL,
        names=("ippool", "ippools", "ipp", "ipps", "pool", "pools"),
        headings=("NAME", "CIDR", "SELECTOR"),
        wide_headings=("NAME", "CIDR", "NAT", "IPIPMODE", "VXLANMODE", "DISABLED", "DISABLEBGPEXPORT", "SELECTOR"),
        columns=_pool_columns,
        spec_order=POOL_SPEC_ORDER,
        validate=normalize,
        create=lambda store, doc: Pools(store).create(doc),
        update=lambda store, doc: Pools(store).update(doc),
        delete=lambda store, doc: Pools(store).delete(str((doc.get("metadata") or {}).get("name", ""))),
    ),
    Manager(
        WORKLOAD_ENDPOINT,
        names=("workloadendpoint", "workloadendpoints", "wep", "weps"),
        headings=("WORKLOAD", "NODE", "NETWORKS", "INTERFACE"),
        wide_headings=("NAME", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE", "PROFILES", "NATS"),
        columns=_wep_columns,
        delete=_endpoint_delete,
    ),
    Manager(
        NODE,
        names=("node", "nodes", "no", "nos"),
        headings=("NAME",),
        wide_headings=("NAME", "ASN", "IPV4", "IPV6"),
        columns=_node_columns,
        spec_order=("bgp", "ipv4VXLANTunnelAddr", "vxlanTunnelMACAddr", "ipv6VXLANTunnelAddr", "vxlanTunnelMACAddrV6"),
        columns_in=nodes.node_columns,
        delete=nodes.delete_node,
    ),
    Manager(
        bgp.BGP_CONFIGURATION,
        names=("bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs"),
        headings=("NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"),
        wide_headings=("NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"),
        columns=bgp.config_columns,
        validate=bgp.validate_config,
        spec_order=bgp.CONFIG_SPEC_ORDER,
    ),
    Manager(
        bgp.BGP_PEER,
        names=("bgppeer", "bgppeers", "bgpp", "bgpps", "bp", "bps"),
        headings=("NAME", "PEERIP", "NODE", "ASN"),
        wide_headings=("NAME", "PEERIP", "NODE", "ASN"),
        columns=bgp.peer_columns,
        validate=bgp.validate_peer,
        spec_order=bgp.PEER_SPEC_ORDER,
    ),
    Manager(
        policy.NETWORK_POLICY,
        names=("networkpolicy", "networkpolicies", "policy", "np", "policies", "pol", "pols"),
        headings=("NAME", "TIER"),
        wide_headings=("NAME", "TIER", "ORDER", "SELECTOR"),
        columns=policy.policy_columns,
        validate=policy.validate_network_policy,
        spec_order=policy.POLICY_SPEC_ORDER,
    ),
    Manager(
        policy.GLOBAL_NETWORK_POLICY,
        names=("globalnetworkpolicy", "globalnetworkpolicies", "gnp", "gnps"),
        headings=("NAME", "TIER"),
        wide_headings=("NAME", "TIER", "ORDER", "SELECTOR"),
        columns=policy.policy_columns,
        validate=policy.validate_global_network_policy,
        spec_order=policy.POLICY_SPEC_ORDER,
    ),
    Manager(
        policy.PROFILE,
        names=("profile", "profiles", "pro", "pros"),
        headings=("NAME",),
        wide_headings=("NAME", "LABELS"),
        columns=policy.profile_columns,
        validate=policy.validate_profile,
        spec_order=policy.PROFILE_SPEC_ORDER,
    ),
    Manager(
        policy.NETWORK_SET,
        names=("networkset", "networksets", "netsets"),
        headings=("NAME",),
        wide_headings=("NAME", "NETS"),
        columns=policy.set_columns,
        validate=policy.validate_network_set,
    ),
    Manager(
        policy.GLOBAL_NETWORK_SET,
        names=("globalnetworkset", "globalnetworksets", "gnetsets"),
        headings=("NAME",),
        wide_headings=("NAME", "NETS"),
        columns=policy.set_columns,
        validate=policy.validate_global_network_set,
    ),
]


def by_name() -> dict[str, Manager]:
    return {name: manager for manager in MANAGERS for name in manager.names}


def by_kind() -> dict[str, Manager]:
    return {manager.kind.kind: manager for manager in MANAGERS}


def supported() -> Sequence[str]:
    return [manager.names[1] for manager in MANAGERS]


def order_resource_spec(kind: str, spec: Resource) -> Resource:
    if kind == WORKLOAD_ENDPOINT.kind:
        return order_spec(spec)
    manager = by_kind().get(kind)
    order = manager.spec_order if manager else ()
    out = {k: spec[k] for k in order if k in spec} | {k: v for k, v in spec.items() if k not in order}
    for key in ("ingress", "egress"):
        if isinstance(out.get(key), list):
            out[key] = [policy.order_rule(r) if isinstance(r, dict) else r for r in out[key]]
    return out
