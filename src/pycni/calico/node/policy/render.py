"""calico-node's policy objects in `table inet calico` (shared with natOutgoing: each component
owns only its own chains and sets), their names, and the rule compiler.

    raw-cali-rpf             prerouting: a workload's packet whose source is not routed back
                             through its interface is dropped (felix's strict RPF check)
    filter-cali-from-wl      forward: packets from workloads   iifname vmap @cali-from-wl-dispatch
    filter-cali-to-wl        forward: packets to workloads     oifname vmap @cali-to-wl-dispatch
    filter-cali-wl-to-host   input: workload to host: the workload's egress policy, then (in its
                             own base chain, filter-cali-wl-to-host-action) FELIX_DEFAULTENDPOINTTOHOSTACTION
        each: established and related accepted, invalid dropped, an unknown cali* interface
        dropped ("drop until programmed": an endpoint calico-node has not programmed yet is closed)
    map cali-from-wl-dispatch / cali-to-wl-dispatch     ifname -> goto the endpoint's chain
    chain filter-cali-fw-<iface> / filter-cali-tw-<iface>    one per local endpoint and direction:
        if policies apply: clear the pass mark; jump filter-cali-{from,to}-wl-policy; drop unless
        a policy passed ("end of tier"); then each profile's chain; drop if no profile accepted
    chain filter-cali-from-wl-policy / filter-cali-to-wl-policy   every active policy in order:
        iifname @cali-po-<policy> (oifname @cali-pi-<policy>) and no pass mark: jump its chain
    set cali-pi-<policy> / cali-po-<policy>    (ifname) the local endpoints it selects
    chain filter-cali-pi-<policy> / -po-, filter-cali-pri-<profile> / -pro-   the rules
    set cali40s-<hash> / cali60s-<hash>   the addresses of every endpoint a selector matches
    set cali40n-<net set> / cali60n-...   (interval) a network set's nets
    set cali40p-<hash> / cali60p-<hash>   (address . port) for a named port

Verdicts are real verdicts: Allow accepts, Deny drops, an endpoint chain ends in drop. Each
direction has its own base chain, so a packet between two local workloads must be accepted by
the sender's egress and by the receiver's ingress. Only Pass needs a mark bit (felix's, 0x20000
of FELIX_IPTABLESMARKMASK). Rules grow with endpoints plus policies: an endpoint chain has a
few rules whatever the number of policies, the policy dispatch one per policy; which endpoints
a policy selects, and which addresses a selector matches, are set elements.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pycni.calico.policy.calc import EGRESS, INGRESS, NamedPortKey, NSKey
from pycni.calico.policy.model import ICMP, Entity, PolicyKey, Rule
from pycni.calico.selector import ALL, Selector

TABLE, FAMILY = "calico", "inet"
WORKLOAD_PREFIX = "cali"
Expr = dict[str, Any]

BASE_FROM_WL, BASE_TO_WL = "filter-cali-from-wl", "filter-cali-to-wl"
BASE_WL_TO_HOST, BASE_WL_TO_HOST_ACTION = "filter-cali-wl-to-host", "filter-cali-wl-to-host-action"
BASE_RPF = "raw-cali-rpf"
DISPATCH_MAP = {INGRESS: "cali-to-wl-dispatch", EGRESS: "cali-from-wl-dispatch"}
POLICY_DISPATCH = {INGRESS: "filter-cali-to-wl-policy", EGRESS: "filter-cali-from-wl-policy"}
#: felix's ICMPv6 types a workload may always send to its host (MLD, router and neighbour discovery)
ICMPV6_ALLOWED = (130, 131, 132, 133, 135, 136)
_SAFE = re.compile(r"^[A-Za-z0-9_./\-]{1,200}\Z")


@dataclass(frozen=True)
class Options:
    log_prefix: str = "calico-packet"
    #: NFLOG group for the Log action (None: the kernel log, as felix's LOG target)
    log_group: int | None = None
    pass_mark: int = 0x20000
    ipv6: bool = True
    #: FELIX_DEFAULTENDPOINTTOHOSTACTION: DROP, RETURN or ACCEPT
    endpoint_to_host: str = "DROP"
    #: felix drops VXLAN (to FELIX_VXLANPORT) and IPIP packets a workload sends, which could
    #: carry traffic past egress policy, unless FELIX_ALLOW{VXLAN,IPIP}PACKETSFROMWORKLOADS
    vxlan_port: int = 4789
    allow_vxlan: bool = False
    allow_ipip: bool = False


def options_from_env(env: dict[str, str]) -> Options:
    """felix's variables for what policy renders (ValueError naming the variable):
    FELIX_LOGPREFIX, FELIX_DEFAULTENDPOINTTOHOSTACTION, FELIX_IPV6SUPPORT, FELIX_IPTABLESMARKMASK
    (FELIX_NFTABLESMARKMASK first), and pycni's PYCNI_POLICY_LOG_GROUP (the Log action to an NFLOG
    group, for nodes in a network namespace, whose kernel log the kernel drops)."""
    action = (env.get("FELIX_DEFAULTENDPOINTTOHOSTACTION", "") or "DROP").strip().upper()
    if action not in ("DROP", "RETURN", "ACCEPT"):
        raise ValueError(f"FELIX_DEFAULTENDPOINTTOHOSTACTION={action!r} is not one of DROP, RETURN, ACCEPT")
    key = "FELIX_NFTABLESMARKMASK" if env.get("FELIX_NFTABLESMARKMASK", "").strip() else "FELIX_IPTABLESMARKMASK"
    text = env.get(key, "").strip() or "0xffff0000"
    try:
        mask = int(text, 0)
    except ValueError:
        raise ValueError(f"{key}={text!r} is not a number") from None
    bits = [1 << i for i in range(32) if mask & (1 << i)]
    if not 0 < mask <= 0xFFFFFFFF or len(bits) < 2:
        raise ValueError(f"{key}={text!r} must have at least two bits set (felix's accept and pass bits)")
    group_text = env.get("PYCNI_POLICY_LOG_GROUP", "").strip()
    if group_text and not (group_text.isdigit() and int(group_text) < 65536):
        raise ValueError(f"PYCNI_POLICY_LOG_GROUP={group_text!r} is not an NFLOG group (0-65535)")

    def flag(key: str, default: bool) -> bool:
        return env.get(key, str(default)).strip().lower() not in ("false", "0", "no", "n", "f")

    port = env.get("FELIX_VXLANPORT", "").strip() or "4789"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"FELIX_VXLANPORT={port!r} is not a UDP port (1-65535)")
    return Options(
        log_prefix=env.get("FELIX_LOGPREFIX", "").strip() or "calico-packet",
        log_group=int(group_text) if group_text else None,
        pass_mark=bits[1],
        ipv6=flag("FELIX_IPV6SUPPORT", True),
        endpoint_to_host=action,
        vxlan_port=int(port),
        allow_vxlan=flag("FELIX_ALLOWVXLANPACKETSFROMWORKLOADS", False),
        allow_ipip=flag("FELIX_ALLOWIPIPPACKETSFROMWORKLOADS", False),
    )


# -- names ------------------------------------------------------------------------------------


def _digest(text: str, length: int = 20) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def ident(text: str) -> str:
    """A name part as it is when short and plain, else a digest of it."""
    return text if _SAFE.match(text) else "h" + _digest(text)


def policy_chain(key: PolicyKey, direction: str) -> str:
    return ("filter-cali-pi-" if direction == INGRESS else "filter-cali-po-") + ident(str(key))


def policy_members(key: PolicyKey, direction: str) -> str:
    return ("cali-pi-" if direction == INGRESS else "cali-po-") + ident(str(key))


def profile_chain(name: str, direction: str) -> str:
    return ("filter-cali-pri-" if direction == INGRESS else "filter-cali-pro-") + ident(name)


def endpoint_chain(iface: str, direction: str) -> str:
    return ("filter-cali-tw-" if direction == INGRESS else "filter-cali-fw-") + ident(iface)


def selector_set(selector: Selector, version: int) -> str:
    return f"cali{version}0s-{_digest(str(selector))}"


def netset_set(key: NSKey, version: int) -> str:
    return f"cali{version}0n-{ident('/'.join(p for p in key if p))}"


def named_port_set(npk: NamedPortKey, version: int) -> str:
    return f"cali{version}0p-{_digest(f'{npk.selector}|{npk.protocol}|{npk.name}')}"


# -- expressions ------------------------------------------------------------------------------


def match(left: Any, right: Any, op: str = "==") -> Expr:
    return {"match": {"op": op, "left": left, "right": right}}


def meta(key: str) -> Expr:
    return {"meta": {"key": key}}


def payload(protocol: str, name: str) -> Expr:
    return {"payload": {"protocol": protocol, "field": name}}


def jump(chain: str) -> Expr:
    return {"jump": {"target": chain}}


def goto(chain: str) -> Expr:
    return {"goto": {"target": chain}}


ACCEPT: Expr = {"accept": None}
DROP: Expr = {"drop": None}
RETURN: Expr = {"return": None}
COUNTER: Expr = {"counter": {"packets": 0, "bytes": 0}}


def workload_iface(direction: str) -> Expr:
    """The workload's interface: the packet's output (to the workload) or input (from it)."""
    return match(meta("oifname" if direction == INGRESS else "iifname"), WORKLOAD_PREFIX + "*")


def ct_state(*states: str) -> Expr:
    return match({"ct": {"key": "state"}}, list(states) if len(states) > 1 else states[0], "in")


def mark_clear(bit: int) -> Expr:
    return match({"&": [meta("mark"), bit]}, 0)


def mark_set(bit: int) -> Expr:
    return {"mangle": {"key": meta("mark"), "value": {"|": [meta("mark"), bit]}}}


def mark_unset(bit: int) -> Expr:
    return {"mangle": {"key": meta("mark"), "value": {"&": [meta("mark"), 0xFFFFFFFF & ~bit]}}}


def _net(net: Any) -> Any:
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _nets(nets: Sequence[Any]) -> Any:
    return _net(nets[0]) if len(nets) == 1 else {"set": [_net(n) for n in nets]}


def _ports(ports: Sequence[Any]) -> Any:
    items = [p.first if p.first == p.last else {"range": [p.first, p.last]} for p in ports]
    return items[0] if len(items) == 1 and not isinstance(items[0], dict) else {"set": items}


def _ip(version: int) -> str:
    return "ip" if version == 4 else "ip6"


# -- the rule compiler ------------------------------------------------------------------------

NetsetsOf = Callable[[Selector], Sequence[NSKey]]


def _needs_address(rule: Rule) -> bool:
    for e in (rule.src, rule.dst):
        if e.nets or e.not_nets or e.selector or e.not_selector or any(p.name for p in (*e.ports, *e.not_ports)):
            return True
    return False


def families(rule: Rule, opts: Options) -> Sequence[int | None]:
    """The IP versions a rule is rendered for; [None] when it needs no address match."""
    versions = {4, 6} if opts.ipv6 else {4}
    if rule.ip_version is not None:
        versions &= {rule.ip_version}
    for version, number in ICMP.items():
        if rule.protocol == number:
            versions &= {version}
    for nets in (rule.src.nets, rule.dst.nets):
        if nets:
            versions &= {n.version for n in nets}
    if not _needs_address(rule) and rule.ip_version is None and len(versions) == len({4, 6} if opts.ipv6 else {4}):
        return [None]
    return sorted(versions)


def _side(
    entity: Entity, src: bool, version: int | None, netsets_of: NetsetsOf, protocol: int | None
) -> tuple[list[Expr], list[list[Expr]]]:
    """One side's fixed matches (all must hold) and its alternatives (one must)."""
    addr_field, port_field = ("saddr", "sport") if src else ("daddr", "dport")
    fixed: list[Expr] = []
    port = payload("th", port_field)
    if version is not None:
        addr = payload(_ip(version), addr_field)
        nets = [n for n in entity.nets if n.version == version]
        if nets:
            fixed.append(match(addr, _nets(nets)))
        not_nets = [n for n in entity.not_nets if n.version == version]
        if not_nets:
            fixed.append(match(addr, _nets(not_nets), "!="))
        if entity.not_selector is not None:
            fixed.append(match(addr, "@" + selector_set(entity.not_selector, version), "!="))
            fixed += [match(addr, "@" + netset_set(k, version), "!=") for k in netsets_of(entity.not_selector)]
    numeric_not = [p for p in entity.not_ports if not p.name]
    if numeric_not:
        fixed.append(match(port, _ports(numeric_not), "!="))
    if version is not None and protocol is not None:
        base = entity.selector
        for p in entity.not_ports:
            if p.name:
                npk = NamedPortKey(base or ALL, protocol, p.name)
                fixed.append(
                    match({"concat": [payload(_ip(version), addr_field), port]}, "@" + named_port_set(npk, version), "!=")
                )
    addr_alts: list[list[Expr]] = [[]]
    if version is not None and entity.selector is not None:
        addr = payload(_ip(version), addr_field)
        addr_alts = [[match(addr, "@" + selector_set(entity.selector, version))]]
        addr_alts += [[match(addr, "@" + netset_set(k, version))] for k in netsets_of(entity.selector)]
    if not entity.ports:
        return fixed, addr_alts
    alts: list[list[Expr]] = []
    numeric = [p for p in entity.ports if not p.name]
    if numeric:
        alts += [[*a, match(port, _ports(numeric))] for a in addr_alts]
    if version is not None and protocol is not None:
        for p in entity.ports:
            if p.name:
                npk = NamedPortKey(entity.selector or ALL, protocol, p.name)
                alts.append([match({"concat": [payload(_ip(version), addr_field), port]}, "@" + named_port_set(npk, version))])
    return fixed, alts


