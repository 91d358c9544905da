"""ipMasq on nftables, in the layout of the reference plugins' nftables backend (≥ 1.5).

Table `inet cni_plugins_masquerade`: a `postrouting` nat chain (priority srcnat) that
returns for multicast and jumps to `masq_checks`, which holds one rule per container
address: `ip saddr == <ip> ip daddr != <subnet> masquerade`. Each rule's comment begins
with a hash of the network and of the attachment (ifname, containerID), so DEL removes
exactly that attachment's rules (even when another container has since been given the
same address) and GC finds the stale rules of a network. Since the layout and the hashes
are the reference's, its nftables backend and ours manage each other's rules.

Finding an attachment's rules by their comment means listing the chain, whose cost grows
with every container on the host. So ADD also keeps a record of the handles the kernel gave
its rules (`/run/pycni/ipmasq/<instance hash>`), and DEL and CHECK look those rules up by
handle, checking their comment: no listing. Without a record (rules made by the reference,
or an ADD killed before it wrote one) they fall back to the listing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pycni import files
from pycni.net import nft
from pycni.net.addrs import IPInterface

TABLE = "cni_plugins_masquerade"
CHAIN = "masq_checks"
COMMENT_MAX = 128  # knftables' limit, which the reference applies
RECORDS = "/run/pycni/ipmasq"


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


def _saddr(rule: dict[str, Any]) -> str | None:
    for expr in rule.get("expr", []):
        match = expr.get("match", {})
        payload = match.get("left", {}).get("payload", {})
        if payload.get("field") == "saddr" and isinstance(match.get("right"), str):
            return str(match["right"])
    return None


def _record_path(instance: str) -> str:
    return os.path.join(RECORDS, instance)


def _read_record(instance: str) -> dict[int, str] | None:
    """handle -> source address of this attachment's rules, as ADD recorded them; None without a record."""
    try:
        with open(_record_path(instance)) as fh:
            rules = json.load(fh)["rules"]
        return {int(handle): str(address) for handle, address in rules}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: the listing decides


def _write_record(instance: str, rules: dict[int, str]) -> None:
    files.replace_file(_record_path(instance), json.dumps({"rules": sorted(rules.items())}).encode())


def _drop_record(instance: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(_record_path(instance))


def _attachment_rules(instance: str) -> dict[int, str | None]:
    """handle -> source address of this attachment's rules in the kernel: the recorded ones
    that are still there (checked by handle and comment), or the listing's without a record."""
    recorded = _read_record(instance)
    if recorded is None:
        return {int(r["handle"]): _saddr(r) for r in _find(instance)}
    return {
        handle: address
        for handle, address in recorded.items()
        if (nft.rule_comment("inet", TABLE, CHAIN, handle) or "").startswith(instance)
    }


def _delete_handles(handles: Iterable[int], what: str) -> None:
    script = "".join(f"delete rule inet {TABLE} {CHAIN} handle {h}\n" for h in handles)
    if script:
        nft.run_text(script, what)


@dataclass
class IPMasq:
    """Masquerade traffic from `addresses` to anything outside their subnets (not multicast)."""

    network: str
    ifname: str
    container_id: str
    addresses: list[IPInterface]
    what: str = "ipMasq"

    @property
    def instance(self) -> str:
        return instance_hash(self.network, self.ifname, self.container_id)

    def apply(self) -> None:
        note = comment(self.network, self.ifname, self.container_id)
        stale = _attachment_rules(self.instance) if _read_record(self.instance) is not None else {}
        script = [
            f'add table inet {TABLE} {{ comment "Masquerading for plugins from github.com/containernetworking/plugins" ; }}',
            f'add chain inet {TABLE} {CHAIN} {{ comment "Masquerade traffic from certain IPs to any (non-multicast) IP '
            'outside their subnet" ; }',
            f"add chain inet {TABLE} postrouting {{ type nat hook postrouting priority srcnat ; }}",
            f"flush chain inet {TABLE} postrouting",
            f"add rule inet {TABLE} postrouting ip daddr == 224.0.0.0/4 return",
            f"add rule inet {TABLE} postrouting ip6 daddr == ff00::/8 return",
            f"add rule inet {TABLE} postrouting goto {CHAIN}",
            *(f"delete rule inet {TABLE} {CHAIN} handle {handle}" for handle in stale),
            *(f'add rule inet {TABLE} {CHAIN} {_masq_rule(a)} comment "{note}"' for a in self.addresses),
        ]
        added = nft.run_text_new_rules("\n".join(script) + "\n", TABLE, CHAIN, "setting up ipMasq")
        # Handles grow in the order the rules were added: the n-th of this attachment's is addresses[n]'s.
        ours = [handle for handle, text in added if text == note]
        if len(ours) == len(self.addresses):
            _write_record(self.instance, {h: str(a.ip) for h, a in zip(ours, self.addresses, strict=True)})
        else:  # announcements lost: DEL and CHECK list the chain, as for rules made by the reference
            _drop_record(self.instance)

    def remove(self) -> None:
        _delete_handles(_attachment_rules(self.instance), "removing ipMasq rules")
        _drop_record(self.instance)

    def differences(self) -> list[str]:
        present = set(_attachment_rules(self.instance).values())
        return [f"ipMasq rule for {a.ip} is missing" for a in self.addresses if str(a.ip) not in present]


def gc(network: str, valid: Iterable[tuple[str, str]]) -> list[str]:
    """Remove the network's rules (and records) whose (containerID, ifname) is not in `valid`;
    the addresses they masqueraded (what GC reports, `pycni.gcreport`)."""
    valid = list(valid)
    keep = {comment(network, ifname, container_id) for container_id, ifname in valid}
    stale = [r for r in _find(network_hash(network)) if r.get("comment") not in keep]
    _delete_handles((r["handle"] for r in stale), "collecting stale ipMasq rules")
    kept = {instance_hash(network, ifname, container_id) for container_id, ifname in valid}
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(RECORDS):
            if name.startswith(network_hash(network) + "-") and name not in kept:
                _drop_record(name)
    return [_saddr(r) or str(r.get("comment", "")) for r in stale]
