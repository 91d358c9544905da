"""flanneld's nftables rules (pkg/trafficmngr/nftables), in tables of its own:

    table ip flannel-ipv4                          (ip6 flannel-ipv6 for IPv6)
      chain postrtg { type nat hook postrouting priority srcnat; }      with --ip-masq
        meta mark 0x4000 return                                         kube-proxy's, no double NAT
        ip saddr <subnet> ip daddr <network> return                     pod to pod: no NAT
        ip saddr <network> ip daddr <subnet> return
        ip saddr != <subnet> ip daddr <network> return                  traffic from another node's pods
        ip saddr <network> ip daddr != 224.0.0.0/4 masquerade fully-random   pods leaving the network
        ip saddr != <network> ip daddr <network> masquerade fully-random     the host to pods
      chain forward { type filter hook forward priority filter; }       with --iptables-forward-rules
        ip saddr <network> accept
        ip daddr <network> accept

Every `--iptables-resync` seconds the tables are listed and compared with what was applied;
anything missing, added, changed or reordered makes the whole table be written again in one
transaction (flannel's users report that its presence-only check leaves reordered rules as
they are). Only these two tables are ever touched.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from typing import Any

from pycni.net import nft

log = logging.getLogger("flanneld")

TABLES = {4: ("ip", "flannel-ipv4"), 6: ("ip6", "flannel-ipv6")}
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}


@dataclass(frozen=True)
class Plan:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    masquerade: bool
    forward: bool
    fully_random: bool = True


_COMMENTS = {"forward": "chain to accept flannel traffic", "postrtg": "chain to manage traffic masquerading by flannel"}


def _comment(chain: str) -> str:
    return f'comment "{_COMMENTS[chain]}";'


def script(plan: Plan) -> str:
    version = plan.network.version
    fam, table = TABLES[version]
    word = "ip" if version == 4 else "ip6"
    net, sub = plan.network, plan.subnet
    masquerade = "masquerade fully-random" if plan.fully_random else "masquerade"
    lines = [
        f'add table {fam} {table} {{ comment "rules for {table}"; }}',
        f"delete table {fam} {table}",
        f'add table {fam} {table} {{ comment "rules for {table}"; }}',
    ]
    if plan.forward:
        lines += [
            f"add chain {fam} {table} forward {{ type filter hook forward priority filter; {_comment('forward')} }}",
            f"add rule {fam} {table} forward {word} saddr {net} accept",
            f"add rule {fam} {table} forward {word} daddr {net} accept",
        ]
    if plan.masquerade:
        lines += [
            f"add chain {fam} {table} postrtg {{ type nat hook postrouting priority srcnat; {_comment('postrtg')} }}",
            f"add rule {fam} {table} postrtg meta mark 0x4000 return",
            f"add rule {fam} {table} postrtg {word} saddr {sub} {word} daddr {net} return",
            f"add rule {fam} {table} postrtg {word} saddr {net} {word} daddr {sub} return",
            f"add rule {fam} {table} postrtg {word} saddr != {sub} {word} daddr {net} return",
            f"add rule {fam} {table} postrtg {word} saddr {net} {word} daddr != {MULTICAST[version]} {masquerade}",
            f"add rule {fam} {table} postrtg {word} saddr != {net} {word} daddr {net} {masquerade}",
        ]
    return "\n".join(lines) + "\n"


def _fingerprint(version: int) -> str:
    """The table as the kernel has it, without handles: equal listings, equal rules in order."""
    fam, table = TABLES[version]
    objects = nft.list_objects(f"table {fam} {table}")

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "handle"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(objects), sort_keys=True)


class Masquerade:
    """Keeps flanneld's tables as `plans` say (one plan per IP family)."""

    def __init__(self, plans: list[Plan]) -> None:
        self.plans = [p for p in plans if p.masquerade or p.forward]
        self._applied: dict[int, str] = {}
        self.restored = 0  # how many times a table was found changed and written again

    def ensure(self) -> bool:
        """Write the tables if they differ from what was applied; True when something was written."""
        wrote = False
        for plan in self.plans:
            version = plan.network.version
            expected = self._applied.get(version)
            if expected is not None and _fingerprint(version) == expected:
                continue
            if expected is not None:
                self.restored += 1
                log.warning("nftables table %s %s was changed by someone else: writing it again", *TABLES[version])
            try:
                nft.run_text(script(plan), f"flannel rules (IPv{version})")
            except nft.NftError as exc:
                if not plan.fully_random or "fully-random" not in str(exc.error) + str(exc):
                    raise
                log.warning("masquerade fully-random is not supported here: using plain masquerade")
                plan = Plan(plan.network, plan.subnet, plan.masquerade, plan.forward, fully_random=False)
                self.plans = [plan if p.network == plan.network else p for p in self.plans]
                nft.run_text(script(plan), f"flannel rules (IPv{version})")
            self._applied[version] = _fingerprint(version)
            wrote = True
        return wrote

    def remove(self) -> None:
        for version in (4, 6):
            fam, table = TABLES[version]
            if nft.table_exists(fam, table):
                nft.run_text(f"delete table {fam} {table}\n", "flannel rules cleanup")