def _icmp(rule: Rule, version: int | None) -> list[Expr]:
    proto = "icmpv6" if rule.protocol == ICMP[6] else "icmp"
    out: list[Expr] = []
    if rule.icmp_type is not None:
        out.append(match(payload(proto, "type"), rule.icmp_type))
        if rule.icmp_code is not None:
            out.append(match(payload(proto, "code"), rule.icmp_code))
    if rule.not_icmp_type is not None:
        if rule.not_icmp_code is None:
            out.append(match(payload(proto, "type"), rule.not_icmp_type, "!="))
        else:
            pair = {"concat": [rule.not_icmp_type, rule.not_icmp_code]}
            out.append(match({"concat": [payload(proto, "type"), payload(proto, "code")]}, {"set": [pair]}, "!="))
    return out


def verdict(action: str, opts: Options, in_profile: bool = False) -> list[Expr]:
    if action == "Allow":
        return [COUNTER, ACCEPT]
    if action == "Deny":
        return [COUNTER, DROP]
    if action == "Log":
        log: dict[str, Any] = {"prefix": f"{opts.log_prefix}: "}
        if opts.log_group is not None:
            log["group"] = opts.log_group
        else:
            log["level"] = "info"
        return [COUNTER, {"log": log}]
    # Pass: skip the policies left in the tier, on to the profiles (in a profile: the next one)
    return [COUNTER, RETURN] if in_profile else [COUNTER, mark_set(opts.pass_mark), RETURN]


