"""portmap's nftables backend: fixed chains, and elements in sets and maps for the containers.

Layout, per address family (table `ip cni_hostport` / `ip6 cni_hostport`):

    prerouting, output (nat):   [hairpin marks] fib daddr type local jump hostip_hostports, then hostports
    hostip_hostports:           ip daddr . meta l4proto . th dport @<net>_hostip_keys goto <net>_hostip
    hostports:                  meta l4proto . th dport @<net>_hostports_keys goto <net>_hostports
                                (one rule per network)
    <net>_hostip, _hostports:   [conditions] [mark for masquerade] dnat to <key> map @hostip_targets / @hostport_targets
    masquerading (postrouting): meta mark & 0x2000 == 0x2000 masquerade

`<net>` is `net_<hash of the network>_<hash of its policy>` (snat, masqAll and the
family's conditions): an ADD under a changed configuration gets chains of its own,
and containers keep the policy they were added with.

A container's mapping is three elements, each commented with the attachment's owner
tag: the target (`*_targets`, key -> container address . port), which is also the
claim on the host port (`create element` fails the whole transaction when the key is
taken: a host port has one owner), the membership of the key in its network's set,
and, when SNAT applies, a hairpin element (`*_hairpins`, host interface . key: a
source routed through the interface the container sits behind is masqueraded, so the
reply comes back through the host).

No element holds a verdict: the kernel re-validates every jump and goto of a table
whenever a verdict element is added, which made each ADD cost more as containers
accumulated. An ADD is one transaction of the container's elements, declaring the
fixed objects and its network's only when they are missing (asked by name first: a
failed transaction costs the kernel an RCU grace period); DEL deletes the elements its
record lists (`_portmap_records`), after looking each up by key to check it is still
this attachment's; CHECK looks its elements up the same way. None of them lists the
table (libnftables would fetch every element to do so), so their cost does not depend
on the number of containers on the host: `bench/portmap_scaling.py` measures it.
The reference's nftables backend has a rule per mapping and no conflict detection;
its `markMasqBit` is ignored there, as here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pycni import faults, gcreport
from pycni.net import netlink, nft
from pycni.plugins.meta import _chained
from pycni.plugins.meta import _portmap_records as records
from pycni.plugins.meta._portmap_conf import PortMapConf, PortMapping
from pycni.plugins.meta._portmap_records import Entry, Record
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import IPInterface

log = logging.getLogger("pycni.plugin.portmap")

TABLE = "cni_hostport"
MARK = 1 << 13
FAMILIES = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
KINDS = ("hostip", "hostports")
TARGETS = {"hostip": "hostip_targets", "hostports": "hostport_targets"}
HAIRPINS = {"hostip": "hostip_hairpins", "hostports": "hostport_hairpins"}
DISPATCH = {"hostip": "hostip_hostports", "hostports": "hostports"}
BASE_RULES = {"prerouting": 4, "output": 2, "masquerading": 1}
_FORBIDDEN_IN_CONDITIONS = (";", "\n", "\r", "#")


def kind_of(mapping: PortMapping) -> str:
    return "hostip" if mapping.specific_host_ip is not None else "hostports"


def _key_text(mapping: PortMapping) -> str:
    base = f"{mapping.protocol} . {mapping.host_port}"
    return f"{mapping.specific_host_ip} . {base}" if mapping.specific_host_ip is not None else base


def _key_match(fam: str, kind: str) -> str:
    base = "meta l4proto . th dport"
    return f"{fam} daddr . {base}" if kind == "hostip" else base


NETWORK_OBJECT = "net_"


def network_prefix(network: str) -> str:
    return f"{NETWORK_OBJECT}{hashlib.sha256(network.encode()).hexdigest()[:12]}_"


def network_id(conf: PortMapConf, family: int, network: str) -> str:
    """The network's chains and sets under this configuration (its SNAT policy and conditions)."""
    policy = json.dumps([conf.snat, conf.masq_all, conf.conditions.get(family, [])])
    return network_prefix(network) + hashlib.sha256(policy.encode()).hexdigest()[:8]


def network_chain(netid: str, kind: str) -> str:
    return f"{netid}_{kind}"


def member_set(netid: str, kind: str) -> str:
    return f"{netid}_{kind}_keys"


