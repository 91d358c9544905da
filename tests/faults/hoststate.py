"""What the (stand-in) host holds: every kind of state a plugin can leave behind, as a set of
one-line items, so that "nothing of attachment X is left" is `take(...) == before`.

A snapshot reads the kernel with the system's own tools (`ip`, `tc`, `nft`, `iptables-save`),
not with pycni's code, and the plugins' files and Calico datastores directly:

- link:     host interfaces (name, kind, bridge, MTU, MAC, alias, up): veths, ifbs, a lent device
- addr:     host addresses (not link-local ones, which come and go with their link)
- route:    host routes of every table but `local` (which follows the addresses)
- qdisc:    host qdiscs (tbf, ingress)
- nft:      tables, chains, sets, rules and set or map elements, comments included
- ipt:      iptables and ip6tables rules (the reference plugins' and iptables-nft's)
- file:     files under the given directories (host-local's addresses, tuning's, portmap's and
            host-device's records, the runtime's cache, Calico's journal), with their content
- calico:   allocations (address and handle), handles and WorkloadEndpoints of each datastore
- netns:    the links of each given container namespace (besides lo)

Items that occur twice (the same rule twice in a chain) are numbered, so a duplicate shows.
Lock files and host-local's round-robin position (`last_reserved_ip.N`) are not state of an
attachment and are left out, as are Calico's block affinities (a node's, not a workload's).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Snapshot = frozenset[tuple[str, str]]
IGNORED_FILES = re.compile(r"^(lock|.*\.lock|last_reserved_ip\.\d+|agent\.sock.*|\..*\.sock\.\d+)$")
MAX_CONTENT = 240
COUNTERS = re.compile(r"\[\d+:\d+\]")


@dataclass
class Places:
    """Where the chains under test keep state besides the host's kernel."""

    directories: list[str] = field(default_factory=list)
    datastores: list[str] = field(default_factory=list)  # Calico embedded datastore files
    namespaces: list[str] = field(default_factory=list)  # container namespaces (paths under /run/netns)


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    return proc.stdout if proc.returncode == 0 else ""


def _json(*argv: str) -> Any:
    out = _run(*argv)
    return json.loads(out) if out.strip() else []


def _links(prefix: tuple[str, ...] = ()) -> list[str]:
    items = []
    for link in _json(*prefix, "ip", "-d", "-j", "link", "show"):
        info = link.get("linkinfo", {})
        up = "UP" in link.get("flags", [])
        items.append(
            f"{link['ifname']} kind={info.get('info_kind', '')} master={link.get('master', '')} mtu={link.get('mtu')} "
            f"mac={link.get('address', '')} alias={link.get('ifalias', '')} up={up}"
        )
    return items


def _addresses() -> list[str]:
    items = []
    for link in _json("ip", "-j", "addr", "show"):
        for addr in link.get("addr_info", []):
            if addr.get("scope") == "link" or str(addr.get("local", "")).startswith("fe80:"):
                continue
            items.append(f"{link['ifname']} {addr['local']}/{addr['prefixlen']}")
    return items


def _routes() -> list[str]:
    items = []
    for family in ("-4", "-6"):
        for route in _json("ip", family, "-j", "route", "show", "table", "all"):
            if route.get("table") == "local" or route.get("dst", "").startswith("fe80::") or route.get("dst") == "ff00::/8":
                continue
            fields = [route.get(k) for k in ("table", "type", "dst", "gateway", "dev", "protocol", "scope", "metric", "prefsrc")]
            items.append(" ".join(str(f) for f in fields if f is not None))
    return items


def _qdiscs() -> list[str]:
    return [
        f"{q.get('dev')} {q.get('kind')} {q.get('handle')} {q.get('parent', 'root')}" for q in _json("tc", "-j", "qdisc", "show")
    ]