def compile_rule(rule: Rule, opts: Options, netsets_of: NetsetsOf, in_profile: bool = False) -> list[list[Expr]]:
    """One Calico rule as nftables rules (several when a selector also matches network sets, or
    ports mix numbers and names: felix's IP sets hold both, nftables sets one type each)."""
    out: list[list[Expr]] = []
    for version in families(rule, opts):
        head: list[Expr] = []
        if version is not None:
            head.append(match(meta("nfproto"), "ipv4" if version == 4 else "ipv6"))
        if rule.protocol is not None:
            head.append(match(meta("l4proto"), rule.protocol))
        if rule.not_protocol is not None:
            head.append(match(meta("l4proto"), rule.not_protocol, "!="))
        src_fixed, src_alts = _side(rule.src, True, version, netsets_of, rule.protocol)
        dst_fixed, dst_alts = _side(rule.dst, False, version, netsets_of, rule.protocol)
        tail = _icmp(rule, version) + verdict(rule.action, opts, in_profile)
        for s in src_alts:
            for d in dst_alts:
                out.append([*head, *src_fixed, *dst_fixed, *s, *d, *tail])
    return out


def compile_rules(rules: Sequence[Rule], opts: Options, netsets_of: NetsetsOf, in_profile: bool = False) -> list[list[Expr]]:
    return [r for rule in rules for r in compile_rule(rule, opts, netsets_of, in_profile)]


