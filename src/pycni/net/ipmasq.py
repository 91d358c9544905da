"""ipMasq on nftables, in the layout of the reference plugins' nftables backend (≥ 1.5).

Table `inet cni_plugins_masquerade`: a `postrouting` nat chain (priority srcnat) that
returns for multicast and jumps to `masq_checks`, which holds one rule per container
address: `ip saddr == <ip> ip daddr != <subnet> masquerade`. Each rule's comment begins
with a hash of the network and of the attachment (ifname, containerID), so DEL removes
exactly that attachment's rules (even when another container has since been given the
same address) and GC finds the stale rules of a network. Since the layout and the hashes
are the reference's, its nftables backend and ours manage each other's rules.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pycni.net import nft
from pycni.net.addrs import IPInterface

TABLE = "cni_plugins_masquerade"
CHAIN = "masq_checks"
COMMENT_MAX = 128  # knftables' limit, which the reference applies


def _hash(text: str) -> str:
    return hashlib.sha512(text.encode()).hexdigest()[:16]


def network_hash(network: str) -> str:
    return _hash(network)


def instance_hash(network: str, ifname: str, container_id: str) -> str:
    return f"{network_hash(network)}-{_hash(ifname + ':' + container_id)}"


def comment(network: str, ifname: str, container_id: str) -> str:
    def clean(text: str) -> str:
        return text.replace('"', "")

    text = (
        f"{instance_hash(network, ifname, container_id)}, net: {clean(network)}, if: {clean(ifname)}, id: {clean(container_id)}"
    )
    return text[:COMMENT_MAX]


def _masq_rule(address: IPInterface) -> str:
    family = "ip" if address.version == 4 else "ip6"
    return f"{family} saddr == {address.ip} {family} daddr != {address.network} masquerade"


def _rules() -> list[dict[str, Any]]:
    return [o["rule"] for o in nft.list_objects(f"chain inet {TABLE} {CHAIN}") if "rule" in o]


def _find(prefix: str) -> list[dict[str, Any]]:
    return [r for r in _rules() if str(r.get("comment", "")).startswith(prefix)]


def _delete(rules: Iterable[dict[str, Any]], what: str) -> None:
    script = "".join(f"delete rule inet {TABLE} {CHAIN} handle {r['handle']}\n" for r in rules)
    if script:
        nft.run_text(script, what)


def _saddr(rule: dict[str, Any]) -> str | None:
    for expr in rule.get("expr", []):
        match = expr.get("match", {})
        payload = match.get("left", {}).get("payload", {})
        if payload.get("field") == "saddr" and isinstance(match.get("right"), str):
            return str(match["right"])
    return None


@dataclass
class IPMasq:
    """Masquerade traffic from `addresses` to anything outside their subnets (not multicast)."""

    network: str
    ifname: str
    container_id: str
    addresses: list[IPInterface]
    what: str = "ipMasq"

    def apply(self) -> None:
        note = comment(self.network, self.ifname, self.container_id)
        stale = _find(instance_hash(self.network, self.ifname, self.container_id))
        script = [
            f'add table inet {TABLE} {{ comment "Masquerading for plugins from github.com/containernetworking/plugins" ; }}',
            f'add chain inet {TABLE} {CHAIN} {{ comment "Masquerade traffic from certain IPs to any (non-multicast) IP '
            'outside their subnet" ; }',
            f"add chain inet {TABLE} postrouting {{ type nat hook postrouting priority srcnat ; }}",
            f"flush chain inet {TABLE} postrouting",
            f"add rule inet {TABLE} postrouting ip daddr == 224.0.0.0/4 return",
            f"add rule inet {TABLE} postrouting ip6 daddr == ff00::/8 return",
            f"add rule inet {TABLE} postrouting goto {CHAIN}",
            *(f"delete rule inet {TABLE} {CHAIN} handle {r['handle']}" for r in stale),
            *(f'add rule inet {TABLE} {CHAIN} {_masq_rule(a)} comment "{note}"' for a in self.addresses),
        ]
        nft.run_text("\n".join(script) + "\n", "setting up ipMasq")

    def remove(self) -> None:
        _delete(_find(instance_hash(self.network, self.ifname, self.container_id)), "removing ipMasq rules")

    def differences(self) -> list[str]:
        present = {_saddr(r) for r in _find(instance_hash(self.network, self.ifname, self.container_id))}
        return [f"ipMasq rule for {a.ip} is missing" for a in self.addresses if str(a.ip) not in present]


def gc(network: str, valid: Iterable[tuple[str, str]]) -> int:
    """Remove the network's rules whose (containerID, ifname) is not in `valid`; how many."""
    keep = {comment(network, ifname, container_id) for container_id, ifname in valid}
    stale = [r for r in _find(network_hash(network)) if r.get("comment") not in keep]
    _delete(stale, "collecting stale ipMasq rules")
    return len(stale)