def _nft() -> list[str]:
    items = []
    data = _json("nft", "-j", "list", "ruleset")
    for obj in data.get("nftables", []) if isinstance(data, dict) else []:
        if "table" in obj:
            t = obj["table"]
            items.append(f"table {t['family']} {t['name']}")
        elif "chain" in obj:
            c = obj["chain"]
            hook = f" hook={c['hook']} prio={c.get('prio')} policy={c.get('policy')}" if "hook" in c else ""
            items.append(f"chain {c['family']} {c['table']} {c['name']}{hook}")
        elif "rule" in obj:
            r = obj["rule"]
            items.append(f"rule {r['family']} {r['table']} {r['chain']} {json.dumps(r['expr'])} comment={r.get('comment', '')}")
        elif "set" in obj or "map" in obj:
            kind = "set" if "set" in obj else "map"
            s = obj[kind]
            items.append(f"{kind} {s['family']} {s['table']} {s['name']}")
            for el in s.get("elem", []) or []:
                items.append(f"element {s['family']} {s['table']} {s['name']} {json.dumps(el, sort_keys=True)}")
    return items


def _iptables() -> list[str]:
    items = []
    for tool in ("iptables-save", "ip6tables-save"):
        for line in _run(tool).splitlines():
            if not line.startswith(("#", "COMMIT")):
                items.append(f"{tool} {COUNTERS.sub('', line).strip()}")
    return items


def _files(directory: str) -> list[str]:
    items = []
    for root, _dirs, names in os.walk(directory):
        for name in names:
            if IGNORED_FILES.match(name):
                continue
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as fh:
                    content = fh.read(MAX_CONTENT + 1)
            except OSError:
                continue
            text = content[:MAX_CONTENT].decode(errors="replace").replace("\r\n", "|").replace("\n", " ")
            items.append(f"{path} {text}{'...' if len(content) > MAX_CONTENT else ''}")
    return items


def _calico(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    from pycni.calico.datastore import DatastoreSettings, open_datastore
    from pycni.calico.endpoints import Endpoints
    from pycni.calico.ipam import IPAM

    items = []
    with open_datastore(DatastoreSettings(path=path)) as store:
        ipam = IPAM(store)
        for block in ipam.blocks():
            for ip, attr in block.allocated():
                items.append(f"{path} allocation {ip} handle={attr.handle_id}")
        for handle, (value, _kv) in ipam.handles().items():
            items.append(f"{path} handle {handle} {json.dumps(value.block, sort_keys=True)}")
        for wep in Endpoints(store).list():
            meta, spec = wep["metadata"], wep["spec"]
            items.append(f"{path} workloadendpoint {meta['namespace']}/{meta['name']} container={spec.get('containerID')}")
    return items


def _netns_links(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    name = os.path.basename(path)
    return [f"{path} {item}" for item in _links(("ip", "-n", name)) if not item.startswith("lo ")]


def _numbered(kind: str, items: Iterable[str]) -> set[tuple[str, str]]:
    seen: Counter[str] = Counter()
    out = set()
    for item in items:
        seen[item] += 1
        out.add((kind, item if seen[item] == 1 else f"{item} #{seen[item]}"))
    return out


def take(places: Places) -> Snapshot:
    """Everything the host holds now (see the module's docstring)."""
    found: set[tuple[str, str]] = set()
    found |= _numbered("link", _links())
    found |= _numbered("addr", _addresses())
    found |= _numbered("route", _routes())
    found |= _numbered("qdisc", _qdiscs())
    found |= _numbered("nft", _nft())
    found |= _numbered("ipt", _iptables())
    for directory in places.directories:
        found |= _numbered("file", _files(directory))
    for path in places.datastores:
        found |= _numbered("calico", _calico(path))
    for path in places.namespaces:
        found |= _numbered("netns", _netns_links(path))
    return frozenset(found)


def difference(before: Snapshot, after: Snapshot) -> list[str]:
    """What changed, as readable lines: `+ kind item` (left behind) and `- kind item` (gone)."""
    lines = [f"+ {kind} {item}" for kind, item in sorted(after - before)]
    lines += [f"- {kind} {item}" for kind, item in sorted(before - after)]
    return lines


def mentioning(snapshot: Snapshot, tokens: Iterable[str]) -> list[str]:
    """The items that name any of `tokens` (a container ID, a veth, an address) as a whole word."""
    words = [re.escape(t) for t in tokens if t]
    if not words:
        return []
    pattern = re.compile(r"(?<![0-9A-Za-z.:])(?:" + "|".join(words) + r")(?![0-9A-Za-z:]|\.\d)")
    return sorted(f"{kind} {item}" for kind, item in snapshot if pattern.search(item))