# -- endpoint chains --------------------------------------------------------------------------


def endpoint_rules(
    direction: str, has_policies: bool, profiles: Sequence[str], closed_by: Sequence[str], opts: Options
) -> list[tuple[list[Expr], str]]:
    """An endpoint's chain for one direction: (expressions, comment) per rule."""
    if closed_by:
        return [([COUNTER, DROP], f"Closed: policy {', '.join(closed_by)} could not be programmed")]
    rules: list[tuple[list[Expr], str]] = []
    if has_policies:
        rules.append(([mark_unset(opts.pass_mark)], "Start of tier default"))
        rules.append(([jump(POLICY_DISPATCH[direction])], ""))
        rules.append(([mark_clear(opts.pass_mark), COUNTER, DROP], "End of tier default. Drop if no policies passed packet"))
    rules += [([jump(profile_chain(name, direction))], "") for name in profiles]
    rules.append(([COUNTER, DROP], "Drop if no profiles matched"))
    return rules


def policy_dispatch_rules(keys: Sequence[PolicyKey], direction: str, opts: Options) -> list[tuple[list[Expr], str]]:
    iface = meta("oifname" if direction == INGRESS else "iifname")
    return [
        ([match(iface, "@" + policy_members(k, direction)), mark_clear(opts.pass_mark), jump(policy_chain(k, direction))], "")
        for k in keys
    ]


