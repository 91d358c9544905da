"""The policy component of calico-node: datastore events -> the calculation -> nftables.

It follows WorkloadEndpoints (every node's: selectors match addresses cluster-wide),
NetworkPolicies, GlobalNetworkPolicies, Profiles, NetworkSets and GlobalNetworkSets. A batch of
events updates the calculation, which records what it touched; those objects are re-rendered,
compared with what is programmed, and the difference applied in one transaction.

Failures close, never open: a resource calico-node cannot parse is logged; a policy that
cannot be parsed still selects (by its selector when readable, else its whole namespace, or
everything for a global one) and closes what it selects; a profile that cannot be parsed is
missing, which drops; a chain the kernel refuses is programmed as a drop and closes its
endpoints. Each is reported by `ready()` (the node is then not ready) until it is fixed.

The first full listing programs everything over whatever the table holds (an earlier run's
objects included) in one transaction; later ones apply only the difference. `reconcile`
compares the table's objects and rule counts with what was programmed and rebuilds on drift.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from pycni.calico import model as keys
from pycni.calico.datastore import KV, WatchEvent
from pycni.calico.node.component import NodeContext
from pycni.calico.node.policy import dataplane as dp
from pycni.calico.node.policy import render
from pycni.calico.node.policy.render import Options
from pycni.calico.policy import model
from pycni.calico.policy.calc import Calc
from pycni.calico.policy.model import PolicyKey
from pycni.calico.resources import ValidationError
from pycni.calico.selector import Selector
from pycni.net import nft

log = logging.getLogger("calico-node")

WEPS = keys.resource_prefix("workloadendpoints")
NPS = keys.resource_prefix("networkpolicies")
GNPS = keys.resource_prefix("globalnetworkpolicies")
PROFILES = keys.resource_prefix("profiles")
NETSETS = keys.resource_prefix("networksets")
GNETSETS = keys.resource_prefix("globalnetworksets")


def _split(key: str, prefix: str, namespaced: bool) -> tuple[str, str]:
    rest = key[len(prefix) :]
    if namespaced:
        namespace, _, name = rest.partition("/")
        return namespace, name
    return "", rest


def feed(calc: Calc, key: str, value: str | None) -> None:
    """One datastore key (None: deleted) into the calculation."""
    if key.startswith(WEPS):
        ep_key = _split(key, WEPS, True)
        if value is None:
            calc.delete_endpoint(ep_key)
            return
        try:
            calc.put_endpoint(model.parse_endpoint(json.loads(value)))
        except (ValueError, ValidationError, TypeError) as exc:
            log.warning("Ignoring unreadable WorkloadEndpoint at %s: %s", key, exc)
            calc.delete_endpoint(ep_key)
    elif key.startswith((NPS, GNPS)):
        namespaced = key.startswith(NPS)
        namespace, name = _split(key, NPS if namespaced else GNPS, namespaced)
        pkey = PolicyKey("NetworkPolicy" if namespaced else "GlobalNetworkPolicy", namespace, name)
        if value is None:
            calc.delete_policy(pkey)
            return
        obj: Any = None
        try:
            obj = json.loads(value)
            obj.setdefault("kind", pkey.kind)
            obj.setdefault("metadata", {}).update(name=name, **({"namespace": namespace} if namespaced else {}))
            calc.put_policy(model.parse_policy(obj))
        except (ValueError, ValidationError, TypeError, AttributeError) as exc:
            log.error("%s %s cannot be programmed, the endpoints it may select are closed: %s", pkey.kind, pkey, exc)
            calc.put_broken_policy(pkey, str(exc), _readable_selector(obj, namespace))
    elif key.startswith(PROFILES):
        name = key[len(PROFILES) :]
        if value is None:
            calc.delete_profile(name)
            return
        try:
            obj = json.loads(value)
            obj.setdefault("metadata", {})["name"] = name
            calc.put_profile(model.parse_profile(obj))
        except (ValueError, ValidationError, TypeError, AttributeError) as exc:
            log.error("Profile %s cannot be programmed, its endpoints are closed: %s", name, exc)
            calc.delete_profile(name)
    elif key.startswith((NETSETS, GNETSETS)):
        namespaced = key.startswith(NETSETS)
        ns_key = _split(key, NETSETS if namespaced else GNETSETS, namespaced)
        if value is None:
            calc.delete_netset(ns_key)
            return
        try:
            obj = json.loads(value)
            obj["kind"] = "NetworkSet" if namespaced else "GlobalNetworkSet"
            obj.setdefault("metadata", {}).update(name=ns_key[1], **({"namespace": ns_key[0]} if namespaced else {}))
            calc.put_netset(model.parse_network_set(obj))
        except (ValueError, ValidationError, TypeError, AttributeError) as exc:
            log.warning("Ignoring unreadable network set at %s: %s", key, exc)
            calc.delete_netset(ns_key)


def _readable_selector(obj: Any, namespace: str) -> Selector | None:
    try:
        text = str(((obj or {}).get("spec") or {}).get("selector") or "all()")
        selector = model.parse_selector(text, "spec.selector")
        return (
            model.parse_selector(f"({selector}) && projectcalico.org/namespace == '{namespace}'", "") if namespace else selector
        )
    except (ValidationError, AttributeError):
        return None


def load(calc: Calc, listing: Sequence[KV]) -> None:
    for kv in listing:
        feed(calc, kv.key, kv.value)


class PolicyComponent:
    name: str = "policy"
    prefixes: tuple[str, ...] = (WEPS, NPS, GNPS, PROFILES, NETSETS, GNETSETS)

    def __init__(
        self,
        ctx: NodeContext,
        opts: Options,
        runner: Callable[[list[dict[str, Any]], str], None] = nft.run,
        kernel: Callable[[], tuple[set[dp.ObjKey], dict[str, int]]] = dp.kernel_objects,
    ) -> None:
        self.ctx = ctx
        self.opts = opts
        self.kernel = kernel
        self.calc = Calc(ctx.nodename)
        self.dataplane = dp.PolicyDataplane(self.calc, opts, runner)
        self.needs_rebuild = True
        self.error = "not programmed yet"
        self.last_apply = 0.0  # seconds the last programming took
        self.metrics = _Metrics(ctx.registry) if ctx.registry is not None else None

    # -- the contract ---------------------------------------------------------------------

    def resync(self, listing: Sequence[KV]) -> None:
        calc = Calc(self.ctx.nodename)
        load(calc, listing)
        calc.dirty.take()
        self.calc = self.dataplane.calc = calc
        if self.needs_rebuild:
            self._rebuild()
            return
        want: dict[dp.ObjKey, dp.Content | None] = dict(self.dataplane.everything())
        for key in self.dataplane.programmed:
            want.setdefault(key, None)
        self._apply(want)

    def on_events(self, events: Sequence[WatchEvent]) -> None:
        for event in events:
            feed(self.calc, event.key, event.value if event.kind == "put" else None)
        self.program()

    def program(self) -> None:
        """Program what the events fed since the last call touched."""
        dirty = self.calc.dirty.take()
        if self.needs_rebuild:
            self._rebuild()
        elif dirty:
            self._apply(self.dataplane.wanted(dirty))

    def reconcile(self) -> None:
        if self.needs_rebuild:
            self._rebuild()
            return
        if self.dataplane.failed:
            self._recheck_failed()
        objects, counts = self.kernel()
        programmed = self.dataplane.programmed
        drift = objects != set(programmed) or any(
            counts.get(name, 0) != len(content.rules)
            for (kind, name), content in programmed.items()
            if isinstance(content, dp.Chain)
        )
        if drift:
            log.warning("Policy: the nftables table differs from what was programmed; programming it again")
            self._rebuild()

    def ready(self) -> str:
        problems = [self.error] if self.error else []
        problems += [
            f"{kind} {key} could not be programmed: {why}" for (kind, key), why in sorted(self.dataplane.failed.items(), key=str)
        ]
        problems += [f"policy {key} is invalid: {why}" for key, why in sorted(self.calc.broken.items(), key=str)]
        return "; ".join(problems)

    def close(self, *, cleanup: bool = False) -> None:
        if not cleanup:
            return
        try:
            self.dataplane.delete_all(self.kernel()[0])
        except nft.NftError as exc:
            log.warning("Policy cleanup failed: %s", exc.error.strip())

    # -- programming ----------------------------------------------------------------------

    def _apply(self, wanted: dict[dp.ObjKey, dp.Content | None]) -> None:
        started = time.monotonic()
        try:
            changed = self.dataplane.apply(wanted)
        except nft.NftError as exc:
            log.warning(
                "Policy update refused by the kernel (%s); finding what it refuses and programming everything again",
                exc.error.strip(),
            )
            self._rebuild()
            return
        self._done(started, changed)

    def _rebuild(self) -> None:
        started = time.monotonic()
        try:
            self.dataplane.rebuild(self.kernel()[0])
        except nft.NftError as exc:
            # Something is refused: program every policy and profile chain as a drop (closed),
            # then check each one against that table, and program again without the refused.
            try:
                self.dataplane.rebuild(self.kernel()[0], stubs=True)
                self._find_refused()
                self.dataplane.rebuild(self.kernel()[0])
            except nft.NftError as again:
                self.needs_rebuild = True
                self.error = f"nftables refused the policy ruleset: {(again.error or exc.error).strip()}"
                log.error("Policy: %s", self.error)
                return
        self.needs_rebuild = False
        self._done(started, len(self.dataplane.programmed))

    def _done(self, started: float, changed: int) -> None:
        self.last_apply = time.monotonic() - started
        self.error = ""
        if self.metrics is not None:
            self.metrics.observe(self, changed)
        if changed:
            log.debug("Policy: %d objects programmed in %.1f ms", changed, self.last_apply * 1000)

    def _find_refused(self) -> bool:
        """Check each policy and profile chain on its own; mark those the kernel refuses.
        True when one was found (the endpoints they apply to are then closed)."""
        found = False
        for obj_key, content in self.dataplane.everything().items():
            if not isinstance(content, dp.Chain) or content.attrs:
                continue
            owner = self._owner_of(obj_key[1])
            if owner is None or owner in self.dataplane.failed:
                continue
            why = self.dataplane.check_chain(content)
            if why:
                log.error(
                    "Policy: the kernel refuses %s %s (%s): the endpoints it applies to are closed", owner[0], owner[1], why
                )
                self.dataplane.failed[owner] = why
                found = True
        return found

    def _owner_of(self, chain: str) -> tuple[str, Any] | None:
        for key in self.calc.policies:
            if chain in (render.policy_chain(key, "ingress"), render.policy_chain(key, "egress")):
                return ("policy", key)
        for name in self.calc.profiles:
            if chain in (render.profile_chain(name, "ingress"), render.profile_chain(name, "egress")):
                return ("profile", name)
        return None

    def _recheck_failed(self) -> None:
        """Check again what the kernel refused (a module may have been loaded since); what it
        accepts now is programmed and its endpoints opened, in one transaction."""
        dataplane, calc = self.dataplane, self.calc
        for owner in list(dataplane.failed):
            why = dataplane.failed.pop(owner)
            rendered: dict[dp.ObjKey, dp.Content | None] = {}
            if owner[0] == "policy":
                dataplane.policy_chains(owner[1], rendered)
            else:
                dataplane.profile_chains(owner[1], rendered)
            refused = next((r for c in rendered.values() if isinstance(c, dp.Chain) and (r := dataplane.check_chain(c))), "")
            if refused:
                dataplane.failed[owner] = refused or why
                continue
            log.info("Policy: the kernel now accepts %s %s", owner[0], owner[1])
            (calc.dirty.policies if owner[0] == "policy" else calc.dirty.profiles).add(owner[1])
            calc.dirty.endpoints.update(calc.local_endpoints())
        self.program()


class _Metrics:
    """felix's policy gauges where felix has them, and calico-node's programming time."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Gauge, Summary

        self.policies = Gauge("felix_active_local_policies", "Number of active policies on this host.", registry=registry)
        self.selectors = Gauge("felix_active_local_selectors", "Number of active selectors on this host.", registry=registry)
        self.rules = Gauge(
            "calico_node_policy_nftables_rules", "nftables rules calico-node's policy programs.", registry=registry
        )
        self.apply = Summary("calico_node_policy_apply_seconds", "Time to program one policy update.", registry=registry)

    def observe(self, component: PolicyComponent, changed: int) -> None:
        calc = component.calc
        self.policies.set(len({k for d in ("ingress", "egress") for k in calc.active_policies(d)}))
        self.selectors.set(len(calc.sel_owners))
        self.rules.set(sum(len(c.rules) for c in component.dataplane.programmed.values() if isinstance(c, dp.Chain)))
        if changed:
            self.apply.observe(component.last_apply)