# -- declarations (only when missing) ------------------------------------------------------


def fixed_objects(family: int) -> list[str]:
    """Create the table's fixed objects, and (re)write the base chains' rules; idempotent.
    The dispatch chains are created, never flushed: they hold the networks' rules."""
    fam, addr = FAMILIES[family]
    t = f"{fam} {TABLE}"
    cmds = [
        f"add table {t}",
        f"add map {t} hostip_targets {{ type {addr} . inet_proto . inet_service : {addr} . inet_service; }}",
        f"add map {t} hostport_targets {{ type inet_proto . inet_service : {addr} . inet_service; }}",
        f"add set {t} hostip_hairpins {{ type iface_index . {addr} . inet_proto . inet_service; }}",
        f"add set {t} hostport_hairpins {{ type iface_index . inet_proto . inet_service; }}",
        f"add chain {t} hostip_hostports",
        f"add chain {t} hostports",
        f"add chain {t} prerouting {{ type nat hook prerouting priority -100; policy accept; }}",
        f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
        f"add chain {t} masquerading {{ type nat hook postrouting priority 100; policy accept; }}",
    ]
    cmds += [f"flush chain {t} {chain}" for chain in BASE_RULES]
    mark = f"meta mark set meta mark | {MARK:#x}"
    for kind in KINDS:
        # Hairpin and same-link sources (arriving from behind the interface the container
        # sits behind) are masqueraded, or the container's reply would bypass the host.
        # `fib saddr oif` rather than `iif`: with br_netfilter the input is the bridge port.
        # Only in prerouting: the kernel refuses fib's oif on the output hook.
        key = _key_match(fam, kind)
        cmds.append(f"add rule {t} prerouting fib daddr type local fib saddr oif . {key} @{HAIRPINS[kind]} {mark}")
    for chain in ("prerouting", "output"):
        # Only traffic for this host's own addresses: the reference's nftables backend once
        # redirected traffic merely passing through (a published advisory).
        cmds.append(f"add rule {t} {chain} fib daddr type local jump hostip_hostports")
        cmds.append(f"add rule {t} {chain} fib daddr type local jump hostports")
    cmds.append(f"add rule {t} masquerading meta mark & {MARK:#x} == {MARK:#x} masquerade")
    return cmds


def _conditions_text(conf: PortMapConf, family: int) -> str:
    conditions = conf.conditions.get(family, [])
    key = "conditionsV4" if family == 4 else "conditionsV6"
    for item in conditions:
        if any(c in item for c in _FORBIDDEN_IN_CONDITIONS):
            raise CNIError(
                Code.INVALID_NETWORK_CONFIG, f"{key}: {item!r} is not a single nft match (';', '#' and newlines are refused)"
            )
    return " ".join(conditions)


def network_objects(conf: PortMapConf, family: int, network: str, netid: str, kind: str, dispatch: bool) -> list[str]:
    """The network's set and chain for one kind of mapping: its conditions, its SNAT policy,
    then the DNAT lookup; and, when `dispatch`, the rule that sends its keys there."""
    fam, addr = FAMILIES[family]
    t = f"{fam} {TABLE}"
    cond = _conditions_text(conf, family)
    prefix = f"{cond} " if cond else ""
    mark = f"meta mark set meta mark | {MARK:#x}"
    chain, keys, match = network_chain(netid, kind), member_set(netid, kind), _key_match(fam, kind)
    key_type = f"{addr} . inet_proto . inet_service" if kind == "hostip" else "inet_proto . inet_service"
    cmds = [
        f"add set {t} {keys} {{ type {key_type}; }}",
        f'add chain {t} {chain} {{ comment "network {network[:100]}"; }}',
        f"flush chain {t} {chain}",
    ]
    if conf.snat and conf.masq_all:
        cmds.append(f"add rule {t} {chain} {prefix}{mark}")
    elif conf.snat and family == 4:
        # From the host's loopback: only routable to the container once masqueraded.
        cmds.append(f"add rule {t} {chain} {prefix}ip saddr 127.0.0.0/8 {mark}")
    cmds.append(f"add rule {t} {chain} {prefix}dnat {fam} to {match} map @{TARGETS[kind]}")
    if dispatch:
        cmds.append(f"add rule {t} {DISPATCH[kind]} {match} @{keys} goto {chain}")
    return cmds


