"""What applies to which endpoint, as felix's calculation graph works it out, kept current one
change at a time.

Inputs are the parsed resources (`model.py`): every WorkloadEndpoint of the cluster, profiles,
network sets and policies. What is worked out:

- an endpoint's labels: those of its profiles' `labelsToApply` (in order, later ones winning),
  then its own (the same for a NetworkSet, which inherits its namespace's `kns.` profile);
- for each endpoint on this node, the policies that select it, per direction, in felix's order
  (`order` ascending, none last; ties by "name/namespace/kind");
- the active objects: a policy is active in a direction when it selects a local endpoint there,
  a profile when a local endpoint uses it; a selector (or named port) when an active policy or
  profile refers to it in a rule, and then which endpoints of the whole cluster, and which
  network sets, it matches.

Each change records in `dirty` exactly what it may have changed, for the dataplane to
re-render; work is proportional to the change: an endpoint's label change re-evaluates the
active selectors and (for a local endpoint) the policies against that one endpoint; a
policy change evaluates its selector against the local endpoints, and a selector that becomes
active is evaluated once against every endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pycni.calico.policy.model import Endpoint, NetworkSet, Policy, PolicyKey, Profile, Rule
from pycni.calico.selector import ALL, Selector

EPKey = tuple[str, str]  # (namespace, name)
NSKey = tuple[str, str]  # ("", name) for a GlobalNetworkSet
INGRESS, EGRESS = "ingress", "egress"
DIRECTIONS = (INGRESS, EGRESS)


@dataclass(frozen=True)
class Owner:
    """Whoever refers to selectors: a policy's or a profile's rules in one direction."""

    kind: str  # "policy" or "profile"
    key: PolicyKey | str
    direction: str


@dataclass(frozen=True)
class NamedPortKey:
    """The (address, port) pairs of endpoints matching `selector` whose port `name` is of `protocol`."""

    selector: Selector
    protocol: int
    name: str


@dataclass
class Dirty:
    endpoints: set[EPKey] = field(default_factory=set)  # local endpoints: chains and dispatch entries
    members: set[PolicyKey] = field(default_factory=set)  # which local endpoints a policy selects
    policies: set[PolicyKey] = field(default_factory=set)  # a policy's chains
    profiles: set[str] = field(default_factory=set)  # a profile's chains
    selectors: set[Selector] = field(default_factory=set)  # a selector's addresses
    netsets: set[NSKey] = field(default_factory=set)  # a network set's nets
    ports: set[NamedPortKey] = field(default_factory=set)
    dispatch: bool = False  # the order of active policies

    def take(self) -> Dirty:
        """What is dirty now; this one starts again empty."""
        out = Dirty(
            self.endpoints, self.members, self.policies, self.profiles, self.selectors, self.netsets, self.ports, self.dispatch
        )
        self.endpoints, self.members, self.policies, self.profiles = set(), set(), set(), set()
        self.selectors, self.netsets, self.ports, self.dispatch = set(), set(), set(), False
        return out

    def __bool__(self) -> bool:
        return bool(self.endpoints or self.members or self.policies or self.profiles or self.selectors or self.netsets
                    or self.ports or self.dispatch)  # fmt: skip


def rules_of(obj: Policy | Profile, direction: str) -> tuple[Rule, ...]:
    return obj.inbound if direction == INGRESS else obj.outbound


def _rule_refs(rules: Iterable[Rule]) -> tuple[set[Selector], set[NamedPortKey]]:
    selectors: set[Selector] = set()
    ports: set[NamedPortKey] = set()
    for rule in rules:
        for entity in (rule.src, rule.dst):
            selectors.update(entity.selectors())
            names = [p.name for p in (*entity.ports, *entity.not_ports) if p.name]
            if names and rule.protocol is not None:
                base = entity.selector or ALL
                selectors.add(base)
                ports.update(NamedPortKey(base, rule.protocol, n) for n in names)
    return selectors, ports


class Calc:
    def __init__(self, nodename: str) -> None:
        self.nodename = nodename
        self.endpoints: dict[EPKey, Endpoint] = {}
        self.labels: dict[EPKey, dict[str, str]] = {}
        self.profiles: dict[str, Profile] = {}
        self.netsets: dict[NSKey, NetworkSet] = {}
        self.netset_labels: dict[NSKey, dict[str, str]] = {}
        self.policies: dict[PolicyKey, Policy] = {}
        #: policies that could not be parsed (key -> why); they close what they may select
        self.broken: dict[PolicyKey, str] = {}
        # who inherits a profile's labels (endpoints anywhere, network sets)
        self._profile_eps: dict[str, set[EPKey]] = {}
        self._profile_sets: dict[str, set[NSKey]] = {}
        # local selection
        self.members: dict[PolicyKey, set[EPKey]] = {}
        self.ep_policies: dict[EPKey, set[PolicyKey]] = {}
        # active selectors and named ports
        self._owner_sels: dict[Owner, set[Selector]] = {}
        self._owner_ports: dict[Owner, set[NamedPortKey]] = {}
        self.sel_owners: dict[Selector, set[Owner]] = {}
        self.sel_eps: dict[Selector, set[EPKey]] = {}
        self.sel_netsets: dict[Selector, set[NSKey]] = {}
        self.port_owners: dict[NamedPortKey, set[Owner]] = {}
        self._sel_ports: dict[Selector, set[NamedPortKey]] = {}
        self._broken_selectors: dict[PolicyKey, Selector | None] = {}
        self.dirty = Dirty()

    # -- questions -------------------------------------------------------------------------

    def is_local(self, key: EPKey) -> bool:
        ep = self.endpoints.get(key)
        return ep is not None and ep.node == self.nodename

    def local_endpoints(self) -> dict[EPKey, Endpoint]:
        return {k: e for k, e in self.endpoints.items() if e.node == self.nodename}

    def policies_for(self, key: EPKey, direction: str) -> list[PolicyKey]:
        """The policies that apply to a local endpoint in `direction`, in the order they run."""
        keys = [k for k in self.ep_policies.get(key, ()) if self.applies(k, direction)]
        return sorted(keys, key=self.sort_key)

    def applies(self, key: PolicyKey, direction: str) -> bool:
        policy = self.policies.get(key)
        if policy is None:
            return key in self.broken
        return policy.ingress if direction == INGRESS else policy.egress

    def sort_key(self, key: PolicyKey) -> tuple[float, str]:
        policy = self.policies.get(key)
        return policy.sort_key() if policy is not None else (float("-inf"), key.sort_key())

    def active_policies(self, direction: str) -> list[PolicyKey]:
        keys = [k for k, eps in self.members.items() if eps and k in self.policies and self.applies(k, direction)]
        return sorted(keys, key=self.sort_key)

    def active_profiles(self) -> set[str]:
        return {p for key in self.local_endpoints() for p in self.endpoints[key].profiles}

    def closed(self, key: EPKey) -> list[PolicyKey]:
        """Broken policies that may select this local endpoint (it is then closed)."""
        return sorted((k for k in self.ep_policies.get(key, ()) if k in self.broken), key=str)

    def selector_addresses(self, selector: Selector, version: int) -> set[str]:
        out: set[str] = set()
        for key in self.sel_eps.get(selector, ()):
            out.update(str(a) for a in self.endpoints[key].addresses if a.version == version)
        return out

    def named_port_elements(self, npk: NamedPortKey, version: int) -> set[tuple[str, int]]:
        out: set[tuple[str, int]] = set()
        for key in self.sel_eps.get(npk.selector, ()):
            ep = self.endpoints[key]
            ports = [p.port for p in ep.ports if p.name == npk.name and p.protocol == npk.protocol]
            out.update((str(a), port) for a in ep.addresses if a.version == version for port in ports)
        return out

    # -- labels ----------------------------------------------------------------------------

    def _inherit(self, own: Iterable[tuple[str, str]], profiles: Iterable[str]) -> dict[str, str]:
        labels: dict[str, str] = {}
        for name in profiles:
            profile = self.profiles.get(name)
            if profile is not None:
                labels.update(profile.labels)
        labels.update(own)
        return labels

    # -- endpoints -------------------------------------------------------------------------

    def put_endpoint(self, ep: Endpoint) -> None:
        old = self.endpoints.get(ep.key)
        if old == ep:
            return
        if old is not None:
            for name in old.profiles:
                self._profile_eps.get(name, set()).discard(ep.key)
        for name in ep.profiles:
            self._profile_eps.setdefault(name, set()).add(ep.key)
        self.endpoints[ep.key] = ep
        moved = old is not None and (old.addresses != ep.addresses or old.ports != ep.ports)
        self._relabel(ep.key, old, moved)

    def delete_endpoint(self, key: EPKey) -> None:
        old = self.endpoints.pop(key, None)
        if old is None:
            return
        for name in old.profiles:
            self._profile_eps.get(name, set()).discard(key)
        self._relabel(key, old, True)

    def _relabel(self, key: EPKey, old: Endpoint | None, moved: bool) -> None:
        """Re-evaluate one endpoint (changed, added or deleted) against active selectors and,
        when it is or was local, against every policy."""
        ep = self.endpoints.get(key)
        labels = self._inherit(ep.labels, ep.profiles) if ep is not None else None
        if labels is None:
            self.labels.pop(key, None)
        else:
            self.labels[key] = labels
        for selector, members in self.sel_eps.items():
            now = labels is not None and selector(labels)
            was = key in members
            if now != was:
                (members.add if now else members.discard)(key)
            if now != was or (now and moved):
                self.dirty.selectors.add(selector)
                self.dirty.ports.update(self._sel_ports.get(selector, ()))
        was_local = old is not None and old.node == self.nodename
        is_local = ep is not None and ep.node == self.nodename
        if not (was_local or is_local):
            return
        self.dirty.endpoints.add(key)
        wanted: set[PolicyKey] = set()
        if is_local and labels is not None:
            wanted = {k for k, p in self.policies.items() if p.selector(labels)}
            wanted |= {k for k in self.broken if self._broken_selects(k, key)}
        had = self.ep_policies.get(key, set())
        for pkey in had ^ wanted:
            members = self.members.setdefault(pkey, set())
            before = bool(members)
            (members.add if pkey in wanted else members.discard)(key)
            if not members:
                del self.members[pkey]
            self.dirty.members.add(pkey)
            if before != bool(members):
                self.dirty.dispatch = True
            self._sync_policy_owners(pkey)
        if wanted:
            self.ep_policies[key] = wanted
        else:
            self.ep_policies.pop(key, None)
        if old is not None and ep is not None and old.iface != ep.iface:
            self.dirty.members.update(wanted)  # the member sets hold interface names
        if old is None or ep is None or old.profiles != ep.profiles or was_local != is_local:
            for name in {*(old.profiles if old else ()), *(ep.profiles if ep else ())}:
                self._sync_profile_owners(name)

    # -- profiles --------------------------------------------------------------------------

    def put_profile(self, profile: Profile) -> None:
        old = self.profiles.get(profile.name)
        if old == profile:
            return
        self.profiles[profile.name] = profile
        self._profile_changed(profile.name, old, profile)

    def delete_profile(self, name: str) -> None:
        old = self.profiles.pop(name, None)
        if old is not None:
            self._profile_changed(name, old, None)

    def _profile_changed(self, name: str, old: Profile | None, new: Profile | None) -> None:
        self.dirty.profiles.add(name)
        self._sync_profile_owners(name)
        if (old.labels if old else ()) != (new.labels if new else ()):
            for key in list(self._profile_eps.get(name, ())):
                self._relabel(key, self.endpoints[key], False)
            for nskey in list(self._profile_sets.get(name, ())):
                self._netset_changed(nskey, self.netsets[nskey])

    def _profile_users(self, name: str) -> bool:
        return any(self.is_local(k) for k in self._profile_eps.get(name, ()))

    def _sync_profile_owners(self, name: str) -> None:
        profile = self.profiles.get(name)
        active = profile is not None and self._profile_users(name)
        for direction in DIRECTIONS:
            rules = rules_of(profile, direction) if active and profile is not None else ()
            if self._sync_owner(Owner("profile", name, direction), rules):
                self.dirty.profiles.add(name)

    # -- policies --------------------------------------------------------------------------

    def put_policy(self, policy: Policy) -> None:
        key = policy.key
        old = self.policies.get(key)
        if old == policy:
            return
        was_broken = self.broken.pop(key, None) is not None
        self._broken_selectors.pop(key, None)
        self.policies[key] = policy
        self._reselect(key)
        self.dirty.policies.add(key)
        if old is None or was_broken or old.order != policy.order or (old.ingress, old.egress) != (policy.ingress, policy.egress):
            self.dirty.dispatch = True
        if was_broken or (old is not None and (old.ingress, old.egress) != (policy.ingress, policy.egress)):
            self.dirty.endpoints.update(self.members.get(key, ()))
        self._sync_policy_owners(key)

    def delete_policy(self, key: PolicyKey) -> None:
        if self.policies.pop(key, None) is None and self.broken.pop(key, None) is None:
            return
        self._broken_selectors.pop(key, None)
        self.dirty.policies.add(key)
        self.dirty.dispatch = True
        self._reselect(key)
        self._sync_policy_owners(key)
        self.members.pop(key, None)

    def put_broken_policy(self, key: PolicyKey, why: str, selector: Selector | None) -> None:
        """A policy that cannot be parsed: it selects what its selector (if readable) selects,
        else everything in its namespace (everything, for a global one), and keeps it closed."""
        self.policies.pop(key, None)
        self.broken[key] = why
        self._broken_selectors[key] = selector
        self._reselect(key)
        self.dirty.policies.add(key)
        self.dirty.dispatch = True
        self.dirty.endpoints.update(self.members.get(key, ()))
        self._sync_policy_owners(key)

    def _broken_selects(self, key: PolicyKey, ep_key: EPKey) -> bool:
        selector = self._broken_selectors.get(key)
        labels = self.labels.get(ep_key, {})
        if selector is not None:
            return selector(labels)
        return not key.namespace or ep_key[0] == key.namespace

    def _reselect(self, key: PolicyKey) -> None:
        """The local endpoints a (new, changed or deleted) policy selects."""
        policy = self.policies.get(key)
        wanted: set[EPKey] = set()
        for ep_key in self.local_endpoints():
            labels = self.labels.get(ep_key, {})
            if (policy is not None and policy.selector(labels)) or (key in self.broken and self._broken_selects(key, ep_key)):
                wanted.add(ep_key)
        had = self.members.get(key, set())
        if had != wanted:
            self.dirty.members.add(key)
            if bool(had) != bool(wanted):
                self.dirty.dispatch = True
        for ep_key in had ^ wanted:
            self.dirty.endpoints.add(ep_key)
            pols = self.ep_policies.setdefault(ep_key, set())
            (pols.add if ep_key in wanted else pols.discard)(key)
            if not pols:
                del self.ep_policies[ep_key]
        if wanted:
            self.members[key] = wanted
        else:
            self.members.pop(key, None)

    def _sync_policy_owners(self, key: PolicyKey) -> None:
        policy = self.policies.get(key)
        active = policy is not None and bool(self.members.get(key))
        for direction in DIRECTIONS:
            on = active and policy is not None and (policy.ingress if direction == INGRESS else policy.egress)
            rules = rules_of(policy, direction) if on and policy is not None else ()
            if self._sync_owner(Owner("policy", key, direction), rules):
                self.dirty.policies.add(key)

    # -- network sets ----------------------------------------------------------------------

    def put_netset(self, netset: NetworkSet) -> None:
        old = self.netsets.get(netset.key)
        if old == netset:
            return
        if old is not None:
            for name in old.profiles:
                self._profile_sets.get(name, set()).discard(netset.key)
        for name in netset.profiles:
            self._profile_sets.setdefault(name, set()).add(netset.key)
        self.netsets[netset.key] = netset
        self._netset_changed(netset.key, old)

    def delete_netset(self, key: NSKey) -> None:
        old = self.netsets.pop(key, None)
        if old is None:
            return
        for name in old.profiles:
            self._profile_sets.get(name, set()).discard(key)
        self._netset_changed(key, old)

    def _netset_changed(self, key: NSKey, old: NetworkSet | None) -> None:
        netset = self.netsets.get(key)
        labels = self._inherit(netset.labels, netset.profiles) if netset is not None else None
        if labels is None:
            self.netset_labels.pop(key, None)
        else:
            self.netset_labels[key] = labels
        self.dirty.netsets.add(key)
        for selector, sets in self.sel_netsets.items():
            now = labels is not None and selector(labels)
            if now != (key in sets):
                (sets.add if now else sets.discard)(key)
                self._owners_dirty(selector)

    def _owners_dirty(self, selector: Selector) -> None:
        """A selector's network sets changed: the chains whose rules use it render differently."""
        for owner in self.sel_owners.get(selector, ()):
            if owner.kind == "policy":
                self.dirty.policies.add(owner.key)  # type: ignore[arg-type]
            else:
                self.dirty.profiles.add(owner.key)  # type: ignore[arg-type]

    # -- selector reference counting -------------------------------------------------------

    def _sync_owner(self, owner: Owner, rules: Iterable[Rule]) -> bool:
        """Make `owner` refer to exactly the selectors of `rules`; True when that changed."""
        selectors, ports = _rule_refs(rules)
        old_sels = self._owner_sels.get(owner, set())
        old_ports = self._owner_ports.get(owner, set())
        if selectors == old_sels and ports == old_ports:
            return False
        for s in selectors - old_sels:
            self._ref(s, owner)
        for npk in ports - old_ports:
            self.port_owners.setdefault(npk, set()).add(owner)
            self._sel_ports.setdefault(npk.selector, set()).add(npk)
            self.dirty.ports.add(npk)
        for npk in old_ports - ports:
            owners = self.port_owners.get(npk, set())
            owners.discard(owner)
            if not owners:
                self.port_owners.pop(npk, None)
                self._sel_ports.get(npk.selector, set()).discard(npk)
                self.dirty.ports.add(npk)
        for s in old_sels - selectors:
            self._unref(s, owner)
        if selectors:
            self._owner_sels[owner] = selectors
        else:
            self._owner_sels.pop(owner, None)
        if ports:
            self._owner_ports[owner] = ports
        else:
            self._owner_ports.pop(owner, None)
        return True

    def _ref(self, selector: Selector, owner: Owner) -> None:
        owners = self.sel_owners.setdefault(selector, set())
        owners.add(owner)
        if len(owners) == 1:
            self.sel_eps[selector] = {k for k, labels in self.labels.items() if selector(labels)}
            self.sel_netsets[selector] = {k for k, labels in self.netset_labels.items() if selector(labels)}
            self.dirty.selectors.add(selector)
            self.dirty.netsets.update(self.sel_netsets[selector])

    def _unref(self, selector: Selector, owner: Owner) -> None:
        owners = self.sel_owners.get(selector, set())
        owners.discard(owner)
        if not owners:
            self.sel_owners.pop(selector, None)
            self.sel_eps.pop(selector, None)
            gone = self.sel_netsets.pop(selector, set())
            self.dirty.selectors.add(selector)
            self.dirty.netsets.update(gone)
            if not self._sel_ports.get(selector):
                self._sel_ports.pop(selector, None)

    def active_netsets(self) -> set[NSKey]:
        return {k for sets in self.sel_netsets.values() for k in sets}

    def netsets_of(self, selector: Selector) -> list[NSKey]:
        return sorted(self.sel_netsets.get(selector, ()))

    # -- whole listings --------------------------------------------------------------------

    def labels_of(self, key: EPKey) -> Mapping[str, str]:
        return self.labels.get(key, {})
