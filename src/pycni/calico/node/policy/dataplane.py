"""The policy objects of `table inet calico`: what they should be, what is programmed, and the
one nftables transaction that turns one into the other.

`wanted(dirty)` renders only the objects a change touched (from the calculation's `Dirty`);
`apply` compares each with what was last programmed and writes the difference as one
libnftables JSON transaction: set and map elements added and deleted one by one, a chain
rewritten (flush and add, atomically) only when its rules changed. `rebuild` programs
everything from the calculation, replacing whatever the table holds under our names (at
start, after drift, after a failed transaction): flush and refill in one transaction, so
traffic never sees a half-programmed table.

A chain the kernel refuses (a policy or profile using a match this kernel lacks) is found by
checking each one on its own in a transaction that adds and removes a scratch chain; it is
then programmed as a drop, the endpoints it selects are closed, and `failed` says why.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pycni.calico.node.policy import render
from pycni.calico.node.policy.render import FAMILY, TABLE, Expr, Options
from pycni.calico.policy.calc import DIRECTIONS, INGRESS, Calc, Dirty, EPKey, NamedPortKey, NSKey
from pycni.calico.policy.model import PolicyKey
from pycni.net import nft

log = logging.getLogger("calico-node")

ObjKey = tuple[str, str]  # ("chain" | "set" | "map", name)
CHAIN_PREFIXES = ("filter-cali-", "raw-cali-")
SET_PREFIXES = ("cali-pi-", "cali-po-", "cali40s-", "cali60s-", "cali40n-", "cali60n-", "cali40p-", "cali60p-")
MAPS = tuple(render.DISPATCH_MAP.values())
SCRATCH = "filter-cali-check"
VERSIONS = (4, 6)


@dataclass(frozen=True)
class Chain:
    attrs: str  # JSON of the hook attributes ("" for a regular chain)
    rules: tuple[str, ...]  # JSON of each rule: [expressions, comment]


@dataclass(frozen=True)
class Set:
    type: tuple[str, ...]
    interval: bool
    elements: frozenset[Any]


@dataclass(frozen=True)
class Map:
    elements: tuple[tuple[str, str], ...]  # (ifname, chain) sorted


Content = Chain | Set | Map


def ours(kind: str, name: str) -> bool:
    if kind == "chain":
        return name.startswith(CHAIN_PREFIXES)
    if kind == "map":
        return name in MAPS
    return name.startswith(SET_PREFIXES)


def _chain(rules: Sequence[tuple[list[Expr], str]], attrs: dict[str, Any] | None = None) -> Chain:
    return Chain(json.dumps(attrs, sort_keys=True) if attrs else "", tuple(json.dumps([e, c]) for e, c in rules))


def _plain(rules: Iterable[list[Expr]]) -> list[tuple[list[Expr], str]]:
    return [(r, "") for r in rules]


def _addr_type(version: int) -> str:
    return "ipv4_addr" if version == 4 else "ipv6_addr"


class PolicyDataplane:
    def __init__(self, calc: Calc, opts: Options, runner: Callable[[list[dict[str, Any]], str], None] = nft.run) -> None:
        self.calc = calc
        self.opts = opts
        self.run = runner
        self.programmed: dict[ObjKey, Content] = {}
        #: chains of a local endpoint, to delete when it goes or changes interface
        self.ep_objects: dict[EPKey, set[ObjKey]] = {}
        #: policies and profiles the kernel refused: ("policy", key) or ("profile", name) -> why
        self.failed: dict[tuple[str, Any], str] = {}
        self.versions = VERSIONS if opts.ipv6 else (4,)

    # -- what should be there -------------------------------------------------------------

    def _closed_by(self, key: EPKey) -> list[str]:
        calc = self.calc
        names = [str(k) for k in calc.closed(key)]
        names += [str(k) for k in calc.ep_policies.get(key, ()) if ("policy", k) in self.failed]
        ep = calc.endpoints[key]
        names += [f"profile {p}" for p in ep.profiles if ("profile", p) in self.failed]
        return names

    def _endpoint(self, key: EPKey, out: dict[ObjKey, Content | None]) -> None:
        calc = self.calc
        wanted: set[ObjKey] = set()
        if calc.is_local(key):
            ep = calc.endpoints[key]
            closed = self._closed_by(key)
            for direction in DIRECTIONS:
                name = render.endpoint_chain(ep.iface, direction)
                has = bool(calc.policies_for(key, direction))
                out[("chain", name)] = _chain(render.endpoint_rules(direction, has, ep.profiles, closed, self.opts))
                wanted.add(("chain", name))
        for obj in self.ep_objects.get(key, set()) - wanted:
            out.setdefault(obj, None)
        if wanted:
            self.ep_objects[key] = wanted
        else:
            self.ep_objects.pop(key, None)

    def _dispatch_maps(self, out: dict[ObjKey, Content | None]) -> None:
        local = self.calc.local_endpoints()
        for direction in DIRECTIONS:
            elements = tuple(sorted((ep.iface, render.endpoint_chain(ep.iface, direction)) for ep in local.values() if ep.iface))
            out[("map", render.DISPATCH_MAP[direction])] = Map(elements)

    def _members(self, key: PolicyKey, out: dict[ObjKey, Content | None]) -> None:
        calc = self.calc
        members = calc.members.get(key, set())
        for direction in DIRECTIONS:
            name = render.policy_members(key, direction)
            if members and key in calc.policies and calc.applies(key, direction):
                ifaces = frozenset(calc.endpoints[k].iface for k in members if calc.endpoints[k].iface)
                out[("set", name)] = Set(("ifname",), False, ifaces)
            else:
                out[("set", name)] = None

    def _netsets_of(self, selector: Any) -> list[NSKey]:
        return self.calc.netsets_of(selector)

    def policy_chains(self, key: PolicyKey, out: dict[ObjKey, Content | None]) -> None:
        calc = self.calc
        policy = calc.policies.get(key)
        for direction in DIRECTIONS:
            name = render.policy_chain(key, direction)
            active = policy is not None and bool(calc.members.get(key)) and calc.applies(key, direction)
            if not active or policy is None:
                out[("chain", name)] = None
            elif ("policy", key) in self.failed:
                out[("chain", name)] = _chain(
                    [([render.COUNTER, render.DROP], "Not programmed: " + self.failed[("policy", key)][:200])]
                )
            else:
                rules = policy.inbound if direction == INGRESS else policy.outbound
                out[("chain", name)] = _chain(_plain(render.compile_rules(rules, self.opts, self._netsets_of)))

    def profile_chains(self, name: str, out: dict[ObjKey, Content | None]) -> None:
        calc = self.calc
        active = name in calc.active_profiles()
        profile = calc.profiles.get(name)
        for direction in DIRECTIONS:
            chain = render.profile_chain(name, direction)
            if not active:
                out[("chain", chain)] = None
            elif profile is None:
                out[("chain", chain)] = _chain([([render.COUNTER, render.DROP], f"Profile {name} does not exist")])
            elif ("profile", name) in self.failed:
                out[("chain", chain)] = _chain([([render.COUNTER, render.DROP], "Not programmed")])
            else:
                rules = profile.inbound if direction == INGRESS else profile.outbound
                out[("chain", chain)] = _chain(_plain(render.compile_rules(rules, self.opts, self._netsets_of, in_profile=True)))

    def _dispatch(self, out: dict[ObjKey, Content | None]) -> None:
        for direction in DIRECTIONS:
            keys = self.calc.active_policies(direction)
            out[("chain", render.POLICY_DISPATCH[direction])] = _chain(render.policy_dispatch_rules(keys, direction, self.opts))

    def _selector(self, selector: Any, out: dict[ObjKey, Content | None]) -> None:
        active = selector in self.calc.sel_owners
        for version in self.versions:
            name = render.selector_set(selector, version)
            if active:
                out[("set", name)] = Set(
                    (_addr_type(version),), False, frozenset(self.calc.selector_addresses(selector, version))
                )
            else:
                out[("set", name)] = None

    def _netset(self, key: NSKey, out: dict[ObjKey, Content | None]) -> None:
        netset = self.calc.netsets.get(key)
        active = netset is not None and key in self.calc.active_netsets()
        for version in self.versions:
            name = render.netset_set(key, version)
            if active and netset is not None:
                nets: list[Any] = [n for n in netset.nets if n.version == version]
                out[("set", name)] = Set(
                    (_addr_type(version),), True, frozenset(str(n) for n in ipaddress.collapse_addresses(nets))
                )
            else:
                out[("set", name)] = None

    def _named_port(self, npk: NamedPortKey, out: dict[ObjKey, Content | None]) -> None:
        active = npk in self.calc.port_owners
        for version in self.versions:
            name = render.named_port_set(npk, version)
            if active:
                elements = frozenset(self.calc.named_port_elements(npk, version))
                out[("set", name)] = Set((_addr_type(version), "inet_service"), False, elements)
            else:
                out[("set", name)] = None

    def base(self, out: dict[ObjKey, Content | None]) -> None:
        for name, (attrs, rules) in render.base_chains(self.opts).items():
            out[("chain", name)] = _chain(rules, attrs)

    def wanted(self, dirty: Dirty) -> dict[ObjKey, Content | None]:
        """The objects `dirty` may have changed: their content now (None: not wanted)."""
        out: dict[ObjKey, Content | None] = {}
        for selector in dirty.selectors:
            self._selector(selector, out)
        for key in dirty.netsets:
            self._netset(key, out)
        for npk in dirty.ports:
            self._named_port(npk, out)
        for pkey in dirty.members | dirty.policies:
            self._members(pkey, out)
        for pkey in dirty.policies:
            self.policy_chains(pkey, out)
        for name in dirty.profiles:
            self.profile_chains(name, out)
        if dirty.dispatch:
            self._dispatch(out)
        if dirty.endpoints:
            for key in dirty.endpoints:
                self._endpoint(key, out)
            self._dispatch_maps(out)
        return out

    def everything(self, stubs: bool = False) -> dict[ObjKey, Content | None]:
        """Every object the calculation wants now; with `stubs`, every policy and profile chain
        a drop (what a table is programmed with while the kernel's refusals are looked for)."""
        calc = self.calc
        dirty = Dirty(
            endpoints=set(calc.local_endpoints()) | set(self.ep_objects),
            members=set(calc.members),
            policies=set(calc.policies) | set(calc.broken),
            profiles=calc.active_profiles(),
            selectors=set(calc.sel_owners),
            netsets=calc.active_netsets(),
            ports=set(calc.port_owners),
            dispatch=True,
        )
        out = self.wanted(dirty)
        self._dispatch_maps(out)
        self.base(out)
        if stubs:
            drop = _chain([([render.COUNTER, render.DROP], "Not programmed yet")])
            for key, content in out.items():
                if content is not None and key[1].startswith(
                    ("filter-cali-pi-", "filter-cali-po-", "filter-cali-pri-", "filter-cali-pro-")
                ):
                    out[key] = drop
        return {k: v for k, v in out.items() if v is not None}

    # -- programming ----------------------------------------------------------------------

    def apply(self, wanted: dict[ObjKey, Content | None]) -> int:
        """Program the difference between `wanted` and what is programmed; the number of
        objects changed. Raises NftError when the kernel refuses the transaction."""
        changes = {k: v for k, v in wanted.items() if self.programmed.get(k) != v}
        if not changes:
            return 0
        self.run(self._commands(changes, existing=set(self.programmed)), "policy")
        for key, content in changes.items():
            if content is None:
                self.programmed.pop(key, None)
            else:
                self.programmed[key] = content
        return len(changes)

    def rebuild(self, kernel: set[ObjKey], stubs: bool = False) -> None:
        """Program everything the calculation wants, over whatever `kernel` (our objects in the
        table now) holds: what exists is flushed and refilled, the rest deleted."""
        want: dict[ObjKey, Content | None] = dict(self.everything(stubs))
        for key in kernel:
            want.setdefault(key, None)
        self.run(self._commands(want, existing=kernel, full=True), "policy (full)")
        self.programmed = {k: v for k, v in want.items() if v is not None}

    def _commands(self, changes: dict[ObjKey, Content | None], existing: set[ObjKey], full: bool = False) -> list[dict[str, Any]]:
        where = {"family": FAMILY, "table": TABLE}
        create: list[dict[str, Any]] = [{"add": {"table": {"family": FAMILY, "name": TABLE}}}]
        elements: list[dict[str, Any]] = []
        rules: list[dict[str, Any]] = []
        remove: list[dict[str, Any]] = []
        drop_chains: list[dict[str, Any]] = []
        for (kind, name), content in sorted(changes.items(), key=lambda kv: kv[0]):
            old = None if full else self.programmed.get((kind, name))
            present = (kind, name) in existing
            if content is None:
                if not present:
                    continue
                if kind == "chain":
                    rules.append({"flush": {"chain": {**where, "name": name}}})
                    drop_chains.append({"delete": {"chain": {**where, "name": name}}})
                else:
                    if kind == "map":  # its elements refer to chains that may go too
                        rules.append({"flush": {"map": {**where, "name": name}}})
                    remove.append({"delete": {kind: {**where, "name": name}}})
                continue
            if isinstance(content, Chain):
                spec: dict[str, Any] = {**where, "name": name, **(json.loads(content.attrs) if content.attrs else {})}
                if not present:
                    create.append({"add": {"chain": spec}})
                else:
                    rules.append({"flush": {"chain": {**where, "name": name}}})
                for text in content.rules:
                    exprs, comment = json.loads(text)
                    rule: dict[str, Any] = {**where, "chain": name, "expr": exprs}
                    if comment:
                        rule["comment"] = comment
                    rules.append({"add": {"rule": rule}})
            elif isinstance(content, Set):
                if not present:
                    spec = {**where, "name": name, "type": content.type[0] if len(content.type) == 1 else list(content.type)}
                    if content.interval:
                        spec["flags"] = ["interval"]
                    create.append({"add": {"set": spec}})
                    added, deleted = content.elements, frozenset[Any]()
                elif isinstance(old, Set) and old.type == content.type:
                    added, deleted = content.elements - old.elements, old.elements - content.elements
                else:
                    elements.append({"flush": {"set": {**where, "name": name}}})
                    added, deleted = content.elements, frozenset[Any]()
                if deleted:
                    elements.append(
                        {"delete": {"element": {**where, "name": name, "elem": [_elem(e) for e in sorted(deleted, key=str)]}}}
                    )
                if added:
                    elements.append(
                        {"add": {"element": {**where, "name": name, "elem": [_elem(e) for e in sorted(added, key=str)]}}}
                    )
            else:
                if not present:
                    create.append({"add": {"map": {**where, "name": name, "type": "ifname", "map": "verdict"}}})
                old_elems = dict(old.elements) if isinstance(old, Map) else {}
                new_elems = dict(content.elements)
                if present and not isinstance(old, Map):
                    elements.append({"flush": {"map": {**where, "name": name}}})
                    old_elems = {}
                gone = [k for k, v in old_elems.items() if new_elems.get(k) != v]
                come = [(k, v) for k, v in new_elems.items() if old_elems.get(k) != v]
                if gone:
                    elements.append({"delete": {"element": {**where, "name": name, "elem": gone}}})
                if come:
                    elements.append(
                        {"add": {"element": {**where, "name": name, "elem": [[k, {"goto": {"target": v}}] for k, v in come]}}}
                    )
        # New tables, sets, maps and (empty) chains first, so that every rule added after finds
        # what it refers to; deletions last, once no rule or map element refers to them.
        return create + elements + rules + drop_chains + remove

    def delete_all(self, kernel: set[ObjKey]) -> None:
        """Remove every object of ours from the table (calico-node --cleanup)."""
        commands = self._commands(dict.fromkeys(kernel), existing=kernel, full=True)[1:]  # not "add table"
        if commands:
            self.run(commands, "policy cleanup")
        self.programmed.clear()

    # -- checking what the kernel refuses --------------------------------------------------

    def check_chain(self, content: Chain) -> str:
        """ "" when the kernel accepts these rules, else its error (nothing is left behind)."""
        where = {"family": FAMILY, "table": TABLE}
        commands: list[dict[str, Any]] = [{"add": {"chain": {**where, "name": SCRATCH}}}]
        for text in content.rules:
            exprs, _comment = json.loads(text)
            commands.append({"add": {"rule": {**where, "chain": SCRATCH, "expr": exprs}}})
        commands += [{"flush": {"chain": {**where, "name": SCRATCH}}}, {"delete": {"chain": {**where, "name": SCRATCH}}}]
        try:
            self.run(commands, "policy check")
        except nft.NftError as exc:
            return exc.error.strip() or str(exc)
        return ""


def _elem(element: Any) -> Any:
    if isinstance(element, tuple):
        return {"concat": list(element)}
    if isinstance(element, str) and "/" in element:
        net = ipaddress.ip_network(element)
        if net.prefixlen == net.max_prefixlen:
            return str(net.network_address)
        return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    return element


def kernel_objects() -> tuple[set[ObjKey], dict[str, int]]:
    """Our objects in the table now, and the number of rules in each of our chains (a listing
    without set elements: its cost follows the rules, not the elements)."""
    objects: set[ObjKey] = set()
    counts: dict[str, int] = {}
    for item in nft.list_ruleset(FAMILY):
        for kind in ("chain", "set", "map", "rule"):
            body = item.get(kind)
            if body is None or body.get("table") != TABLE:
                continue
            if kind == "rule":
                if ours("chain", body["chain"]):
                    counts[body["chain"]] = counts.get(body["chain"], 0) + 1
            elif ours(kind, body["name"]):
                objects.add((kind, body["name"]))
    return objects, counts
