"""calicoctl's commands on the pycni datastore.

    calicoctl ipam show [--ip=IP | --show-blocks | --show-borrowed | --show-configuration]
    calicoctl ipam check [--show-all-ips] [--show-problem-ips] [-o FILE]
    calicoctl ipam release --ip=IP
    calicoctl ipam configure --strictaffinity=true|false [--max-blocks-per-host=N]
    calicoctl get KIND [NAME...] [-n NS | -A] [-o ps|wide|yaml|json]
    calicoctl create|apply|replace|delete -f FILE      calicoctl delete KIND NAME...
    calicoctl label KIND NAME key=value [--overwrite] | key --remove  [-n NS]
    calicoctl node status
    calicoctl node policy ENDPOINT [-n NS]               what calico-node enforces for one workload

KIND is any type in pycni.calico.calicoctl.kinds (ippools, workloadendpoints, nodes, ...).

Global: -c/--config FILE (default /etc/calico/calicoctl.cfg, else the environment).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pycni.calico.calicoctl import datastorecfg, kinds, node_policy, node_status, output, tables
from pycni.calico.datastore import Datastore, DatastoreError, UnsupportedDatastore, open_datastore
from pycni.calico.endpoints import EndpointNameError, Endpoints
from pycni.calico.ipam import IPAM
from pycni.calico.model import IPAMConfig
from pycni.calico.policy import k8s
from pycni.calico.policy.model import K8S_POLICY_PREFIX
from pycni.calico.pools import PoolError
from pycni.calico.resources import ResourceError, ValidationError
from pycni.extras import MissingExtra
from pycni.spec.errors import CNIError


class CommandError(Exception):
    pass


def _store(args: argparse.Namespace) -> Datastore:
    try:
        settings = datastorecfg.load(args.config, os.environ)
        return open_datastore(settings)
    except (datastorecfg.ConfigError, UnsupportedDatastore) as exc:
        raise CommandError(str(exc)) from None


# -- ipam --------------------------------------------------------------------------


def _pct(n: float, capacity: float) -> str:
    return f"{n:.5g} ({100 * n / capacity:.0f}%)" if capacity else f"{n:.5g}"


def ipam_show(args: argparse.Namespace, store: Datastore) -> str:
    ipam = IPAM(store)
    if args.ip:
        ip = _parse_ip(args.ip)
        attr = ipam.assignment(ip)
        if attr is None:
            return f"{ip} is not assigned\n"
        lines = [f"IP {ip} is in use"]
        attrs = dict(attr.secondary)
        if attr.handle_id:
            attrs = {"handle": attr.handle_id, **attrs}
        if attrs:
            lines.append("Attributes:")
            lines += [f"  {k}: {v}" for k, v in sorted(attrs.items())]
        else:
            lines.append("No attributes defined")
        return "\n".join(lines) + "\n"
    if args.show_configuration:
        cfg = ipam.config()
        rows = [
            ["StrictAffinity", str(cfg.strict_affinity).lower()],
            ["AutoAllocateBlocks", str(cfg.auto_allocate_blocks).lower()],
            ["MaxBlocksPerHost", str(cfg.max_blocks_per_host)],
        ]
        return tables.boxed_table(["PROPERTY", "VALUE"], rows)
    if args.show_borrowed:
        rows = []
        for block in ipam.blocks():
            owner = block.affinity.split(":", 1)[-1] if block.affinity else ""
            for ip, attr in block.allocated():
                node = attr.secondary.get("node")
                if node is None or node == owner:
                    continue
                kind = "pod" if "pod" in attr.secondary else attr.secondary.get("type", "")
                to = f"{attr.secondary.get('namespace', '')}/{attr.secondary['pod']}" if "pod" in attr.secondary else ""
                rows.append([str(ip), node, str(block.cidr), owner, kind, to])
        return tables.boxed_table(["IP", "BORROWING-NODE", "BLOCK", "BLOCK OWNER", "TYPE", "ALLOCATED-TO"], rows)
    rows = []
    for pool in ipam.utilization():
        if pool.cidr is not None:
            cap = pool.cidr.num_addresses
            rows.append(["IP Pool", str(pool.cidr), f"{cap:.5g}", _pct(pool.in_use, cap), _pct(cap - pool.in_use, cap)])
        if args.show_blocks:
            for b in pool.blocks:
                rows.append(
                    [
                        "Block",
                        str(b.cidr),
                        f"{b.capacity:.5g}",
                        _pct(b.in_use, b.capacity),
                        _pct(b.capacity - b.in_use, b.capacity),
                    ]
                )
    return tables.boxed_table(["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"], rows)


def ipam_check(args: argparse.Namespace, store: Datastore) -> str:
    ipam = IPAM(store)
    out = ["Checking IPAM for inconsistencies...", ""]
    blocks = ipam.blocks()
    out.append("Loading all IPAM blocks...")
    out.append(f"Found {len(blocks)} IPAM blocks.")
    allocations: dict[str, list[dict[str, Any]]] = {}
    by_node: dict[str, int] = {}
    in_use_handles: set[str] = set()
    for block in blocks:
        out.append(f" IPAM block {block.cidr} affinity={block.affinity or '<none>'}:")
        for address, attr in block.allocated():
            record = {"ip": str(address), "handle": attr.handle_id or "", "attrs": attr.secondary, "block": str(block.cidr)}
            allocations.setdefault(str(address), []).append(record)
            node = attr.secondary.get("node", "")
            by_node[node] = by_node.get(node, 0) + 1
            if attr.handle_id:
                in_use_handles.add(attr.handle_id)
    out += [f"IPAM blocks record {sum(len(v) for v in allocations.values())} allocations.", ""]
    pools = [p for p in ipam.pools.all() if not p.disabled]
    out.append("Loading all IPAM pools...")
    out += [f"  {p.cidr}" for p in pools]
    out += [f"Found {len(pools)} active IP pools.", ""]
    out += ["Loading all nodes.", "Found 0 node tunnel IPs.", ""]
    out.append("Loading all workload endpoints.")
    in_use: dict[str, list[str]] = {}
    weps = Endpoints(store).list()
    for wep in weps:
        for net in wep["spec"].get("ipNetworks") or []:
            used = str(ipaddress.ip_interface(net).ip)
            in_use.setdefault(used, []).append(f"Workload({wep['metadata']['namespace']}/{wep['metadata']['name']})")
    out.append(f"Found {sum(len(v) for v in in_use.values())} workload IPs.")
    out += [f"Workloads and nodes are using {len(in_use)} IPs.", ""]
    handles = ipam.handles()
    out.append("Loading all handles")
    out.append("Looking for top (up to 20) nodes by allocations...")
    ranked = sorted(by_node.items(), key=lambda kv: -kv[1])
    out += [f"  {node} has {count} allocations" for node, count in ranked[:20]]
    if ranked:
        out.append(f"Node with most allocations has {ranked[0][1]}; median is {ranked[len(ranked) // 2][1]}")
    out.append("")
    problems = 0
    out.append("Scanning for IPs that are allocated but not actually in use...")
    leaked = [ip for ip in allocations if ip not in in_use]
    for ip in leaked:
        if args.show_problem_ips or args.show_all_ips:
            out += [f"  {ip} leaked; attrs {a['attrs']}" for a in allocations[ip]]
    problems += len(leaked)
    out.append(f"Found {len(leaked)} IPs that are allocated in IPAM but not actually in use.")
    out.append("Scanning for IPs that are in use by a workload or node but not allocated in IPAM...")
    outside, unallocated = [], []
    for ip, owners in in_use.items():
        if (args.show_problem_ips or args.show_all_ips) and len(owners) > 1:
            out.append(f"  {ip} has multiple owners.")
        if ip in allocations:
            continue
        if not any(ipaddress.ip_address(ip) in p.cidr for p in pools):
            outside.append(ip)
            if args.show_problem_ips or args.show_all_ips:
                out += [f"  {ip} in use by {o} is not in any active IP pool." for o in owners]
        else:
            unallocated.append(ip)
            if args.show_problem_ips or args.show_all_ips:
                out += [f"  {ip} in use by {o} and in active IPAM pool but has no IPAM allocation." for o in owners]
    problems += len(outside) + len(unallocated)
    out.append(f"Found {len(outside)} in-use IPs that are not in active IP pools.")
    out += [f"Found {len(unallocated)} in-use IPs that are in active IP pools but have no corresponding IPAM allocation.", ""]
    out.append("Scanning for IPAM handles with no matching IPs...")
    leaked_handles = [h for h in handles if h not in in_use_handles]
    if args.show_all_ips:
        out += [f"  {h} doesn't have any active IPs." for h in leaked_handles]
    problems += len(leaked_handles)
    good = len(handles) - len(leaked_handles)
    out.append(f"Found {len(leaked_handles)} handles with no matching IPs (and {good} handles with matches).")
    out.append("Scanning for IPs with missing handle...")
    missing = sorted(in_use_handles - set(handles))
    if args.show_problem_ips or args.show_all_ips:
        out += [f"  {h} is in use in a block but doesn't exist." for h in missing]
    out.append(f"Found {len(missing)} handles mentioned in blocks with no matching handle resource.")
    out.append(f"Check complete; found {problems} problems.")
    if args.output:
        report = {
            "version": "pycni",
            "allocations": {ip: [dict(a, inUse=ip in in_use) for a in recs] for ip, recs in allocations.items()},
            "leakedHandles": [{"id": h, "revision": str(handles[h][1].revision)} for h in leaked_handles],
        }
        with open(args.output, "w") as fh:
            json.dump(report, fh, indent=2)
    return "\n".join(out) + "\n"


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise CommandError(f"Error executing command: invalid IP address specified: {text}") from None


def ipam_release(args: argparse.Namespace, store: Datastore) -> str:
    if not args.ip:
        raise CommandError("Invalid option: 'calicoctl ipam release' needs --ip=<IP>")
    ip = _parse_ip(args.ip)
    if IPAM(store).release_ips([ip]):
        raise CommandError(f"IP address {ip} is not assigned")
    return f"Successfully released IP address {ip}\n"


def ipam_configure(args: argparse.Namespace, store: Datastore) -> str:
    ipam = IPAM(store)
    cfg = ipam.config()
    if args.strictaffinity is not None:
        if args.strictaffinity.lower() not in ("true", "false"):
            raise CommandError(f"invalid value for --strictaffinity: {args.strictaffinity!r} (true or false)")
        cfg.strict_affinity = args.strictaffinity.lower() == "true"
    if args.max_blocks_per_host is not None:
        cfg.max_blocks_per_host = args.max_blocks_per_host
    try:
        ipam.set_config(IPAMConfig(cfg.strict_affinity, cfg.auto_allocate_blocks, cfg.max_blocks_per_host))
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    return ""


# -- resources ----------------------------------------------------------------------


def _manager(name: str, verb: str = "get") -> kinds.Manager:
    manager = kinds.by_name().get(name.lower())
    if manager is None:
        what = "get resources" if verb == "get" else "execute command"
        raise CommandError(f"Failed to {what}: resource type '{name}' is not supported ({', '.join(kinds.supported())})")
    return manager


def get(args: argparse.Namespace, store: Datastore) -> str:
    manager = _manager(args.kind)
    kind = manager.kind.kind
    namespaced = manager.kind.namespaced
    namespace = None if args.all_namespaces or not namespaced else (args.namespace or "default")
    res = manager.resources(store)
    if args.names:
        items = [obj for n in args.names if (obj := res.get(n, namespace or "default")) is not None]
        if not items:
            raise CommandError(f"Failed to get resources: resource does not exist: {kind}({', '.join(args.names)})")
        document: Any = output.ordered(items[0]) if len(items) == 1 else [output.ordered(i) for i in items]
    else:
        items = res.list(namespace)
        document = output.as_list(kind, items, store.revision())
    fmt = args.output
    if fmt in ("yaml", "yml"):
        return output.to_yaml(document)
    if fmt == "json":
        return output.to_json(document)
    if fmt not in ("ps", "wide"):
        raise CommandError(f"unrecognized output format '{fmt}'")
    heads = list(manager.wide_headings if fmt == "wide" else manager.headings)
    if namespaced and (args.all_namespaces or args.namespace):
        heads = ["NAMESPACE", *heads]
    rows = []
    columns = manager.columns_for(store)
    for obj in items:
        cells = {"NAMESPACE": obj["metadata"].get("namespace", ""), **columns(obj)}
        rows.append([cells.get(h, "") for h in heads])
    return tables.ps_table(heads, rows)


_DONE = {"create": "created", "apply": "applied", "replace": "replaced", "delete": "deleted"}


def _documents(args: argparse.Namespace) -> list[dict[str, Any]]:
    action = args.command
    if args.filename is None:
        if action != "delete" or not args.kind or not args.names:
            raise CommandError(f"Invalid option: 'calicoctl {action}' needs -f <FILENAME>")
        manager = _manager(args.kind, action)
        namespace = (args.namespace or "default") if manager.kind.namespaced else None
        return [
            {"kind": manager.kind.kind, "metadata": {"name": n, **({"namespace": namespace} if namespace else {})}}
            for n in args.names
        ]
    try:
        text = sys.stdin.read() if args.filename == "-" else open(args.filename).read()  # noqa: SIM115
    except OSError as exc:
        raise CommandError(f"Failed to execute command: {exc.strerror}: {args.filename}") from None
    try:
        return output.load_documents(text, args.filename)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _namespace(doc: dict[str, Any], manager: kinds.Manager, cli_namespace: str | None) -> None:
    """calicoctl's handleNamespace: fill in a namespaced resource's namespace, refuse one that
    contradicts -n, and refuse a namespace on a global resource."""
    meta = doc["metadata"]
    kind = manager.kind.kind
    given = meta.get("namespace") or ""
    if manager.kind.namespaced:
        if given and cli_namespace and given != cli_namespace:
            raise CommandError(
                f"Failed to execute command: resource namespace does not match client namespace. {given} != {cli_namespace}"
            )
        meta["namespace"] = given or cli_namespace or "default"
    elif given:
        raise CommandError(
            f"Failed to execute command: namespace should not be specified for a non-namespaced resource. "
            f"{kind} is not a namespaced resource"
        )
    elif cli_namespace:
        raise CommandError(f"Failed to execute command: {kind} is not namespaced")


def _from_k8s(doc: dict[str, Any], action: str, cli_namespace: str | None) -> dict[str, Any]:
    """A networking.k8s.io/v1 NetworkPolicy as the Calico NetworkPolicy Calico stores for it."""
    raw_meta = doc.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    given = meta.get("namespace") or ""
    if given and cli_namespace and given != cli_namespace:
        raise CommandError(
            f"Failed to execute command: resource namespace does not match client namespace. {given} != {cli_namespace}"
        )
    namespace = given or cli_namespace or "default"
    if action == "delete":
        return {"kind": "NetworkPolicy", "metadata": {"name": k8s.policy_name(str(meta.get("name", ""))), "namespace": namespace}}
    try:
        converted = k8s.to_calico({**doc, "metadata": {**meta, "namespace": namespace}})
    except ValidationError as exc:
        raise CommandError(f"Failed to {action} 'NetworkPolicy' resource: [{exc}]") from None
    converted["_k8s"] = True
    return converted


def modify(args: argparse.Namespace, store: Datastore) -> str:
    action = args.command
    docs = _documents(args)
    managers = kinds.by_kind()
    # Every document is checked before any is written: a bad file changes nothing.
    plan: list[tuple[kinds.Manager, dict[str, Any]]] = []
    for doc in docs:
        from_k8s = k8s.is_k8s_policy(doc)
        if from_k8s:
            doc = _from_k8s(doc, action, args.namespace)
        kind = str(doc.get("kind", ""))
        if doc.get("apiVersion", "projectcalico.org/v3") != "projectcalico.org/v3":
            raise CommandError(
                f"Failed to execute command: apiVersion {doc.get('apiVersion')!r} is not projectcalico.org/v3 "
                f"(or {k8s.API_VERSION} for a NetworkPolicy)"
            )
        manager = managers.get(kind)
        if manager is None:
            raise CommandError(
                f"Failed to execute command: resource type {kind!r} is not supported "
                f"({', '.join(m.kind.kind for m in kinds.MANAGERS)})"
            )
        meta = doc.setdefault("metadata", {})
        if not isinstance(meta, dict) or not meta.get("name"):
            raise CommandError(f"Failed to execute command: error with field metadata.name = '' (a {kind} needs a name)")
        _namespace(doc, manager, None if from_k8s else args.namespace)
        if kind == "NetworkPolicy" and not from_k8s and str(meta["name"]).startswith(K8S_POLICY_PREFIX):
            raise CommandError(
                f"Failed to {action} 'NetworkPolicy' resource: [{meta['name']}: kubernetes network policies must be managed "
                f"through the kubernetes API (here: {action} the {k8s.API_VERSION} NetworkPolicy)]"
            )
        if manager.validate is not None and action != "delete":
            _apply_or_fail(lambda doc=doc, manager=manager: manager.validate(json.loads(json.dumps(doc))), action, kind)
        plan.append((manager, doc))
    for manager, doc in plan:
        kind = manager.kind.kind
        if action == "create":
            _apply_or_fail(lambda doc=doc, m=manager: m.do_create(store, doc), action, kind)
        elif action == "replace":
            _apply_or_fail(lambda doc=doc, m=manager: m.do_update(store, doc), action, kind)
        elif action == "apply":
            meta = doc["metadata"]
            if manager.resources(store).get(meta["name"], meta.get("namespace")) is None:
                _apply_or_fail(lambda doc=doc, m=manager: m.do_create(store, doc), action, kind)
            else:
                _apply_or_fail(lambda doc=doc, m=manager: m.do_update(store, doc), action, kind)
        else:
            _apply_or_fail(lambda doc=doc, m=manager: m.do_delete(store, doc), action, kind)
    kind_text = "', '".join(sorted({m.kind.kind for m, _ in plan}))
    return f"Successfully {_DONE[action]} {len(plan)} '{kind_text}' resource(s)\n"


def _apply_or_fail(fn: Any, action: str, kind: str) -> None:
    try:
        fn()
    except (ResourceError, PoolError, EndpointNameError) as exc:
        raise CommandError(f"Failed to {action} '{kind}' resource: [{exc}]") from None


def label(args: argparse.Namespace, store: Datastore) -> str:
    """calicoctl label KIND NAME key=value [--overwrite] | key --remove: one label, read-modify-write."""
    manager = _manager(args.kind, "label")
    kind_word, name = args.kind, args.name
    namespace = (args.namespace or "default") if manager.kind.namespaced else None
    if args.remove:
        key, value = args.label, ""
    else:
        key, sep, value = args.label.partition("=")
        if not sep:
            raise CommandError(f"invalid label {args.label}")
    outcome = {"done": "set"}

    def change(obj: dict[str, Any]) -> None:
        labels = obj["metadata"].setdefault("labels", {})
        if args.remove:
            if key not in labels:
                raise CommandError(f"cannot remove label of {kind_word} {name}, key {key} does not exist")
            del labels[key]
            outcome["done"] = "removed"
        elif key in labels:
            if not args.overwrite and labels[key] != value:
                raise CommandError(
                    f"failed to update label of {kind_word} {name}, key {key} is already present. "
                    "please use '--overwrite' to set a new value"
                )
            labels[key] = value
            outcome["done"] = "updated"
        else:
            labels[key] = value
        if not labels:
            obj["metadata"].pop("labels")
        if manager.validate is not None:
            manager.validate(json.loads(json.dumps(obj)))

    if manager.resources(store).get(name, namespace) is None:
        raise CommandError(f"{kind_word} {name} not found")
    try:
        manager.resources(store).modify(name, namespace, change)
    except (ValidationError, PoolError) as exc:
        raise CommandError(f"failed to update {kind_word} {name}, label not changed: {exc}") from None
    except ResourceError:
        raise CommandError(f"failed to update {kind_word} {name}, label not changed") from None
    if outcome["done"] == "removed":
        return f"Successfully removed label {key} from {kind_word} {name}\n"
    return f"Successfully {outcome['done']} label {key} on {kind_word} {name}\n"


# -- entry --------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="calicoctl", description="Calico's command-line tool (pycni)")
    top.add_argument("-c", "--config", default=datastorecfg.DEFAULT_CONFIG, help="CalicoAPIConfig file (else the environment)")
    sub = top.add_subparsers(dest="command", required=True)
    ipam = sub.add_parser("ipam", help="IP address management")
    ipam_sub = ipam.add_subparsers(dest="ipam_command", required=True)
    show = ipam_sub.add_parser("show")
    group = show.add_mutually_exclusive_group()
    group.add_argument("--ip")
    group.add_argument("--show-blocks", action="store_true")
    group.add_argument("--show-borrowed", action="store_true")
    group.add_argument("--show-configuration", action="store_true")
    check = ipam_sub.add_parser("check")
    check.add_argument("--show-all-ips", action="store_true")
    check.add_argument("--show-problem-ips", action="store_true")
    check.add_argument("-o", "--output")
    release = ipam_sub.add_parser("release")
    release.add_argument("--ip")
    configure = ipam_sub.add_parser("configure")
    configure.add_argument("--strictaffinity")
    configure.add_argument("--max-blocks-per-host", type=int)
    for p in (show, check, release, configure):
        p.add_argument("-c", "--config", default=argparse.SUPPRESS)
    getp = sub.add_parser("get")
    getp.add_argument("kind")
    getp.add_argument("names", nargs="*")
    getp.add_argument("-o", "--output", default="ps")
    getp.add_argument("-n", "--namespace")
    getp.add_argument("-A", "-a", "--all-namespaces", action="store_true")
    getp.add_argument("-c", "--config", default=argparse.SUPPRESS)
    for action in ("create", "apply", "replace", "delete"):
        p = sub.add_parser(action)
        p.add_argument("-f", "--filename")
        p.add_argument("kind", nargs="?")
        p.add_argument("names", nargs="*")
        p.add_argument("-n", "--namespace")
        p.add_argument("-c", "--config", default=argparse.SUPPRESS)
    labelp = sub.add_parser("label")
    labelp.add_argument("kind")
    labelp.add_argument("name")
    labelp.add_argument("label", help="key=value, or key with --remove")
    labelp.add_argument("--overwrite", action="store_true")
    labelp.add_argument("--remove", action="store_true")
    labelp.add_argument("-n", "--namespace")
    labelp.add_argument("-c", "--config", default=argparse.SUPPRESS)
    nodep = sub.add_parser("node", help="calico-node on this host")
    node_sub = nodep.add_subparsers(dest="node_command", required=True)
    node_sub.add_parser("status", help="calico-node and its BGP peers")
    policyp = node_sub.add_parser("policy", help="the policies and profiles enforced for one workload endpoint")
    policyp.add_argument("endpoint", help="a WorkloadEndpoint's name, or its pod, container ID or host interface")
    policyp.add_argument("-n", "--namespace")
    policyp.add_argument("-c", "--config", default=argparse.SUPPRESS)
    return top


def run(argv: Sequence[str]) -> str:
    args = parser().parse_args(list(argv))
    if args.command == "node" and args.node_command == "status":
        code, text = node_status.status(os.environ)
        if code:
            raise CommandError(text.rstrip("\n"))
        return text
    store = _store(args)
    try:
        if args.command == "ipam":
            handler = {"show": ipam_show, "check": ipam_check, "release": ipam_release, "configure": ipam_configure}
            return handler[args.ipam_command](args, store)
        if args.command == "get":
            return get(args, store)
        if args.command == "label":
            return label(args, store)
        if args.command == "node":
            try:
                return node_policy.report(store, args.endpoint, args.namespace, dict(os.environ))
            except node_policy.EndpointNotFound as exc:
                raise CommandError(f"Failed to execute command: {exc}") from None
        return modify(args, store)
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        text = run(sys.argv[1:] if argv is None else argv)
    except CommandError as exc:
        print(exc, file=sys.stderr)
        return 1
    except (DatastoreError, CNIError, MissingExtra) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
