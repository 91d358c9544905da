"""What the calico CNI plugin adds for policy: a pod's labels and the profile it is put in.

Labels. Calico's plugin reads a pod's labels from the Kubernetes API; pycni has none, and takes
them from the runtime's `args.cni.labels` (CNI conventions: `[{"key": "app", "value": "web"}]`).
They go on the WorkloadEndpoint with `projectcalico.org/namespace` and
`projectcalico.org/orchestrator`, which they cannot override.

Profiles. Without a policy type, Calico's plugin creates a profile named after the network when
it does not exist (never updating one): egress allowed; ingress allowed for Kubernetes pods,
else only from endpoints of the same network (`has(<network>)`, the profile's labelsToApply).
With `"policy": {"type": "k8s"}` the endpoint's profile is `kns.<namespace>`, which Calico's
kube-controllers creates from the Namespace; pycni creates it the way kube-controllers would
(everything allowed, `pcns.projectcalico.org/name: <namespace>`) when it is missing, so a pod
is reachable until a policy says otherwise. An operator gives a namespace labels for
namespaceSelectors by editing that profile's labelsToApply (`pcns.<key>: <value>`).
"""

from __future__ import annotations

from typing import Any

from pycni.calico.datastore import Datastore
from pycni.calico.policy.model import NAMESPACE_LABEL_PREFIX, NAMESPACE_PROFILE_PREFIX, check_labels
from pycni.calico.policy.resources import PROFILE
from pycni.calico.resources import ResourceError, Resources, ValidationError
from pycni.spec import gokeys
from pycni.spec.errors import CNIError, Code


def pod_labels(raw_conf: dict[str, Any]) -> dict[str, str]:
    """`args.cni.labels` as a label map; code 7 naming the label when one is not a valid label."""
    args = gokeys.get(raw_conf, "args")  # keys matched as Go's encoding/json matches them
    cni = gokeys.get(args, "cni") if isinstance(args, dict) else None
    entries = gokeys.get(cni, "labels") if isinstance(cni, dict) else None
    if entries is None:
        return {}
    if not isinstance(entries, list):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"args.cni.labels: expected a list of {{key, value}}, got {entries!r}")
    labels: dict[str, str] = {}
    for i, entry in enumerate(entries):
        key = gokeys.get(entry, "key") if isinstance(entry, dict) else None
        value = gokeys.get(entry, "value", "") if isinstance(entry, dict) else None
        if not isinstance(key, str) or not isinstance(value, str):
            raise CNIError(
                Code.INVALID_NETWORK_CONFIG, f'args.cni.labels[{i}]: expected {{"key": ..., "value": ...}}, got {entry!r}'
            )
        labels[key] = value
    try:
        check_labels(labels, "args.cni.labels")
    except ValidationError as exc:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, str(exc)) from None
    return labels


def _create_if_missing(store: Datastore, name: str, spec: dict[str, Any]) -> None:
    profiles = Resources(store, PROFILE)
    if profiles.get(name) is not None:
        return
    try:
        profiles.create({"metadata": {"name": name}, "spec": spec})
    except ResourceError as exc:
        if "already exists" not in str(exc):  # another ADD made it first
            raise


def ensure_profile(store: Datastore, network: str, k8s: bool) -> None:
    """The network's profile, as Calico's plugin creates it when there is no policy type."""
    ingress: dict[str, Any] = {"action": "Allow"}
    if not k8s:
        ingress["source"] = {"selector": f"has({network})"}
    _create_if_missing(store, network, {"ingress": [ingress], "egress": [{"action": "Allow"}], "labelsToApply": {network: ""}})


def ensure_namespace_profile(store: Datastore, namespace: str) -> None:
    """`kns.<namespace>`, as kube-controllers makes it from a Namespace without labels."""
    _create_if_missing(
        store,
        NAMESPACE_PROFILE_PREFIX + namespace,
        {
            "ingress": [{"action": "Allow"}],
            "egress": [{"action": "Allow"}],
            "labelsToApply": {NAMESPACE_LABEL_PREFIX + "projectcalico.org/name": namespace},
        },
    )
