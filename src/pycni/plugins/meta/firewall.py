"""firewall (nftables): lets a container's traffic through the host's forward filtering,
and isolates bridges (`ingressPolicy`).

nftables has no cross-table verdicts: an accept in one table does not override a
drop in another, so the plugin marks instead. Its own table `inet cni_firewall`
holds the containers' addresses (one element each, commented with the attachment),
and a forward chain that runs before the host's filter chains:

    ip saddr @containers4 meta mark set mark | 0x1000                       (from the container)
    ip daddr @containers4 ct state established,related meta mark set ...    (replies to it)

and every host forward chain that drops by policy gets, once, at its top:
`meta mark & 0x1000 == 0x1000 accept` (through iptables for iptables-nft's FORWARD,
like the reference's CNI-FORWARD jump, so iptables keeps understanding its table).

`ingressPolicy` (the reference's values): `open` (default) does nothing more;
`same-bridge` drops traffic between the bridges of same-bridge/isolated networks
(the reference's CNI-ISOLATION-STAGE-1/2); `isolated` drops traffic between
containers of the same bridge as well (the reference's newest policy; done on the
containers' bridge ports in a `bridge` family table, so it works without br_netfilter). Unlike the reference, DEL
of the last container of a network removes its bridge's policy, and GC removes the
entries of attachments that are gone.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from pycni import faults, gcreport
from pycni.net import nft
from pycni.plugins.meta import _chained
from pycni.skel import CmdArgs
from pycni.spec import names
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result

ABOUT = "CNI firewall plugin (pycni)"
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
log = logging.getLogger("pycni.plugin.firewall")

TABLE = "cni_firewall"
DEFAULT_MARK_BIT = 12
POLICIES = ("open", "same-bridge", "isolated")
HOST_RULE_COMMENT = "CNI firewall plugin rules"
LOCK = "firewall"
SETS = {4: "containers4", 6: "containers6"}


def _conf(call: CmdArgs) -> tuple[str, int]:
    f = call.conf.fields
    backend = f.get_str("backend", "nftables") or "nftables"
    if backend != "nftables":
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f"firewall backend {backend!r} is not supported by pycni",
            'pycni\'s firewall works on nftables: use "backend": "nftables" or leave it out',
        )
    policy = f.get_str("ingressPolicy", "open") or "open"
    if policy not in POLICIES:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"unknown ingressPolicy {policy!r}: expected one of {', '.join(POLICIES)}")
    return policy, f.get_int("markBit", DEFAULT_MARK_BIT, minimum=0, maximum=31)


def _link_name(name: str) -> str:
    """An interface name from prevResult, which goes into the nftables script as a quoted
    string: it must be a Linux interface name and hold no quote or backslash."""
    problem = names.interface_name_problem(name)
    if problem is None and any(c in name for c in '"\\'):
        problem = f"interface name {name!r} contains a quote or a backslash"
    if problem is not None:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"prevResult: {problem}: it cannot be used in an nftables rule")
    return name


def _bridge(prev: Result, policy: str) -> str | None:
    """The bridge the container hangs off: the first host-side interface, as the reference takes it."""
    if policy == "open":
        return None
    host_side = [i.name for i in prev.interfaces if not i.sandbox]
    if not host_side:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f'ingressPolicy "{policy}" needs the bridge in prevResult: chain "firewall" after "bridge"',
        )
    return _link_name(host_side[0])


def _ports(prev: Result, bridge: str | None) -> list[str]:
    """The container's bridge ports: the host-side interfaces other than the bridge (its veth)."""
    ports = [_link_name(i.name) for i in prev.interfaces if not i.sandbox and i.name != bridge]
    if not ports:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            'ingressPolicy "isolated" needs the host side of the container\'s veth in prevResult',
        )
    return ports


def network_chain(network: str) -> str:
    return f"net_{hashlib.sha256(network.encode()).hexdigest()[:16]}"


