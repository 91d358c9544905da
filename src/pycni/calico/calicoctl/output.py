"""Resources as calicoctl prints them: JSON in the Go types' field order, YAML with sorted
keys and double-quoted strings (calicoctl renders YAML from JSON, as ghodss/yaml does)."""

from __future__ import annotations

import json
from typing import Any

from pycni import extras
from pycni.calico.calicoctl.kinds import order_resource_spec

_META_ORDER = ["name", "generateName", "namespace", "uid", "resourceVersion", "creationTimestamp", "labels", "annotations"]


def ordered(obj: dict[str, Any]) -> dict[str, Any]:
    """A resource with its keys in the order the Go types marshal them."""
    meta = obj.get("metadata") or {}
    out: dict[str, Any] = {"kind": obj.get("kind"), "apiVersion": obj.get("apiVersion", "projectcalico.org/v3")}
    out["metadata"] = {k: meta[k] for k in _META_ORDER if k in meta} | {k: v for k, v in meta.items() if k not in _META_ORDER}
    if "spec" in obj or obj.get("kind") != "Profile":
        out["spec"] = order_resource_spec(str(obj.get("kind", "")), obj.get("spec") or {})
    for key, value in obj.items():
        if key not in out:
            out[key] = value  # e.g. a Node's status
    return out


def as_list(kind: str, items: list[dict[str, Any]], revision: int) -> dict[str, Any]:
    return {
        "kind": f"{kind}List",
        "apiVersion": "projectcalico.org/v3",
        "metadata": {"resourceVersion": str(revision)},
        "items": [ordered(i) for i in items],
    }


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"


def _yaml() -> Any:
    return extras.require("yaml", "calico", "calicoctl's YAML")


def to_yaml(value: Any) -> str:
    yaml = _yaml()

    class Dumper(yaml.SafeDumper):  # type: ignore[misc,name-defined]
        def choose_scalar_style(self) -> Any:
            style = super().choose_scalar_style()
            return '"' if style == "'" else style

    return str(yaml.dump(value, Dumper=Dumper, default_flow_style=False, sort_keys=True, width=2**31, allow_unicode=True))


def load_documents(text: str, source: str) -> list[dict[str, Any]]:
    """Every resource in a YAML or JSON file (several documents, or `<Kind>List` objects)."""
    yaml = _yaml()

    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ValueError(f"Failed to execute command: error parsing {source}: {exc}") from None
    out: list[dict[str, Any]] = []
    for doc in docs:
        if not isinstance(doc, dict):
            raise ValueError(f"Failed to execute command: {source} does not hold a resource object")
        kind = str(doc.get("kind", ""))
        if kind.endswith("List") and isinstance(doc.get("items"), list):
            out.extend(d for d in doc["items"] if isinstance(d, dict))
        else:
            out.append(doc)
    return out
