"""What a rejected input must not change: the kernel (links, addresses, routes, qdiscs,
nftables) of the stand-in host and of the test's namespaces, and the plugins' stores
(directories of records, the calico SQLite datastore).

A snapshot keeps only what a plugin could have changed, in a form that does not move
by itself (no counters, lifetimes or carrier flags), so two snapshots taken around a
call that changed nothing are equal.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_UNWATCHED = (".log", ".db", ".db-wal", ".db-shm", ".db-journal")
# Link fields that say what a plugin set; carrier, counters and operstate move by themselves.
_LINK_KEYS = ("ifname", "mtu", "master", "address", "link_type", "ifalias", "txqlen", "promiscuity", "allmulti")
_LINKINFO_KEYS = ("info_kind", "info_slave_kind")


def _ip_json(netns: str | None, *argv: str) -> Any:
    prefix = ["ip", "-n", netns] if netns else ["ip"]
    out = subprocess.run([*prefix, "-j", *argv], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")


def _links_and_addresses(netns: str | None) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    links, addresses = [], []
    for link in _ip_json(netns, "-d", "addr", "show"):
        info = link.get("linkinfo") or {}
        links.append(
            (
                *(link.get(k) for k in _LINK_KEYS),
                *(info.get(k) for k in _LINKINFO_KEYS),
                "UP" in link.get("flags", []),
            )
        )
        for a in link.get("addr_info", []):
            addresses.append((link.get("ifname"), a.get("family"), a.get("local"), a.get("prefixlen"), a.get("scope")))
    return sorted(links, key=repr), sorted(addresses, key=repr)


def _routes(netns: str | None) -> list[tuple[Any, ...]]:
    out = []
    for family in ("-4", "-6"):
        for r in _ip_json(netns, family, "route", "show", "table", "all"):
            if r.get("type") in ("local", "broadcast", "multicast", "anycast") or r.get("table") == "local":
                continue  # the kernel's own, following the addresses
            out.append((family, r.get("dst"), r.get("gateway"), r.get("dev"), r.get("table"), r.get("metric"), r.get("protocol")))
    return sorted(out, key=repr)


def _qdiscs(netns: str | None) -> list[tuple[Any, ...]]:
    prefix = ["tc", "-n", netns] if netns else ["tc"]
    out = subprocess.run([*prefix, "-j", "qdisc", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(((q.get("dev"), q.get("kind"), q.get("handle"), q.get("parent")) for q in json.loads(out or "[]")), key=repr)


def _nftables() -> list[str]:
    # -s (stateless): no counter values, which move with any stray packet in the stand-in host
    out = subprocess.run(["nft", "-j", "-s", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    items = json.loads(out or '{"nftables": []}').get("nftables", [])
    return sorted(json.dumps(i, sort_keys=True) for i in items if "metainfo" not in i)


def kernel(netns: str | None) -> dict[str, Any]:
    """The kernel state of one namespace (None: the stand-in host; nftables only there,
    where every plugin puts its tables)."""
    links, addresses = _links_and_addresses(netns)
    state: dict[str, Any] = {"links": links, "addresses": addresses, "routes": _routes(netns), "qdiscs": _qdiscs(netns)}
    if netns is None:
        state["nftables"] = _nftables()
    return state


def directory(path: str) -> dict[str, str]:
    """Every entry under `path`: a file's digest, a symlink's target, "dir". Logs and the files
    of SQLite databases are left out: they change when nothing does (the databases are compared
    by their rows)."""
    out: dict[str, str] = {}
    if not os.path.lexists(path):
        return out
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if name.endswith(_UNWATCHED):
                continue
            if os.path.islink(full):
                out[rel] = "-> " + os.readlink(full)
            elif os.path.isdir(full):
                out[rel] = "dir"
            elif not os.path.isfile(full):
                out[rel] = "special"
            elif name.endswith(".lock") or name in ("lock", ".lock"):
                out[rel] = "lock"  # lock files are created by readers too: their existence says nothing
            else:
                with open(full, "rb") as fh:
                    out[rel] = hashlib.sha256(fh.read()).hexdigest()
    return out


def sqlite_store(path: str) -> list[tuple[str, str]]:
    """The key-value rows of a calico embedded datastore (revision counters excluded)."""
    if not os.path.exists(path):
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return sorted(db.execute("SELECT key, value FROM kv").fetchall())
    except sqlite3.OperationalError:
        return []  # created but empty
    finally:
        db.close()


@dataclass
class Watched:
    """What one test watches: namespaces (None is the stand-in host), directories, datastores."""

    namespaces: list[str | None] = field(default_factory=lambda: [None])
    directories: list[str] = field(default_factory=list)
    datastores: list[str] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        return {
            **{f"kernel {ns or 'host'}": kernel(ns) for ns in self.namespaces},
            **{f"dir {d}": directory(d) for d in self.directories},
            **{f"datastore {d}": sqlite_store(d) for d in self.datastores},
        }


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed, one line per part and kind of object."""
    out: list[str] = []
    for part in before.keys() | after.keys():
        b, a = before.get(part), after.get(part)
        if b == a:
            continue
        if isinstance(b, dict) and isinstance(a, dict) and not any(isinstance(v, list) for v in b.values()):
            changed = sorted(k for k in b.keys() | a.keys() if b.get(k) != a.get(k))
            out.append(f"{part}: {changed}")
            continue
        if isinstance(b, dict) and isinstance(a, dict):
            for kind in b.keys() | a.keys():
                if b.get(kind) != a.get(kind):
                    out.append(f"{part} {kind}: {_delta(b.get(kind) or [], a.get(kind) or [])}")
            continue
        out.append(f"{part}: {_delta(b or [], a or [])}")
    return sorted(out)


def _delta(before: Iterable[Any], after: Iterable[Any]) -> str:
    b, a = [repr(x) for x in before], [repr(x) for x in after]
    gone = [x for x in b if x not in a]
    new = [x for x in a if x not in b]
    return f"gone {gone[:5]} new {new[:5]}"