# -- what one attachment adds ---------------------------------------------------------------


def plan(conf: PortMapConf, network: str, addresses: dict[int, IPInterface], host_ifindex: dict[int, int | None]) -> list[Entry]:
    """The elements of every mapping of every family the container has."""
    entries: list[Entry] = []
    for family, address in sorted(addresses.items()):
        netid = network_id(conf, family, network)
        for mapping in conf.mappings_for(family):
            kind, key = kind_of(mapping), _key_text(mapping)
            entries.append(Entry(family, TARGETS[kind], key, f"{address.ip} . {mapping.container_port}"))
            entries.append(Entry(family, member_set(netid, kind), key))
            ifindex = host_ifindex.get(family)
            if conf.snat and not conf.masq_all and ifindex is not None:
                entries.append(Entry(family, HAIRPINS[kind], f"{ifindex} . {key}"))
    return entries


def _is_target(entry: Entry) -> bool:
    return entry.obj in TARGETS.values()


def _add_commands(entries: Iterable[Entry], tag: str) -> list[str]:
    cmds = []
    for e in entries:
        fam, _ = FAMILIES[e.family]
        verb = "create" if _is_target(e) else "add"  # the target claims the host port: it must be new
        data = f" : {e.data}" if e.data is not None else ""
        cmds.append(f'{verb} element {fam} {TABLE} {e.obj} {{ {e.key} comment "{tag}"{data} }}')
    return cmds


def _element_changes(entries: Iterable[Entry], tag: str, delete: bool = False) -> list[nft.ElementChange]:
    """The same as `_add_commands` (or `_delete_commands`), as netlink element changes."""
    out = []
    for e in entries:
        op = "delete" if delete else "create" if _is_target(e) else "add"
        data = _key_bytes(e.data) if e.data is not None and not delete else None
        out.append(nft.ElementChange(op, FAMILIES[e.family][0], TABLE, e.obj, _key_bytes(e.key), data, tag))
    return out


def _delete_commands(entries: Iterable[Entry]) -> list[str]:
    return [f"delete element {FAMILIES[e.family][0]} {TABLE} {e.obj} {{ {e.key} }}" for e in entries]


# -- looking elements up (by key, in the kernel: no listing) -----------------------------------


def _key_bytes(text: str) -> bytes:
    """An entry's key or data (nft syntax: `[ifindex .] [address .] proto . port`, `address . port`)
    as the kernel stores it."""
    parts = text.split(" . ")
    fields = []
    for position, part in enumerate(parts):
        if part in nft.PROTOCOL_NUMBERS:
            fields.append(nft.key_field(part, "proto"))
        elif position == len(parts) - 1:
            fields.append(nft.key_field(int(part), "port"))
        elif position == 0 and part.isdigit():
            fields.append(nft.key_field(int(part), "ifindex"))
        else:
            fields.append(nft.key_field(part, "addr"))
    return nft.concat(*fields)


def _lookup(entries: Iterable[Entry]) -> dict[Entry, nft.Element | None]:
    """Each entry's element as the kernel has it (None: absent)."""
    return {e: nft.lookup(FAMILIES[e.family][0], TABLE, e.obj, _key_bytes(e.key)) for e in entries}


def _owned(entries: Iterable[Entry], tag: str) -> list[Entry]:
    """The entries that exist and carry `tag`."""
    return [e for e, el in _lookup(entries).items() if el is not None and el.comment == tag]


def _delete_owned(entries: list[Entry], tag: str, what: str) -> None:
    """Delete this attachment's entries that are still there and still its own, in one transaction."""
    nft.change_elements(_element_changes(_owned(entries, tag), tag, delete=True), what)


# -- the table's structure (listed without elements) ----------------------------------------


@dataclass
class Structure:
    chains: dict[str, int] = field(default_factory=dict)  # name -> number of rules
    sets: set[str] = field(default_factory=set)
    dispatch: dict[str, int] = field(default_factory=dict)  # network chain -> handle of the rule going there

    def missing_fixed(self) -> list[str]:
        wanted_sets = [*TARGETS.values(), *HAIRPINS.values()]
        missing = [s for s in wanted_sets if s not in self.sets]
        missing += [c for c in DISPATCH.values() if c not in self.chains]
        missing += [f"{c} rules" for c, n in BASE_RULES.items() if self.chains.get(c) != n]
        return missing


