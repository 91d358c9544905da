"""portmap's nftables backend: a fixed rule set, with one map element per port mapping.

Layout, per address family (table `ip cni_hostport` / `ip6 cni_hostport`, the
reference's table and chain names):

    prerouting, output (nat):  fib daddr type local jump hostip_hostports, then hostports
    hostip_hostports:          ip daddr . meta l4proto . th dport vmap @hostip_networks
    hostports:                 meta l4proto . th dport vmap @hostport_networks
    net_<hash>_hostip/_hostports  (one pair per network: its conditions and SNAT policy)
                               [mark for masquerade] dnat to <key> map @hostip_targets / @hostport_targets
    masquerading (postrouting): meta mark & 0x2000 == 0x2000 masquerade

A container's mapping is three elements, each commented with the attachment's
owner tag: the claim (`*_networks`, key -> goto its network's chain), the target
(`*_targets`, key -> container address . port) and, when SNAT applies, a hairpin
element (`*_hairpins`, host interface . key: a source routed through the interface
the container sits behind is masqueraded, so the reply comes back through the host).

So an ADD or DEL is one transaction of a constant number of commands whatever the
number of containers, the packet path is hash lookups, and a host port can have
one owner only: the claim is created with `create element`, which fails the whole
transaction when the key exists. The reference's nftables backend has a rule per
mapping and no conflict detection; its `markMasqBit` is ignored there, as here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pycni.net import netlink, nft
from pycni.plugins.meta._portmap_conf import PortMapConf, PortMapping
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import IPInterface

log = logging.getLogger("pycni.plugin.portmap")

TABLE = "cni_hostport"
MARK = 1 << 13
FAMILIES = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
# Objects that hold per-container elements, by mapping kind.
CLAIMS = {"hostip": "hostip_networks", "hostports": "hostport_networks"}
TARGETS = {"hostip": "hostip_targets", "hostports": "hostport_targets"}
HAIRPINS = {"hostip": "hostip_hairpins", "hostports": "hostport_hairpins"}
ELEMENT_OBJECTS = (*CLAIMS.values(), *TARGETS.values(), *HAIRPINS.values())
_FORBIDDEN_IN_CONDITIONS = (";", "\n", "\r", "#")


def network_chain(network: str, kind: str) -> str:
    return f"net_{hashlib.sha256(network.encode()).hexdigest()[:16]}_{kind}"


def kind_of(mapping: PortMapping) -> str:
    return "hostip" if mapping.specific_host_ip is not None else "hostports"


def _key_text(mapping: PortMapping) -> str:
    base = f"{mapping.protocol} . {mapping.host_port}"
    return f"{mapping.specific_host_ip} . {base}" if mapping.specific_host_ip is not None else base


def _key_match(fam: str, kind: str) -> str:
    base = "meta l4proto . th dport"
    return f"{fam} daddr . {base}" if kind == "hostip" else base


# -- the fixed rule set -------------------------------------------------------------


def skeleton(family: int) -> list[str]:
    """Commands that create (or repair) the table's fixed objects; idempotent."""
    fam, addr = FAMILIES[family]
    t = f"{fam} {TABLE}"
    cmds = [
        f"add table {t}",
        f"add map {t} hostip_networks {{ type {addr} . inet_proto . inet_service : verdict; }}",
        f"add map {t} hostport_networks {{ type inet_proto . inet_service : verdict; }}",
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
    for chain in ("hostip_hostports", "hostports", "prerouting", "output", "masquerading"):
        cmds.append(f"flush chain {t} {chain}")
    cmds += [
        f"add rule {t} hostip_hostports {_key_match(fam, 'hostip')} vmap @hostip_networks",
        f"add rule {t} hostports {_key_match(fam, 'hostports')} vmap @hostport_networks",
    ]
    mark = f"meta mark set meta mark | {MARK:#x}"
    for kind in ("hostip", "hostports"):
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


def network_chains(conf: PortMapConf, family: int, network: str) -> list[str]:
    """The network's two chains: its conditions, its SNAT policy, then the DNAT lookup."""
    fam, _ = FAMILIES[family]
    t = f"{fam} {TABLE}"
    cond = _conditions_text(conf, family)
    prefix = f"{cond} " if cond else ""
    mark = f"meta mark set meta mark | {MARK:#x}"
    cmds: list[str] = []
    for kind in ("hostip", "hostports"):
        chain = network_chain(network, kind)
        key = _key_match(fam, kind)
        cmds += [f'add chain {t} {chain} {{ comment "network {network[:100]}"; }}', f"flush chain {t} {chain}"]
        if conf.snat and conf.masq_all:
            cmds.append(f"add rule {t} {chain} {prefix}{mark}")
        elif conf.snat and family == 4:
            # From the host's loopback: only routable to the container once masqueraded.
            cmds.append(f"add rule {t} {chain} {prefix}ip saddr 127.0.0.0/8 {mark}")
        cmds.append(f"add rule {t} {chain} {prefix}dnat {fam} to {key} map @{TARGETS[kind]}")
    return cmds


def element_commands(
    conf: PortMapConf, family: int, network: str, tag: str, address: IPInterface, host_ifindex: int | None
) -> list[str]:
    fam, _ = FAMILIES[family]
    t = f"{fam} {TABLE}"
    cmds: list[str] = []
    for mapping in conf.mappings_for(family):
        kind = kind_of(mapping)
        key = _key_text(mapping)
        comment = f'comment "{tag}"'
        cmds.append(f"create element {t} {CLAIMS[kind]} {{ {key} {comment} : goto {network_chain(network, kind)} }}")
        cmds.append(f"add element {t} {TARGETS[kind]} {{ {key} {comment} : {address.ip} . {mapping.container_port} }}")
        if conf.snat and not conf.masq_all and host_ifindex is not None:
            cmds.append(f"add element {t} {HAIRPINS[kind]} {{ {host_ifindex} . {key} {comment} }}")
    return cmds


# -- reading what is there ------------------------------------------------------------


@dataclass
class Element:
    family: int
    obj: str  # set or map name
    key: Any  # the JSON value nft lists (a concat list)
    comment: str
    data: Any = None

    def key_parts(self) -> list[Any]:
        if isinstance(self.key, dict) and "concat" in self.key:
            return list(self.key["concat"])
        return [self.key]


def _elements_of(family: int, obj: dict[str, Any]) -> Iterable[Element]:
    for item in obj.get("elem", []) or []:
        data = None
        if isinstance(item, list) and len(item) == 2:
            item, data = item
        comment = ""
        if isinstance(item, dict) and "elem" in item:
            comment = item["elem"].get("comment", "")
            item = item["elem"].get("val")
        yield Element(family, obj["name"], item, comment, data)


def list_elements(family: int) -> tuple[list[Element], set[str]]:
    """Every per-container element of the family's table, and the table's chain names."""
    fam, _ = FAMILIES[family]
    elements: list[Element] = []
    chains: set[str] = set()
    for item in nft.list_objects(f"table {fam} {TABLE}"):
        if "chain" in item:
            chains.add(item["chain"]["name"])
        for kind in ("map", "set"):
            obj = item.get(kind)
            if obj is not None and obj.get("name") in ELEMENT_OBJECTS:
                elements.extend(_elements_of(family, obj))
    return elements, chains


def delete_commands(elements: Iterable[Element]) -> list[dict[str, Any]]:
    cmds = []
    for el in elements:
        fam, _ = FAMILIES[el.family]
        cmds.append({"delete": {"element": {"family": fam, "table": TABLE, "name": el.obj, "elem": [el.key]}}})
    return cmds


def _same_key(el: Element, family: int, mapping: PortMapping) -> bool:
    """Does the element belong to `mapping`'s key (claims, targets: the key; hairpins: iif . key)?"""
    parts = el.key_parts()
    if el.obj in HAIRPINS.values():
        parts = parts[1:]
    want: list[Any] = [mapping.protocol, mapping.host_port]
    if mapping.specific_host_ip is not None:
        want.insert(0, mapping.specific_host_ip)
    if len(parts) != len(want) or el.obj not in (CLAIMS[kind_of(mapping)], TARGETS[kind_of(mapping)], HAIRPINS[kind_of(mapping)]):
        return False
    for got, expected in zip(parts, want, strict=True):
        if isinstance(expected, ipaddress.IPv4Address | ipaddress.IPv6Address):
            try:
                if ipaddress.ip_address(str(got)) != expected:
                    return False
            except ValueError:
                return False
        elif str(got) != str(expected):
            return False
    return True


# -- host interface toward the container -----------------------------------------------


def host_interface(address: IPInterface) -> tuple[int, str] | None:
    """The host interface that routes to the container address (a bridge, a veth), or None."""
    try:
        with netlink.route(None) as ipr:
            routes = ipr.route("get", dst=str(address.ip))
            if not routes:
                return None
            oif = routes[0].get_attr("RTA_OIF")
            if oif is None:
                return None
            links = ipr.get_links(oif)
            return int(oif), str(links[0].get_attr("IFLA_IFNAME"))
    except Exception as exc:  # noqa: BLE001 - no route: no hairpin element, as the reference does
        log.info("no host route to %s: %s", address.ip, exc)
        return None


# -- the operations -------------------------------------------------------------------


def _transaction_error(err: nft.NftError, conf: PortMapConf) -> CNIError:
    text = err.error.strip()
    if any(conf.conditions.values()) and "syntax error" in text:
        return CNIError(Code.INVALID_NETWORK_CONFIG, "conditionsV4/conditionsV6 are not valid nftables matches", text)
    return CNIError(Code.KERNEL, "unable to set up nftables rules for port mappings", text)


def add(
    conf: PortMapConf, network: str, tag: str, addresses: dict[int, IPInterface], host_ifindex: dict[int, int | None]
) -> None:
    """Apply every mapping for every family in one transaction; on a conflict, apply nothing."""
    text: list[str] = []
    for family, address in sorted(addresses.items()):
        if not conf.mappings_for(family):
            continue
        text += skeleton(family)
        text += network_chains(conf, family, network)
        text += element_commands(conf, family, network, tag, address, host_ifindex.get(family))
    if not text:
        return
    try:
        nft.run_text("\n".join(text), "portmap ADD")
        return
    except nft.NftError as err:
        if "File exists" not in err.error:
            raise _transaction_error(err, conf) from None
    # A key is taken. Ours (a repeated ADD) or orphaned: replace it; another attachment's: refuse.
    stale: list[Element] = []
    conflicts: list[str] = []
    for family in addresses:
        elements, _ = list_elements(family)
        for mapping in conf.mappings_for(family):
            related = [el for el in elements if _same_key(el, family, mapping)]
            owners = {el.comment for el in related if el.obj in CLAIMS.values() and el.comment != tag}
            if owners:
                conflicts.append(f"{mapping.describe()} (IPv{family}) is already mapped by {', '.join(sorted(owners))}")
            stale += related
    if conflicts:
        raise CNIError(
            Code.CONFLICT,
            f"host port conflict for {tag}: " + "; ".join(conflicts),
            "each host address, protocol and port can be mapped to one container only; nothing was changed",
        )
    if stale:
        nft.run(delete_commands(stale), "portmap ADD (replace this attachment's old entries)")
    try:
        nft.run_text("\n".join(text), "portmap ADD")
    except nft.NftError as err:
        raise _transaction_error(err, conf) from None


def _unused_network_chains(family: int, elements: list[Element], chains: set[str], leaving: set[str]) -> list[dict[str, Any]]:
    """Delete commands for network chains no remaining claim points at (the last container left)."""
    fam, _ = FAMILIES[family]
    wanted = {
        (el.data or {}).get("goto", {}).get("target")
        for el in elements
        if el.obj in CLAIMS.values() and el.comment not in leaving
    }
    unused = sorted(c for c in chains if c.startswith("net_") and c not in wanted)
    return [{"delete": {"chain": {"family": fam, "table": TABLE, "name": c}}} for c in unused]


def delete(tags: set[str]) -> int:
    """Remove every element labelled with one of `tags`, in both families, in one transaction,
    and the chains of networks left without a container."""
    cmds: list[dict[str, Any]] = []
    count = 0
    for family in FAMILIES:
        elements, chains = list_elements(family)
        mine = [el for el in elements if el.comment in tags]
        count += len(mine)
        cmds += delete_commands(mine)
        cmds += _unused_network_chains(family, elements, chains, tags)
    nft.run(cmds, "portmap DEL")
    return count


def check(conf: PortMapConf, network: str, tag: str, addresses: dict[int, IPInterface]) -> None:
    """Every mapping of every family the container has is in place, pointing at it."""
    for family, address in sorted(addresses.items()):
        mappings = conf.mappings_for(family)
        if not mappings:
            continue
        fam, _ = FAMILIES[family]
        elements, chains = list_elements(family)
        missing_chains = {"prerouting", "output", "masquerading", "hostports", "hostip_hostports"} - chains
        if missing_chains:
            raise CNIError(Code.KERNEL, f"table {fam} {TABLE} lacks chains {', '.join(sorted(missing_chains))}")
        for mapping in mappings:
            kind = kind_of(mapping)
            mine = [el for el in elements if el.comment == tag and _same_key(el, family, mapping)]
            claim = [el for el in mine if el.obj == CLAIMS[kind]]
            want_chain = network_chain(network, kind)
            if not claim or (claim[0].data or {}).get("goto", {}).get("target") != want_chain:
                raise CNIError(
                    Code.KERNEL, f"port mapping {mapping.describe()} (IPv{family}) of {tag} is missing from {fam} {TABLE}"
                )
            if want_chain not in chains:
                raise CNIError(Code.KERNEL, f"chain {want_chain} of network {network} is missing from {fam} {TABLE}")
            target = [el for el in mine if el.obj == TARGETS[kind]]
            expected = [str(address.ip), mapping.container_port]
            got = (target[0].data or {}).get("concat") if target else None
            if not got or ipaddress.ip_address(str(got[0])) != address.ip or int(got[1]) != mapping.container_port:
                raise CNIError(
                    Code.KERNEL,
                    f"port mapping {mapping.describe()} (IPv{family}) of {tag} does not lead to {expected[0]}:{expected[1]}",
                    f"found {got}",
                )


def stale_tags(network: str, valid: set[str]) -> set[str]:
    """Owner tags of this network's attachments that are not in `valid`."""
    ours = {network_chain(network, kind) for kind in ("hostip", "hostports")}
    stale: set[str] = set()
    for family in FAMILIES:
        elements, _ = list_elements(family)
        stale |= {
            el.comment
            for el in elements
            if el.obj in CLAIMS.values() and (el.data or {}).get("goto", {}).get("target") in ours and el.comment not in valid
        }
    return stale
