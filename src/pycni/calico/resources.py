"""projectcalico.org/v3 resources in the datastore: IPPools and WorkloadEndpoints.

A resource is stored as its full JSON object without `metadata.resourceVersion`;
on reading, the key's revision becomes the resourceVersion, and an update must
carry the resourceVersion it read (compare-and-swap), as in libcalico-go.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pycni.calico import model
from pycni.calico.datastore import KV, Datastore, KeyExists, KeyNotFound, RevisionConflict

API_VERSION = "projectcalico.org/v3"


@dataclass(frozen=True)
class Kind:
    """A resource type: its `kind`, the key segment it is stored under (libcalico-go's plural,
    lower case) and whether its names are per namespace."""

    kind: str
    plural: str
    namespaced: bool = False


IPPOOL = Kind("IPPool", "ippools")
WORKLOAD_ENDPOINT = Kind("WorkloadEndpoint", "workloadendpoints", namespaced=True)
NODE = Kind("Node", "nodes")
CLUSTER_INFORMATION = Kind("ClusterInformation", "clusterinformations")

Resource = dict[str, Any]


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ResourceError(Exception):
    """A resource operation that cannot proceed (exists, missing, conflict): the message says which."""


class ValidationError(ResourceError):
    """A resource that is not valid, naming the field and the value, as libcalico-go's
    validator reports it: `error with field spec.selector = 'a ==' (invalid selector: ...)`."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(f"error with field {field} = '{value}' ({reason})")
        self.field, self.value, self.reason = field, value, reason


class Resources:
    """Create, get, list, update and delete one kind of resource."""

    def __init__(self, store: Datastore, kind: Kind) -> None:
        self.store = store
        self.kind, self.plural, self.namespaced = kind.kind, kind.plural, kind.namespaced

    def _key(self, name: str, namespace: str | None) -> str:
        return model.resource_key(self.plural, name, namespace if self.namespaced else None)

    def _load(self, kv: KV) -> Resource:
        obj: Resource = json.loads(kv.value)
        obj.setdefault("metadata", {})["resourceVersion"] = str(kv.revision)
        return obj

    @staticmethod
    def _dump(obj: Resource) -> str:
        stored = json.loads(json.dumps(obj))
        stored.get("metadata", {}).pop("resourceVersion", None)
        return json.dumps(stored, separators=(",", ":"))

    def _describe(self, name: str, namespace: str | None) -> str:
        return f"{self.kind}({namespace}/{name})" if self.namespaced else f"{self.kind}({name})"

    def get(self, name: str, namespace: str | None = None) -> Resource | None:
        kv = self.store.get(self._key(name, namespace))
        return None if kv is None else self._load(kv)

    def list(self, namespace: str | None = None, name_prefix: str = "") -> list[Resource]:
        prefix = model.resource_prefix(self.plural, namespace if self.namespaced else None)
        return [self._load(kv) for kv in self.store.list(prefix + name_prefix)]

    def create(self, obj: Resource) -> Resource:
        meta = obj.setdefault("metadata", {})
        meta.pop("resourceVersion", None)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_rfc3339())
        obj = {"kind": self.kind, "apiVersion": API_VERSION, **{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}}
        name, namespace = meta["name"], meta.get("namespace")
        try:
            kv = self.store.create(self._key(name, namespace), self._dump(obj))
        except KeyExists:
            raise ResourceError(f"resource already exists: {self._describe(name, namespace)}") from None
        return self._load(kv)

    def update(self, obj: Resource) -> Resource:
        meta = obj["metadata"]
        name, namespace = meta["name"], meta.get("namespace")
        revision = int(meta.get("resourceVersion") or 0)
        try:
            if revision:
                kv = self.store.update(self._key(name, namespace), self._dump(obj), revision)
            else:
                current = self.store.get(self._key(name, namespace))
                if current is None:
                    raise KeyNotFound(self._key(name, namespace))
                kv = self.store.update(self._key(name, namespace), self._dump(obj), current.revision)
        except KeyNotFound:
            raise ResourceError(f"resource does not exist: {self._describe(name, namespace)}") from None
        except RevisionConflict:
            raise ResourceError(
                f"update conflict: {self._describe(name, namespace)} was modified since revision {revision}"
            ) from None
        return self._load(kv)

    def modify(self, name: str, namespace: str | None, change: Callable[[Resource], None], retries: int = 20) -> Resource:
        """Read, change and write back, retrying on conflict."""
        for _ in range(retries):
            current = self.get(name, namespace)
            if current is None:
                raise ResourceError(f"resource does not exist: {self._describe(name, namespace)}")
            change(current)
            try:
                return self.update(current)
            except ResourceError as exc:
                if "conflict" not in str(exc):
                    raise
        raise ResourceError(f"update conflict: {self._describe(name, namespace)} kept changing")

    def delete(self, name: str, namespace: str | None = None, revision: int | None = None) -> None:
        try:
            self.store.delete(self._key(name, namespace), revision)
        except KeyNotFound:
            raise ResourceError(f"resource does not exist: {self._describe(name, namespace)}") from None
        except RevisionConflict:
            raise ResourceError(f"update conflict: {self._describe(name, namespace)} was modified") from None
