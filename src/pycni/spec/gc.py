"""GC's valid attachments (spec 1.1.0, section 2): the runtime lists the attachments that are
still valid in the plugin's configuration; a plugin keeps their state and collects the rest.

Defined once for both sides: the runtime writes the list (`request_fields`), plugins read it
(`valid_attachments`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pycni.spec import gokeys
from pycni.spec.errors import CNIError, Code

VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"
LEGACY_ATTACHMENTS_KEY = "cni.dev/attachments"  # an earlier draft's name, which libcni still sends


def request_fields(valid: Iterable[tuple[str, str]]) -> dict[str, list[dict[str, str]]]:
    """What a runtime adds to a plugin's GC configuration: the list under both keys, as libcni does."""
    attachments = [{"containerID": container_id, "ifname": ifname} for container_id, ifname in valid]
    return {VALID_ATTACHMENTS_KEY: attachments, LEGACY_ATTACHMENTS_KEY: attachments}


def valid_attachments(conf: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The (containerID, ifname) pairs a GC configuration says are still valid (the legacy key
    when the current one is absent); ifname is "" for an entry without one. Keys are read as
    Go reads them (`pycni.spec.gokeys`). Code 7 for a list that is not one of {containerID,
    ifname} objects."""
    key = VALID_ATTACHMENTS_KEY if gokeys.has(conf, VALID_ATTACHMENTS_KEY) else LEGACY_ATTACHMENTS_KEY
    items = gokeys.get(conf, key) or []
    if not isinstance(items, list):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{key!r} must be a list of {{containerID, ifname}} objects")
    out: set[tuple[str, str]] = set()
    for item in items:
        entry = item if isinstance(item, dict) else {}
        container, ifname = gokeys.get(entry, "containerID"), gokeys.get(entry, "ifname", "")
        if not isinstance(container, str) or not isinstance(ifname, str):
            what = "is not an object with string containerID and ifname"
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid entry in {key!r}: {item!r} {what}")
        out.add((container, ifname))
    return out
