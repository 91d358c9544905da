"""macspoofchk on nftables, in the reference's layout (pkg/link/spoofcheck.go).

Table `bridge nat`, base chain `PREROUTING` (filter, hook prerouting, priority -300):
a rule `iifname <host veth> jump cni-br-iface-<id>`; that chain jumps to
`cni-br-iface-<id>-mac`, which returns for `ether saddr <container MAC>` and drops the
rest. `<id>` is "<containerID>-<ifname>"; every rule's comment is "macspoofchk-<id>".
Frames the container sends with any other source MAC never reach the bridge.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pycni.net import nft

FAMILY = "bridge"
TABLE = "nat"
BASE_CHAIN = "PREROUTING"
PREFIX = "cni-br-iface-"


def ref_id(container_id: str, ifname: str) -> str:
    return f"{container_id}-{ifname}"


def _chain(name: str, **extra: Any) -> dict[str, Any]:
    return {"chain": {"family": FAMILY, "table": TABLE, "name": name, **extra}}


def _rule(chain: str, note: str, *expr: dict[str, Any]) -> dict[str, Any]:
    return {"add": {"rule": {"family": FAMILY, "table": TABLE, "chain": chain, "comment": note, "expr": list(expr)}}}


def _listing() -> list[dict[str, Any]]:
    return nft.list_objects(f"table {FAMILY} {TABLE}")


def _jump_target(rule: dict[str, Any]) -> str | None:
    for expr in rule.get("expr", []):
        if "jump" in expr:
            return str(expr["jump"]["target"])
    return None


def _iifname(rule: dict[str, Any]) -> str | None:
    for expr in rule.get("expr", []):
        match = expr.get("match", {})
        if match.get("left", {}).get("meta", {}).get("key") == "iifname":
            return str(match.get("right"))
    return None


def _teardown_commands(listing: list[dict[str, Any]], chain: str) -> list[dict[str, Any]]:
    """Delete the base-chain jumps to `chain`, then `chain` and its -mac chain."""
    commands: list[dict[str, Any]] = []
    chains = {o["chain"]["name"] for o in listing if "chain" in o}
    for obj in listing:
        rule = obj.get("rule")
        if rule and rule["chain"] == BASE_CHAIN and _jump_target(rule) == chain:
            handle = {"family": FAMILY, "table": TABLE, "chain": BASE_CHAIN, "handle": rule["handle"]}
            commands.append({"delete": {"rule": handle}})
    for name in (chain, chain + "-mac"):
        if name in chains:
            commands.append({"delete": _chain(name)})
    return commands


@dataclass
class SpoofCheck:
    """Only frames from `mac()` may enter the bridge through `iface()` (the host veth).

    Both are callables: the veth's name and the container's MAC are known only once
    ADD has created the pair."""

    iface: Callable[[], str]
    mac: Callable[[], str]
    container_id: str
    ifname: str
    what: str = "macspoofchk"

    @property
    def chain(self) -> str:
        return PREFIX + ref_id(self.container_id, self.ifname)

    def apply(self) -> None:
        note = "macspoofchk-" + ref_id(self.container_id, self.ifname)
        chain, mac_chain = self.chain, self.chain + "-mac"
        commands: list[dict[str, Any]] = [
            {"add": {"table": {"family": FAMILY, "name": TABLE}}},
            {"add": _chain(BASE_CHAIN, type="filter", hook="prerouting", prio=-300, policy="accept")},
            *_teardown_commands(_listing(), chain),
            {"add": _chain(chain)},
            {"add": _chain(mac_chain)},
            _rule(BASE_CHAIN, note, _match({"meta": {"key": "iifname"}}, self.iface()), {"jump": {"target": chain}}),
            _rule(chain, note, {"jump": {"target": mac_chain}}),
            _rule(mac_chain, note, _match({"payload": {"protocol": "ether", "field": "saddr"}}, self.mac()), {"return": None}),
            _rule(mac_chain, note, {"drop": None}),
        ]
        nft.run(commands, "setting up macspoofchk")

    def remove(self) -> None:
        nft.run(_teardown_commands(_listing(), self.chain), "removing macspoofchk")

    def differences(self) -> list[str]:
        listing = _listing()
        jumps = [
            o["rule"]
            for o in listing
            if "rule" in o and o["rule"]["chain"] == BASE_CHAIN and _jump_target(o["rule"]) == self.chain
        ]
        macs = [
            str(e["match"]["right"])
            for o in listing
            if "rule" in o and o["rule"]["chain"] == self.chain + "-mac"
            for e in o["rule"]["expr"]
            if "match" in e
        ]
        problems = []
        if not any(_iifname(r) == self.iface() for r in jumps):
            problems.append(f"macspoofchk rule for {self.iface()} is missing")
        if self.mac().lower() not in [m.lower() for m in macs]:
            problems.append(f"macspoofchk does not allow MAC {self.mac()}")
        return problems


def _match(left: dict[str, Any], right: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def gc(stale: Callable[[str, str], bool]) -> list[str]:
    """Remove every spoof-check whose (ref id, host veth) `stale` says is stale; their host
    veths' names (what GC reports, `pycni.gcreport`)."""
    listing = _listing()
    commands: list[dict[str, Any]] = []
    removed: list[str] = []
    for obj in listing:
        rule = obj.get("rule")
        if not rule or rule["chain"] != BASE_CHAIN:
            continue
        target = _jump_target(rule)
        if not target or not target.startswith(PREFIX):
            continue
        if stale(target[len(PREFIX) :], _iifname(rule) or ""):
            commands += _teardown_commands(listing, target)
            removed.append(_iifname(rule) or target)
    nft.run(_dedupe(commands), "collecting stale macspoofchk rules")
    return removed


def _dedupe(commands: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for command in commands:
        key = repr(command)
        if key not in seen:
            seen.add(key)
            out.append(command)
    return out