def _skeleton(mark: int) -> list[str]:
    t = f"inet {TABLE}"
    set_mark = f"meta mark set meta mark | {mark:#x}"
    return [
        f"add table {t}",
        f"add set {t} containers4 {{ type ipv4_addr; }}",
        f"add set {t} containers6 {{ type ipv6_addr; }}",
        f"add set {t} policy_bridges {{ type ifname; }}",
        f"add map {t} from_bridge {{ type ifname : verdict; }}",
        f"add chain {t} forward {{ type filter hook forward priority -10; policy accept; }}",
        f"flush chain {t} forward",
        f"add rule {t} forward iifname vmap @from_bridge",
        f"add rule {t} forward ip saddr @containers4 {set_mark}",
        f"add rule {t} forward ip6 saddr @containers6 {set_mark}",
        f"add rule {t} forward ip daddr @containers4 ct state established,related {set_mark}",
        f"add rule {t} forward ip6 daddr @containers6 ct state established,related {set_mark}",
        f"add table bridge {TABLE}",
        f"add set bridge {TABLE} isolated_ports {{ type ifname; }}",
        f"add chain bridge {TABLE} forward {{ type filter hook forward priority -10; policy accept; }}",
        f"flush chain bridge {TABLE} forward",
        # Between two ports of one bridge: never seen by the inet hooks without br_netfilter.
        f"add rule bridge {TABLE} forward iifname @isolated_ports oifname @isolated_ports drop",
    ]


def _policy_commands(network: str, bridge: str, policy: str) -> list[str]:
    t = f"inet {TABLE}"
    chain = network_chain(network)
    comment = f'comment "network {network[:100]}"'
    cmds = [
        f'add chain {t} {chain} {{ comment "network {network[:100]}"; }}',
        f"flush chain {t} {chain}",
        # Same bridge: not this chain's business (isolated is handled per port, in the bridge table).
        f'add rule {t} {chain} oifname "{bridge}" return',
        f"add rule {t} {chain} oifname @policy_bridges drop",
        f'add element {t} policy_bridges {{ "{bridge}" {comment} }}',
        f'add element {t} from_bridge {{ "{bridge}" {comment} : jump {chain} }}',
    ]
    return cmds


# -- host forward chains --------------------------------------------------------------------


def _host_forward_chains() -> list[dict[str, Any]]:
    """Forward filter base chains of the host's own tables that drop by policy."""
    chains = []
    for item in nft.list_objects("chains"):
        chain = item.get("chain")
        if not chain or chain.get("hook") != "forward" or chain.get("type") != "filter":
            continue
        if chain.get("table") == TABLE or chain.get("family") not in ("ip", "ip6", "inet"):
            continue
        if chain.get("policy") == "drop":
            chains.append(chain)
    return chains


def _is_iptables_table(family: str, table: str) -> bool:
    return family in ("ip", "ip6") and table in ("filter",)


