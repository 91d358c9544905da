"""natOutgoing: traffic from a pool with natOutgoing to an address outside every pool is
masqueraded, as felix's cali-nat-outgoing chain does, in calico-node's nftables table.

    table inet calico                              (shared: the policy component adds its
      set cali40masq-ipam-pools  (interval)         own filter-*/cali-* chains and sets)
      set cali40all-ipam-pools   (interval)
      set cali60masq-ipam-pools / cali60all-ipam-pools
      chain nat-POSTROUTING   { type nat hook postrouting priority srcnat; jump nat-cali-nat-outgoing }
      chain nat-cali-nat-outgoing {
        ip saddr @cali40masq-ipam-pools ip daddr != @cali40all-ipam-pools masquerade fully-random
        ip6 saddr @cali60masq-ipam-pools ip6 daddr != @cali60all-ipam-pools masquerade fully-random
      }

Set and chain names are felix's. This component manages only the objects above: the table is
never flushed or deleted while running; with cleanup it is deleted only when nothing else is
left in it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from pycni.calico.datastore import KV, WatchEvent
from pycni.calico.node.component import NodeContext
from pycni.calico.node.view import POOLS_PREFIX, ClusterView, sort_networks
from pycni.net import nft

log = logging.getLogger("calico-node")

TABLE = "calico"
FAMILY = "inet"
BASE_CHAIN = "nat-POSTROUTING"
CHAIN = "nat-cali-nat-outgoing"
SETS = {4: ("cali40masq-ipam-pools", "cali40all-ipam-pools"), 6: ("cali60masq-ipam-pools", "cali60all-ipam-pools")}
_RULES = {
    4: "ip saddr @cali40masq-ipam-pools ip daddr != @cali40all-ipam-pools masquerade fully-random",
    6: "ip6 saddr @cali60masq-ipam-pools ip6 daddr != @cali60all-ipam-pools masquerade fully-random",
}


def _elements(objects: list[dict[str, Any]]) -> set[str]:
    out: set[str] = set()
    for obj in objects:
        for elem in (obj.get("set") or {}).get("elem") or []:
            if isinstance(elem, dict) and "prefix" in elem:
                out.add(str(ipaddress.ip_network(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")))
            elif isinstance(elem, dict) and "range" in elem:
                low, high = (ipaddress.ip_address(x) for x in elem["range"])
                out.update(str(n) for n in ipaddress.summarize_address_range(low, high))
            else:
                out.add(str(ipaddress.ip_network(str(elem))))
    return out


class NATComponent:
    name: str = "nat"
    prefixes: tuple[str, ...] = (POOLS_PREFIX,)

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.view = ClusterView()
        self.problem = "not programmed yet"

    def wanted(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for version, (masq, every) in SETS.items():
            pools = [p for p in self.view.pools.values() if p.version == version]
            out[masq] = {str(c) for c in sort_networks(p.cidr for p in pools if p.nat_outgoing and not p.disabled)}
            out[every] = {str(c) for c in sort_networks(p.cidr for p in pools)}
        return out

    def resync(self, listing: Sequence[KV]) -> None:
        self.view.load(listing)
        self.reconcile()

    def on_events(self, events: Sequence[WatchEvent]) -> None:
        if self.view.apply_events(events):
            self.reconcile()

    def _in_step(self, wanted: dict[str, set[str]]) -> bool:
        for name, elements in wanted.items():
            found = nft.list_objects(f"set {FAMILY} {TABLE} {name}")
            if not found or _elements(found) != elements:
                return False
        for chain, count in ((BASE_CHAIN, 1), (CHAIN, len(_RULES))):
            found = nft.list_objects(f"chain {FAMILY} {TABLE} {chain}")
            if sum(1 for o in found if "rule" in o) != count:
                return False
        return True

    def reconcile(self) -> None:
        wanted = self.wanted()
        if self._in_step(wanted):
            self.problem = ""
            return
        lines = [f"add table {FAMILY} {TABLE}"]
        lines.append(f"add chain {FAMILY} {TABLE} {BASE_CHAIN} {{ type nat hook postrouting priority srcnat; policy accept; }}")
        lines.append(f"add chain {FAMILY} {TABLE} {CHAIN}")
        for version, names in SETS.items():
            kind = "ipv4_addr" if version == 4 else "ipv6_addr"
            for name in names:
                lines.append(f"add set {FAMILY} {TABLE} {name} {{ type {kind}; flags interval; auto-merge; }}")
                lines.append(f"flush set {FAMILY} {TABLE} {name}")
                if wanted[name]:
                    lines.append(f"add element {FAMILY} {TABLE} {name} {{ {', '.join(sorted(wanted[name]))} }}")
        lines.append(f"flush chain {FAMILY} {TABLE} {BASE_CHAIN}")
        lines.append(f"add rule {FAMILY} {TABLE} {BASE_CHAIN} jump {CHAIN}")
        lines.append(f"flush chain {FAMILY} {TABLE} {CHAIN}")
        for rule in _RULES.values():
            lines.append(f"add rule {FAMILY} {TABLE} {CHAIN} {rule}")
        nft.run_text("\n".join(lines) + "\n", "natOutgoing")
        log.info("natOutgoing: masquerading %s", ", ".join(sorted(wanted[SETS[4][0]] | wanted[SETS[6][0]])) or "nothing")
        self.problem = ""

    def ready(self) -> str:
        return self.problem

    def close(self, *, cleanup: bool = False) -> None:
        if not cleanup or not nft.table_exists(FAMILY, TABLE):
            return
        script = [f"delete chain {FAMILY} {TABLE} {BASE_CHAIN}", f"delete chain {FAMILY} {TABLE} {CHAIN}"]
        script += [f"delete set {FAMILY} {TABLE} {name}" for names in SETS.values() for name in names]
        for line in script:
            try:
                nft.run_text(line + "\n", "natOutgoing cleanup")
            except nft.NftError:
                pass  # already gone
        delete_table_if_empty()


def delete_table_if_empty() -> None:
    """Remove `inet calico` when no component has anything left in it."""
    left = [o for o in nft.list_objects(f"table {FAMILY} {TABLE}") if "table" not in o]
    if not left and nft.table_exists(FAMILY, TABLE):
        nft.run_text(f"delete table {FAMILY} {TABLE}\n", "calico table cleanup")