def structure(family: int) -> Structure:
    fam, _ = FAMILIES[family]
    found = Structure()
    for item in nft.list_ruleset(fam):
        for kind in ("set", "map"):
            obj = item.get(kind)
            if obj is not None and obj.get("table") == TABLE:
                found.sets.add(obj["name"])
        chain = item.get("chain")
        if chain is not None and chain.get("table") == TABLE:
            found.chains.setdefault(chain["name"], 0)
        rule = item.get("rule")
        if rule is not None and rule.get("table") == TABLE:
            found.chains[rule["chain"]] = found.chains.get(rule["chain"], 0) + 1
            if rule["chain"] in DISPATCH.values():
                for expr in rule.get("expr", []):
                    target = (expr.get("goto") or {}).get("target")
                    if target:
                        found.dispatch[target] = int(rule["handle"])
    return found


def _declarations(conf: PortMapConf, network: str, entries: list[Entry]) -> list[str]:
    """The fixed objects and the network's, for the families and kinds `entries` use, where missing."""
    cmds: list[str] = []
    for family in sorted({e.family for e in entries}):
        found = structure(family)
        if found.missing_fixed():
            log.info("declaring table %s %s (missing: %s)", FAMILIES[family][0], TABLE, ", ".join(found.missing_fixed()))
            cmds += fixed_objects(family)
        netid = network_id(conf, family, network)
        for kind in KINDS:
            if member_set(netid, kind) not in {e.obj for e in entries if e.family == family}:
                continue
            chain = network_chain(netid, kind)
            if chain in found.dispatch and member_set(netid, kind) in found.sets:
                continue
            cmds += network_objects(conf, family, network, netid, kind, dispatch=chain not in found.dispatch)
    return cmds


def remove_networks(network: str, keep: set[str] | None = None) -> None:
    """Delete the network's chains, sets and dispatch rules (those of every policy it had),
    except the network ids in `keep`. Sets still holding elements are refused by the kernel
    only if referenced, so callers remove a network once it has no attachment left."""
    prefix = network_prefix(network)
    for family, (fam, _) in FAMILIES.items():
        found = structure(family)
        netids = {c.rsplit("_", 1)[0] for c in found.chains if c.startswith(prefix)}
        netids |= {s.rsplit("_", 2)[0] for s in found.sets if s.startswith(prefix)}
        netids -= keep or set()
        if not netids:
            continue
        cmds = []
        for netid in sorted(netids):
            for kind in KINDS:
                chain = network_chain(netid, kind)
                if chain in found.dispatch:
                    cmds.append(f"delete rule {fam} {TABLE} {DISPATCH[kind]} handle {found.dispatch[chain]}")
                if chain in found.chains:
                    cmds.append(f"delete chain {fam} {TABLE} {chain}")
                if member_set(netid, kind) in found.sets:
                    cmds.append(f"delete set {fam} {TABLE} {member_set(netid, kind)}")
        try:
            nft.run_text("\n".join(cmds), "portmap: remove a network's chains")
        except nft.NftError as err:
            log.warning("could not remove the chains of network %s: %s", network, err.error.strip())


# -- host interface toward the container -----------------------------------------------


def host_interface(address: IPInterface) -> tuple[int, str] | None:
    """The host interface that routes to the container address (a bridge, a veth), or None."""
    try:
        oif = netlink.route_oif(None, str(address.ip))
        if oif is None:
            return None
        return oif, socket.if_indextoname(oif)
    except Exception as exc:  # noqa: BLE001 - no route: no hairpin element, as the reference does
        log.info("no host route to %s: %s", address.ip, exc)
        return None


# -- the operations -------------------------------------------------------------------