def _ensure_host_accept(mark: int) -> None:
    for chain in _host_forward_chains():
        family, table, name = chain["family"], chain["table"], chain["name"]
        if _is_iptables_table(family, table):
            import subprocess  # here: only a host with iptables-nft's FORWARD chain needs it

            tool = "iptables" if family == "ip" else "ip6tables"
            rule = [
                "-m",
                "mark",
                "--mark",
                f"{mark:#x}/{mark:#x}",
                "-m",
                "comment",
                "--comment",
                HOST_RULE_COMMENT,
                "-j",
                "ACCEPT",
            ]
            base = [tool, "-w", "5", "-t", "filter"]
            if subprocess.run([*base, "-C", name, *rule], capture_output=True, check=False).returncode != 0:
                proc = subprocess.run([*base, "-I", name, "1", *rule], capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise CNIError(Code.KERNEL, f"cannot add the accept rule to {family} {table} {name}", proc.stderr.strip())
            continue
        rules = nft.list_objects(f"chain {family} {table} {name}")
        if any(r.get("rule", {}).get("comment") == HOST_RULE_COMMENT for r in rules):
            continue
        nft.run_text(
            f'insert rule {family} {table} {name} meta mark & {mark:#x} == {mark:#x} accept comment "{HOST_RULE_COMMENT}"',
            "firewall: host forward chain",
        )


# -- listing our entries ---------------------------------------------------------------------


def _elements(family: str, obj: str) -> list[tuple[Any, str]]:
    """(value, comment) of every element of one of our sets or maps."""
    out = []
    for item in nft.list_objects(f"table {family} {TABLE}"):
        for kind in ("set", "map"):
            body = item.get(kind)
            if not body or body.get("name") != obj:
                continue
            for el in body.get("elem", []) or []:
                if isinstance(el, list):
                    el = el[0]
                if isinstance(el, dict) and "elem" in el:
                    out.append((el["elem"].get("val"), el["elem"].get("comment", "")))
                else:
                    out.append((el, ""))
    return out


def _delete(family: str, obj: str, values: list[Any]) -> list[dict[str, Any]]:
    return [{"delete": {"element": {"family": family, "table": TABLE, "name": obj, "elem": [v]}}} for v in values]


def _remove(tags: set[str], network: str) -> None:
    """Delete the containers labelled `tags`; the network's bridge policy goes with its last one."""
    if not nft.table_exists("inet", TABLE):
        return
    cmds: list[dict[str, Any]] = []
    remaining = 0
    prefix = network if len(network) <= 60 else network[:60]
    for obj in SETS.values():
        for value, comment in _elements("inet", obj):
            if comment in tags:
                cmds += _delete("inet", obj, [value])
            elif comment.split(" ", 1)[0] in (network, prefix):
                remaining += 1
    if nft.table_exists("bridge", TABLE):
        cmds += _delete("bridge", "isolated_ports", [v for v, c in _elements("bridge", "isolated_ports") if c in tags])
    if not remaining:
        label = f"network {network[:100]}"
        for obj in ("policy_bridges", "from_bridge"):
            cmds += _delete("inet", obj, [v for v, c in _elements("inet", obj) if c == label])
    nft.run(cmds, "firewall DEL")
    if not remaining:
        try:
            nft.run_text(f"delete chain inet {TABLE} {network_chain(network)}", "firewall DEL (network chain)")
        except nft.NftError:
            pass  # never created (open policy), or another network's ADD just pointed at it


# -- the operations ----------------------------------------------------------------------------


def add(call: CmdArgs) -> Result:
    prev = _chained.require_prev_result(call, "firewall")
    policy, bit = _conf(call)
    mark = 1 << bit
    if not prev.ips:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "the prevResult given to firewall has no IP addresses")
    bridge = _bridge(prev, policy)
    tag = _chained.call_tag(call)
    cmds = _skeleton(mark)
    for ip in prev.ips:
        cmds.append(f'add element inet {TABLE} {SETS[ip.family]} {{ {ip.address.ip} comment "{tag}" }}')
    if bridge is not None:
        cmds += _policy_commands(call.conf.name, bridge, policy)
    if policy == "isolated":
        for port in _ports(prev, bridge):
            cmds.append(f'add element bridge {TABLE} isolated_ports {{ "{port}" comment "{tag}" }}')
    with _chained.host_lock(LOCK):
        nft.run_text("\n".join(cmds), "firewall ADD")
        faults.checkpoint("firewall-rules-added")
        try:
            _ensure_host_accept(mark)
        except BaseException:
            _remove({tag}, call.conf.name)
            raise
    return prev


def check(call: CmdArgs) -> None:
    prev = _chained.require_prev_result(call, "firewall")
    policy, _ = _conf(call)
    tag = _chained.call_tag(call)
    for ip in prev.ips:
        present = {(str(v), c) for v, c in _elements("inet", SETS[ip.family])}
        if (str(ip.address.ip), tag) not in present:
            raise CNIError(Code.KERNEL, f"address {ip.address.ip} of {tag} is missing from inet {TABLE} {SETS[ip.family]}")
    bridge = _bridge(prev, policy)
    if bridge is not None and bridge not in {str(v) for v, _ in _elements("inet", "policy_bridges")}:
        raise CNIError(Code.KERNEL, f'bridge {bridge} is missing from the ingress policy "{policy}"')


def delete(call: CmdArgs) -> None:
    try:
        _conf(call)
    except CNIError as err:
        # DEL must not be blocked by a configuration that cannot be read: removal needs none of it.
        log.warning("firewall DEL with an invalid configuration (%s): removing this attachment's entries", err)
    with _chained.host_lock(LOCK):
        _remove({_chained.call_tag(call)}, call.conf.name)


def gc(call: CmdArgs) -> None:
    valid = _chained.valid_tags(call)
    network = call.conf.name
    prefix = network if len(network) <= 60 else network[:60]
    with _chained.host_lock(LOCK):
        if not nft.table_exists("inet", TABLE):
            return
        stale = {
            c
            for obj in SETS.values()
            for _, c in _elements("inet", obj)
            if c and c.split(" ", 1)[0] in (network, prefix) and c not in valid
        }
        if stale:
            _remove(stale, network)
        for tag in sorted(stale):
            gcreport.released("firewalled attachment", _chained.attachment_of(tag))