def base_chains(opts: Options) -> dict[str, tuple[dict[str, Any], list[tuple[list[Expr], str]]]]:
    """The hooked chains: name -> (chain attributes, rules)."""

    def dispatch(direction: str, hooked_on: str) -> list[tuple[list[Expr], str]]:
        iface = workload_iface(direction)
        key = "oifname" if direction == INGRESS else "iifname"
        rules: list[tuple[list[Expr], str]] = [
            ([iface, ct_state("established", "related"), ACCEPT], ""),
            ([iface, ct_state("invalid"), DROP], ""),
        ]
        if direction == EGRESS and not opts.allow_vxlan:
            rules.append(([iface, match(meta("l4proto"), 17), match(payload("th", "dport"), opts.vxlan_port), COUNTER, DROP],
                          "Drop VXLAN encapped packets originating in workloads"))  # fmt: skip
        if direction == EGRESS and not opts.allow_ipip:
            rules.append(
                ([iface, match(meta("l4proto"), 4), COUNTER, DROP], "Drop IPinIP encapped packets originating in workloads")
            )
        if hooked_on == "input":
            rules.append(
                (
                    [iface, match(payload("icmpv6", "type"), {"set": list(ICMPV6_ALLOWED)}), ACCEPT],
                    "Allow ICMPv6 neighbour and router discovery",
                )
            )
        rules.append(([iface, {"vmap": {"key": meta(key), "data": "@" + DISPATCH_MAP[direction]}}], ""))
        rules.append(([iface, COUNTER, DROP], "Unknown interface"))
        return rules

    def hooked(hook: str, prio: int) -> dict[str, Any]:
        return {"type": "filter", "hook": hook, "prio": prio, "policy": "accept"}

    fib_missing = match({"fib": {"result": "oif", "flags": ["saddr", "iif"]}}, False)
    rpf = [
        ([workload_iface(EGRESS), match(payload(ip, "saddr"), unspecified, "!="), fib_missing, COUNTER, DROP],
         "Drop workload packets with a spoofed source")
        for ip, unspecified in (("ip", "0.0.0.0"), ("ip6", "::"))
    ]  # fmt: skip

    out = {
        BASE_RPF: (hooked("prerouting", -300), rpf),
        BASE_FROM_WL: (hooked("forward", 0), dispatch(EGRESS, "forward")),
        BASE_TO_WL: (hooked("forward", 0), dispatch(INGRESS, "forward")),
        BASE_WL_TO_HOST: (hooked("input", 0), dispatch(EGRESS, "input")),
    }
    action = opts.endpoint_to_host.upper()
    if action == "DROP":
        iface = workload_iface(EGRESS)
        out[BASE_WL_TO_HOST_ACTION] = (
            hooked("input", 1),
            [([iface, ct_state("established", "related"), ACCEPT], ""),
             ([iface, match(payload("icmpv6", "type"), {"set": list(ICMPV6_ALLOWED)}), ACCEPT], ""),
             ([iface, COUNTER, DROP], "Configured DefaultEndpointToHostAction")],
        )  # fmt: skip
    return out