def _transaction_error(err: nft.NftError, conf: PortMapConf) -> CNIError:
    text = err.error.strip()
    # The kernel's refusals read "Could not process rule"; anything else is nft failing to parse
    # or evaluate the script, whose only part not written by this module is the conditions.
    keys = [key for family, key in ((4, "conditionsV4"), (6, "conditionsV6")) if conf.conditions.get(family)]
    if keys and "Could not process rule" not in text:
        given = "; ".join(f"{key}: {' '.join(conf.conditions[4 if key.endswith('4') else 6])!r}" for key in keys)
        return CNIError(Code.INVALID_NETWORK_CONFIG, f"{' or '.join(keys)} are not valid nftables matches ({given})", text)
    return CNIError(Code.KERNEL, "unable to set up nftables rules for port mappings", text)


def add(
    conf: PortMapConf,
    network: str,
    container_id: str,
    ifname: str,
    tag: str,
    addresses: dict[int, IPInterface],
    host_ifindex: dict[int, int | None],
) -> None:
    """Apply every mapping for every family in one transaction; on a conflict, apply nothing."""
    entries = plan(conf, network, addresses, host_ifindex)
    if not entries:
        return
    previous = records.read(network, container_id, ifname)
    # Written first: a DEL after a crash here still finds what may have been added.
    records.write(Record(network, container_id, ifname, tag, entries))
    faults.checkpoint("portmap-record-written")
    try:
        # The network's sets exist, so do its chains and the table (a set in use cannot be
        # deleted): only the elements are needed. A failed transaction costs an RCU grace
        # period in the kernel, so this is asked first rather than tried.
        members = {(FAMILIES[e.family][0], e.obj) for e in entries if e.obj.startswith(NETWORK_OBJECT)}
        if previous is None and all(nft.set_exists(fam, TABLE, obj) for fam, obj in members):
            try:
                nft.change_elements(_element_changes(entries, tag), "portmap ADD")
                faults.checkpoint("portmap-rules-added")
                return
            except nft.NftError as err:
                log.info("portmap ADD: %s; looking at the table", err.error.strip().splitlines()[0])
        _add_slowly(conf, network, tag, entries, previous.entries if previous else [])
        faults.checkpoint("portmap-rules-added")
    except BaseException:
        if previous is not None:
            records.write(previous)
        else:
            records.remove(network, container_id, ifname)
        raise


def _add_slowly(conf: PortMapConf, network: str, tag: str, entries: list[Entry], previous: list[Entry]) -> None:
    """ADD when the quick transaction failed: declare what is missing, find who holds the
    ports, replace this attachment's own old elements; still one transaction."""
    holders = _lookup(e for e in entries if _is_target(e))
    conflicts = [
        f"{_describe(e)} is already mapped by {el.comment}" for e, el in holders.items() if el is not None and el.comment != tag
    ]
    if conflicts:
        raise CNIError(
            Code.CONFLICT,
            f"host port conflict for {tag}: " + "; ".join(conflicts),
            "each host address, protocol and port can be mapped to one container only; nothing was changed",
        )
    # A repeated ADD, or elements left by a record that was lost: ours to replace.
    stale = _owned(list(dict.fromkeys([*previous, *entries])), tag)
    cmds = _declarations(conf, network, entries) + _delete_commands(stale) + _add_commands(entries, tag)
    try:
        nft.run_text("\n".join(cmds), "portmap ADD")
    except nft.NftError as err:
        raise _transaction_error(err, conf) from None


def _describe(entry: Entry) -> str:
    parts = entry.key.split(" . ")
    where = parts[0] if len(parts) == 3 else "*"
    return f"{parts[-2]}/{where}:{parts[-1]} (IPv{entry.family})"


def entries_of_mappings(conf: PortMapConf, network: str) -> list[Entry]:
    """Without a record: the claims and network memberships `conf`'s mappings would have made."""
    entries: list[Entry] = []
    for family in FAMILIES:
        netid = network_id(conf, family, network)
        for mapping in conf.mappings_for(family):
            kind, key = kind_of(mapping), _key_text(mapping)
            entries += [Entry(family, TARGETS[kind], key), Entry(family, member_set(netid, kind), key)]
    return entries


