"""WorkloadEndpoints: their names (libcalico-go's names package) and their resources.

A WorkloadEndpoint's name is built from its identifiers joined by `-`, each `-`
inside an identifier doubled so the name can be split back:

    k8s:  <node>-k8s-<pod>-<endpoint>           (namespace: the pod's)
    cni:  <node>-cni-<containerID>-<endpoint>   (namespace: default)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from pycni.calico.datastore import Datastore
from pycni.calico.resources import WORKLOAD_ENDPOINT, Resource, Resources

ORCH_K8S = "k8s"
ORCH_CNI = "cni"


class EndpointNameError(ValueError):
    """An identifier that cannot be part of a WorkloadEndpoint name."""


def _escape(field: str, value: str) -> str:
    if value.startswith("-"):
        raise EndpointNameError(f"{field} {value!r} must not begin with a '-'")
    if value.endswith("-"):
        raise EndpointNameError(f"{field} {value!r} must not end with a '-'")
    return value.replace("-", "--")


def split_name(name: str) -> list[str]:
    """The identifiers of a name: split on single dashes, `--` back to `-`."""
    parts: list[str] = []
    start = 0
    i = 1
    while i < len(name):
        if name[i] == "-":
            if i + 1 < len(name) and name[i + 1] == "-":
                i += 2
                continue
            parts.append(name[start:i].replace("--", "-"))
            start = i + 1
        i += 1
    parts.append(name[start:].replace("--", "-"))
    return parts


@dataclass
class Identifiers:
    node: str
    orchestrator: str
    endpoint: str
    container_id: str
    pod: str = ""
    namespace: str = "default"

    def _segments(self) -> list[tuple[str, str]]:
        if not self.node:
            raise EndpointNameError("node must be set")
        workload = ("pod", self.pod) if self.orchestrator == ORCH_K8S else ("containerID", self.container_id)
        return [("node", self.node), ("orchestrator", self.orchestrator), workload, ("endpoint", self.endpoint)]

    def name(self, prefix_only: bool = False) -> str:
        """The endpoint's name; with `prefix_only`, the name up to the last given identifier."""
        parts: list[str] = []
        for field, value in self._segments():
            if not value:
                if prefix_only:
                    return "-".join(parts) + "-"
                raise EndpointNameError(f"{field} must be set")
            parts.append(_escape(field, value))
        return "-".join(parts)

    def workload_prefix(self) -> str:
        """The name without the endpoint: lists the workload's endpoints, whatever their interface."""
        return Identifiers(self.node, self.orchestrator, "", self.container_id, self.pod, self.namespace).name(True)

    def matches(self, name: str) -> bool:
        """True when `name` is an endpoint of this workload (any interface)."""
        parts = split_name(name)
        wanted = self._segments()
        if len(parts) != len(wanted):
            return False
        return all(not value or value == part for (_, value), part in zip(wanted, parts, strict=True))

    def handle_id(self, network: str) -> str:
        return f"{network}.{self.container_id}"

    def legacy_workload_id(self) -> str:
        """The handle Calico v2 used, still released on DEL for upgraded clusters."""
        return f"{self.namespace}.{self.pod}" if self.orchestrator == ORCH_K8S else self.container_id


def identifiers(node: str, container_id: str, ifname: str, cni_args: dict[str, str]) -> Identifiers:
    pod, namespace = cni_args.get("K8S_POD_NAME", ""), cni_args.get("K8S_POD_NAMESPACE", "")
    if pod and namespace:
        return Identifiers(node, ORCH_K8S, ifname, container_id, pod, namespace)
    return Identifiers(node, ORCH_CNI, ifname, container_id, "", cni_args.get("CNI_TEST_NAMESPACE") or "default")


def host_veth_name(ids: Identifiers) -> str:
    """`cali` + 11 hex digits of sha1("<namespace>.<pod>") for a pod, else of the container ID."""
    if ids.orchestrator == ORCH_K8S:
        return "cali" + hashlib.sha1(f"{ids.namespace}.{ids.pod}".encode()).hexdigest()[:11]
    return "cali" + ids.container_id[:11]


def new_endpoint(ids: Identifiers, name: str) -> Resource:
    spec: dict[str, Any] = {"orchestrator": ids.orchestrator, "node": ids.node, "containerID": ids.container_id}
    if ids.pod:
        spec["pod"] = ids.pod
    spec["endpoint"] = ids.endpoint
    return {
        "kind": "WorkloadEndpoint",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"name": name, "namespace": ids.namespace},
        "spec": spec,
    }


def set_labels(obj: Resource, extra: dict[str, str] | None = None) -> None:
    """Calico stores the namespace and orchestrator as labels of every endpoint."""
    labels = dict(obj["metadata"].get("labels") or {})
    labels.update(extra or {})
    labels["projectcalico.org/namespace"] = obj["metadata"]["namespace"]
    labels["projectcalico.org/orchestrator"] = obj["spec"]["orchestrator"]
    obj["metadata"]["labels"] = labels


def order_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec's keys in WorkloadEndpointSpec's field order (what JSON output shows)."""
    order = [
        "orchestrator", "workload", "node", "containerID", "pod", "endpoint", "serviceAccountName", "ipNetworks",
        "ipNATs", "ipv4Gateway", "ipv6Gateway", "profiles", "interfaceName", "mac", "ports", "allowSpoofedSourcePrefixes",
    ]  # fmt: skip
    out = {k: spec[k] for k in order if k in spec and spec[k] not in ("", None, [])}
    out.update({k: v for k, v in spec.items() if k not in out and v not in ("", None, [])})
    return out


class Endpoints(Resources):
    def __init__(self, store: Datastore) -> None:
        super().__init__(store, WORKLOAD_ENDPOINT)

    def for_workload(self, ids: Identifiers) -> Resource | None:
        """The workload's existing endpoint (any interface name), as Calico's ADD looks it up."""
        for obj in self.list(ids.namespace, ids.workload_prefix()):
            if ids.matches(obj["metadata"]["name"]):
                return obj
        return None
