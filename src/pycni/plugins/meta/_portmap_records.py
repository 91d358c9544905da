"""What portmap's nftables backend added for each attachment, kept in a file per attachment.

DEL reads the record and deletes exactly those elements, so its cost does not grow
with the number of containers on the host, and it needs no `portMappings` from the
runtime. Records live in `/run/pycni/portmap/<network>/`: they describe kernel state,
which does not survive a reboot either. A network's directory is removed with its
last record; that is how DEL knows, without listing anything, that the network's
chains and sets can go. Callers hold portmap's host lock.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

from pycni.plugins import records
from pycni.spec.errors import CNIError, Code

log = logging.getLogger("pycni.plugin.portmap")

STATE_DIR = "/run/pycni/portmap"
VERSION = 1
_SAFE_IFNAME = re.compile(r"^[A-Za-z0-9_.\-@+=]+\Z")


@dataclass(frozen=True)
class Entry:
    """One element of the table: family, set or map, key and (for maps) data, in nft syntax."""

    family: int
    obj: str
    key: str
    data: str | None = None


@dataclass
class Record:
    network: str
    container_id: str
    ifname: str
    tag: str
    entries: list[Entry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "network": self.network,
            "containerID": self.container_id,
            "ifname": self.ifname,
            "tag": self.tag,
            "entries": [{"family": e.family, "obj": e.obj, "key": e.key, "data": e.data} for e in self.entries],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        entries = [Entry(int(e["family"]), str(e["obj"]), str(e["key"]), e.get("data")) for e in data.get("entries", [])]
        return cls(str(data["network"]), str(data["containerID"]), str(data["ifname"]), str(data["tag"]), entries)


def network_dir(network: str) -> str:
    return os.path.join(STATE_DIR, network)  # network names are [a-zA-Z0-9][a-zA-Z0-9_.-]*


def path(network: str, container_id: str, ifname: str) -> str:
    if _SAFE_IFNAME.match(ifname):
        name = f"{container_id}_{ifname}.json"
    else:
        name = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()[:40] + ".json"
    return os.path.join(network_dir(network), name)


def _load(file: str) -> Record | None:
    try:
        with open(file) as fh:
            return Record.from_dict(json.load(fh))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("unreadable portmap record %s: %s", file, exc)
        return None


def read(network: str, container_id: str, ifname: str) -> Record | None:
    """The attachment's record; not another's whose file name is the same (container "a_b"
    interface "c" and container "a" interface "b_c")."""
    record = _load(path(network, container_id, ifname))
    return record if record is None or (record.container_id, record.ifname) == (container_id, ifname) else None


def write(record: Record) -> None:
    file = path(record.network, record.container_id, record.ifname)
    other = _load(file)
    if other is not None and (other.container_id, other.ifname) != (record.container_id, record.ifname):
        raise CNIError(
            Code.CONFLICT,
            f"portmap: {file} is the record of container {other.container_id!r} interface {other.ifname!r}",
            "the two attachments' record names collide (<containerID>_<ifname>.json); nothing was changed",
        )
    records.write_record(file, record.to_dict(), "portmap-record-tmp")


def remove(network: str, container_id: str, ifname: str) -> bool:
    """Drop the record and what a killed write of it left (not another attachment's of the
    same file name); True when it was the network's last one (its directory is gone too)."""
    file = path(network, container_id, ifname)
    other = _load(file)
    if other is None or (other.container_id, other.ifname) == (container_id, ifname):
        records.remove_record(file)
    return remove_network_dir(network)


def remove_network_dir(network: str) -> bool:
    """Remove the network's directory if it holds no record (rmdir refuses otherwise: no listing)."""
    try:
        os.rmdir(network_dir(network))
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def remove_leftovers(network: str) -> None:
    """Temporary files of writes that never finished (a killed process): they would keep the
    network's directory, and so its chains, forever."""
    try:
        names = os.listdir(network_dir(network))
    except FileNotFoundError:
        return
    for name in names:
        if records.is_partial_record(name):
            try:
                os.unlink(os.path.join(network_dir(network), name))
            except FileNotFoundError:
                pass


def all_of(network: str) -> list[Record]:
    try:
        names = sorted(os.listdir(network_dir(network)))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if name.endswith(".json"):
            record = _load(os.path.join(network_dir(network), name))
            if record is not None:
                found.append(record)
    return found
