"""`calicoctl node policy ENDPOINT [-n NAMESPACE]`: what calico-node enforces for one workload.

ENDPOINT is a WorkloadEndpoint's name, or its pod's name, container ID or host interface. The
policies that select it are worked out from the datastore exactly as calico-node works them
out (pycni.calico.policy.calc), per direction in the order they run, then its profiles; on the
endpoint's own node each line also says whether the node's nftables table has it programmed
(the endpoint's interface in the policy's member set, the endpoint's chain present). pycni's
own command: Calico has none that shows this.
"""

from __future__ import annotations

import os
from typing import Any

from pycni.calico.calicoctl.tables import ps_table
from pycni.calico.datastore import Datastore
from pycni.calico.endpoints import Endpoints
from pycni.calico.node.config import nodename_from
from pycni.calico.node.policy import render
from pycni.calico.node.policy.component import PolicyComponent, load
from pycni.calico.policy.calc import EGRESS, INGRESS, Calc
from pycni.calico.policy.resources import go_number
from pycni.net import nft

IFNAMSIZ = 16


class EndpointNotFound(LookupError):
    pass


def find_endpoint(store: Datastore, text: str, namespace: str | None) -> dict[str, Any]:
    eps = Endpoints(store)
    if namespace is not None:
        found = eps.get(text, namespace)
        if found is not None:
            return found
    candidates = [
        obj
        for obj in eps.list(namespace)
        if text
        in (obj["metadata"]["name"], obj["spec"].get("pod"), obj["spec"].get("interfaceName"), obj["spec"].get("containerID"))
    ]
    if not candidates:
        where = f" in namespace {namespace}" if namespace else ""
        raise EndpointNotFound(f"no WorkloadEndpoint named {text!r}{where} (a name, pod, container ID or interface)")
    if len(candidates) > 1:
        names = ", ".join(f"{c['metadata']['namespace']}/{c['metadata']['name']}" for c in candidates)
        raise EndpointNotFound(f"{text!r} matches several WorkloadEndpoints: {names}; give the name and -n NAMESPACE")
    return candidates[0]


def _in_set(name: str, iface: str) -> bool | None:
    """Is `iface` in the ifname set `name` of calico-node's table (None: no such set)?"""
    if not nft.set_exists(render.FAMILY, render.TABLE, name):
        return None
    key = iface.encode()[: IFNAMSIZ - 1].ljust(IFNAMSIZ, b"\0")
    return nft.lookup(render.FAMILY, render.TABLE, name, key) is not None


def _chain_exists(name: str) -> bool:
    return bool(nft.list_objects(f"chain {render.FAMILY} {render.TABLE} {name}"))


def report(store: Datastore, text: str, namespace: str | None, env: dict[str, str]) -> str:
    obj = find_endpoint(store, text, namespace)
    meta, spec = obj["metadata"], obj["spec"]
    node = spec.get("node", "")
    here = nodename_from(env, os.path.join(env.get("CALICO_VAR_LIB_DIR", "") or "/var/lib/calico", "nodename"))
    local = node == here
    calc = Calc(node)
    prefixes = PolicyComponent.prefixes
    load(calc, [kv for prefix in prefixes for kv in store.list(prefix)])
    key = (meta["namespace"], meta["name"])
    ep = calc.endpoints[key]
    iface = ep.iface
    labels = calc.labels_of(key)
    lines = [
        f"Workload endpoint {meta['namespace']}/{meta['name']}",
        f"  node {node}, interface {iface or '-'}, addresses {', '.join(spec.get('ipNetworks') or []) or '-'}",
        f"  labels (with its profiles'): {', '.join(f'{k}={v}' for k, v in sorted(labels.items())) or '-'}",
        f"  profiles: {', '.join(ep.profiles) or '-'}",
    ]
    if not local:
        lines.append(f"  (this is node {here or '?'}: run this on {node} to see what its nftables table holds)")
    out = "\n".join(lines) + "\n\n"
    for direction, title in ((INGRESS, "Ingress (traffic to the endpoint)"), (EGRESS, "Egress (traffic from the endpoint)")):
        chain = render.endpoint_chain(iface, direction)
        programmed = ""
        if local:
            programmed = "chain programmed" if _chain_exists(chain) else "chain NOT programmed"
        out += f"{title}: {chain}{', ' + programmed if programmed else ''}\n"
        closed = [str(k) for k in calc.closed(key)]
        if closed:
            out += f"  closed: policy {', '.join(closed)} is invalid\n"
        keys = calc.policies_for(key, direction)
        if keys:
            rows = []
            for pkey in keys:
                policy = calc.policies.get(pkey)
                state = "-"
                if local:
                    found = _in_set(render.policy_members(pkey, direction), iface)
                    state = {True: "yes", False: "no", None: "no (no set)"}[found]
                order = go_number(policy.order) if policy is not None else "?"
                rows.append([order, pkey.kind, str(pkey), render.policy_chain(pkey, direction), state])
            out += ps_table(["ORDER", "KIND", "POLICY", "CHAIN", "PROGRAMMED"], rows)
            out += "  then, if a policy passes the packet, its profiles:"
        else:
            out += "  no policy selects it in this direction: its profiles decide:"
        profiles = [
            f"{p} ({render.profile_chain(p, direction)}{'' if p in calc.profiles else ', missing: drops everything'})"
            for p in ep.profiles
        ]
        out += " " + (", ".join(profiles) or "none (everything is dropped)") + "\n\n"
    return out