def delete(network: str, container_id: str, ifname: str, tag: str, given: list[Entry]) -> None:
    """Remove this attachment's elements: those its record lists, or, without a record, the
    ones the given mappings would have made (if they are still its own)."""
    record = records.read(network, container_id, ifname)
    entries = record.entries if record is not None else given
    if entries:
        _delete_owned(entries, tag, "portmap DEL")
        faults.checkpoint("portmap-rules-deleted")
    # Also without a record: a write of it that was killed left a temporary file, which kept
    # the network's directory (and so its chains) when its last record went.
    if records.remove(network, container_id, ifname):
        remove_networks(network)  # its last attachment is gone


def check(
    conf: PortMapConf, network: str, tag: str, addresses: dict[int, IPInterface], host_ifindex: dict[int, int | None]
) -> None:
    """Every mapping of every family the container has is in place, pointing at it."""
    entries = plan(conf, network, addresses, host_ifindex)
    for family in sorted({e.family for e in entries}):
        fam, _ = FAMILIES[family]
        found = structure(family)
        if found.missing_fixed():
            raise CNIError(Code.KERNEL, f"table {fam} {TABLE} lacks {', '.join(found.missing_fixed())}")
        netid = network_id(conf, family, network)
        for kind in KINDS:
            chain = network_chain(netid, kind)
            if any(e.obj == member_set(netid, kind) for e in entries) and chain not in found.dispatch:
                raise CNIError(Code.KERNEL, f"the chain of network {network} ({chain}) is missing from {fam} {TABLE}")
    for entry, element in _lookup(entries).items():
        fam, _ = FAMILIES[entry.family]
        if element is None or element.comment != tag:
            owner = f" (it belongs to {element.comment})" if element is not None else ""
            raise CNIError(
                Code.KERNEL, f"port mapping {_describe(entry)} of {tag} is missing from {fam} {TABLE} {entry.obj}{owner}"
            )
        if entry.data is not None and element.data != _key_bytes(entry.data):
            raise CNIError(
                Code.KERNEL,
                f"port mapping {_describe(entry)} of {tag} does not lead to {entry.data.replace(' . ', ':')}",
                f"found {(element.data or b'').hex()}",
            )


def gc(network: str, valid: set[str]) -> None:
    """Remove the elements of this network's attachments that are not valid any more: those of
    stale records, then any left without a record (found by their tags); then the network's
    chains and sets no attachment uses."""
    reported: set[str] = set()
    for record in records.all_of(network):
        if record.tag not in valid:
            _delete_owned(record.entries, record.tag, "portmap GC")
            records.remove(network, record.container_id, record.ifname)
            reported.add(record.tag)
            gcreport.released("port-mapped attachment", f"{record.container_id}/{record.ifname}")
    prefix = network_prefix(network)
    # An owner tag starts with its network's name (cut to 60 characters when the tag is hashed).
    own = {network, network[:60]}
    shared = {*TARGETS.values(), *HAIRPINS.values()}
    in_use = {e.obj.rsplit("_", 2)[0] for r in records.all_of(network) for e in r.entries if e.obj.startswith(prefix)}
    for fam, _ in FAMILIES.values():
        elements: list[tuple[str, Any, str]] = []  # (set, key, comment)
        for item in nft.list_objects(f"table {fam} {TABLE}"):
            obj = item.get("set") or item.get("map")
            if obj is None or not (obj["name"] in shared or obj["name"].startswith(prefix)):
                continue
            for el in obj.get("elem", []) or []:
                el = el[0] if isinstance(el, list) else el
                if isinstance(el, dict) and "elem" in el:
                    elements.append((obj["name"], el["elem"].get("val"), el["elem"].get("comment", "")))
        stale = {c for _, _, c in elements if c and c not in valid and c.split(" ", 1)[0] in own}
        cmds = [
            {"delete": {"element": {"family": fam, "table": TABLE, "name": name, "elem": [key]}}}
            for name, key, comment in elements
            if comment in stale
        ]
        nft.run(cmds, "portmap GC")
        for tag in sorted(stale - reported):  # elements a record no longer named (a killed ADD's)
            reported.add(tag)
            gcreport.released("port-mapped attachment", _chained.attachment_of(tag))
        in_use |= {name.rsplit("_", 2)[0] for name, _, c in elements if name.startswith(prefix) and c not in stale}
    records.remove_leftovers(network)
    records.remove_network_dir(network)
    remove_networks(network, keep=in_use)
