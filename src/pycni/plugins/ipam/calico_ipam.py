"""calico-ipam: Calico's IPAM plugin (blocks, affinities, handles) on pycni's datastore.

ADD assigns one IPv4 address (`assign_ipv4`, default "true") and/or one IPv6 address
(`assign_ipv6`, default "false") to the handle `<network>.<containerID>`, from
`ipv4_pools`/`ipv6_pools` (names or CIDRs) or the pools that select this node, or
the address named by CNI_ARGS `IP=`. DEL releases by handle; when the datastore is
unreachable it journals the release and succeeds. GC releases this node's handles
of the network whose container is no longer valid.
"""

from __future__ import annotations

import ipaddress

from pycni import gcreport
from pycni.calico import cni
from pycni.calico.datastore import Datastore, DatastoreUnavailable, KeyNotFound
from pycni.calico.ipam import IPAM, calico_timestamp
from pycni.calico.model import ATTR_NAMESPACE, ATTR_NODE, ATTR_POD, ATTR_TIMESTAMP, AllocationBlock, IPNetwork
from pycni.calico.pools import Pools
from pycni.skel import CmdArgs
from pycni.spec import ipaddr
from pycni.spec.errors import CNIError, Code
from pycni.spec.gc import valid_attachments
from pycni.spec.result import IPConfig, Result

ABOUT = "Calico CNI IPAM (pycni)"


def _resolve_pools(store: Datastore, names: list[str], version: int, key: str) -> list[IPNetwork]:
    """Calico's ResolvePools: each entry is a CIDR or the name of an IPPool."""
    pools = Pools(store)
    out: list[IPNetwork] = []
    for entry in names:
        try:
            cidr: IPNetwork = ipaddr.network(entry, strict=False)
            pool = next((p for p in pools.all() if p.cidr == cidr), None)
            label = str(cidr)
        except ValueError:
            pool = pools.by_name(entry)
            if pool is None:
                raise CNIError(Code.INVALID_NETWORK_CONFIG, f'ipam.{key}: IP pool "{entry}" does not exist') from None
            cidr, label = pool.cidr, f'"{entry}" ({pool.cidr})'
        if cidr.version != version:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"ipam.{key}: {label} is not an IPv{version} pool")
        if pool is None:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"ipam.{key}: no IP pool has CIDR {label}")
        if pool.disabled:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"ipam.{key}: IP pool {label} is disabled")
        out.append(cidr)
    return out


def _attrs(ctx: cni.Context) -> dict[str, str]:
    attrs = {ATTR_NODE: ctx.nodename, ATTR_TIMESTAMP: calico_timestamp()}
    if ctx.ids.pod:
        attrs.update({ATTR_POD: ctx.ids.pod, ATTR_NAMESPACE: ctx.ids.namespace})
    return attrs


def add(call: CmdArgs) -> Result:
    ctx = cni.context(call, "ipam")
    conf, handle = ctx.conf, ctx.handle_id
    requested = dict(call.cni_args_pairs()).get("IP", "")
    result = Result(cni_version=call.cni_version)
    try:
        with cni.datastore(ctx) as store:
            ipam = IPAM(store, env=call.env, log=ctx.log)
            if requested:
                try:
                    ip = ipaddr.address(requested)
                except ValueError:
                    raise CNIError(
                        Code.INVALID_ENVIRONMENT_VARIABLES, f"CNI_ARGS IP={requested!r} is not an IP address"
                    ) from None
                ctx.log.info("Calico CNI IPAM request IP: %s", ip)
                with cni.ipam_lock(conf.ipam_lock_file):
                    ipam.assign_ip(ip, handle, _attrs(ctx), ctx.nodename)
                result.ips.append(IPConfig(address=ipaddress.ip_interface(f"{ip}/{ip.max_prefixlen}")))
                return result
            num4, num6 = int(conf.ipam.assign_ipv4), int(conf.ipam.assign_ipv6)
            ctx.log.info("Calico CNI IPAM request count IPv4=%d IPv6=%d", num4, num6)
            v4_pools = _resolve_pools(store, conf.ipam.ipv4_pools, 4, "ipv4_pools")
            v6_pools = _resolve_pools(store, conf.ipam.ipv6_pools, 6, "ipv6_pools")
            with cni.ipam_lock(conf.ipam_lock_file):
                v4, v6 = ipam.auto_assign(num4, num6, handle, _attrs(ctx), ctx.nodename, v4_pools, v6_pools)
            got = [*(v4.ips if v4 else []), *(v6.ips if v6 else [])]
            ctx.log.info("Calico CNI IPAM assigned addresses IPv4=%s IPv6=%s", v4.ips if v4 else [], v6.ips if v6 else [])
            for assigned in (v4, v6):
                if assigned is not None and assigned.partial_error():
                    if got:  # one family failed: give back what the other got
                        ipam.release_ips([i.ip for i in got], handle)
                    raise CNIError(
                        Code.EXHAUSTED, f"failed to request IPv{assigned.version} addresses: {assigned.partial_error()}"
                    )
            result.ips.extend(IPConfig(address=ip) for ip in got)
    except DatastoreUnavailable as exc:
        raise cni.unavailable(exc) from None
    return result


def release(ctx: cni.Context, store: Datastore) -> None:
    ipam = IPAM(store, env=ctx.call.env, log=ctx.log)
    for handle in (ctx.handle_id, ctx.ids.legacy_workload_id()):
        try:
            ipam.release_by_handle(handle)
            ctx.log.info("Released address using handle %s", handle)
        except KeyNotFound:
            ctx.log.debug("Asked to release address but it doesn't exist. Ignoring (handle %s)", handle)


def delete(call: CmdArgs) -> None:
    ctx = cni.context(call, "ipam")
    ctx.log.info("Releasing address using handleID %s", ctx.handle_id)
    try:
        with cni.datastore(ctx) as store, cni.ipam_lock(ctx.conf.ipam_lock_file):
            release(ctx, store)
    except DatastoreUnavailable:
        cni.record(ctx, cni.datastore_identity(ctx.conf), [ctx.handle_id, ctx.ids.legacy_workload_id()])


def check(call: CmdArgs) -> None:
    """The addresses of the previous result are still held by this container's handle."""
    ctx = cni.context(call, "ipam")
    try:
        with cni.datastore(ctx) as store:
            held = {str(ip) for ip in IPAM(store).ips_by_handle(ctx.handle_id)}
    except DatastoreUnavailable as exc:
        raise cni.unavailable(exc) from None
    if not held:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"no addresses are allocated to handle {ctx.handle_id}")
    prev = call.prev_result
    for ip in prev.ips if prev is not None else []:
        if str(ip.address.ip) not in held:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{ip.address.ip} is not allocated to handle {ctx.handle_id}")


def gc(call: CmdArgs) -> None:
    ctx = cni.context(call, "ipam")
    valid = {container for container, _ifname in valid_attachments(call.conf.raw)}  # a handle is per container
    prefix = f"{ctx.conf.name}."
    try:
        with cni.datastore(ctx) as store, cni.ipam_lock(ctx.conf.ipam_lock_file):
            ipam = IPAM(store, log=ctx.log)
            blocks = ipam.blocks()
            mine = {
                attr.handle_id
                for block in blocks
                for _, attr in block.allocated()
                if attr.handle_id and attr.secondary.get("node") == ctx.nodename
            }
            mine |= _orphan_handles(ipam, blocks, prefix, ctx.nodename)
            for handle in sorted(mine):
                container = handle[len(prefix) :] if handle.startswith(prefix) else ""
                if container and "." not in container and container not in valid:
                    ctx.log.info("GC: releasing handle %s (container no longer valid)", handle)
                    try:
                        freed = ipam.release_by_handle(handle)
                    except KeyNotFound:
                        continue
                    for ip in freed:
                        gcreport.released("address", str(ip))
    except DatastoreUnavailable as exc:
        raise cni.unavailable(exc) from None


def _orphan_handles(ipam: IPAM, blocks: list[AllocationBlock], prefix: str, node: str) -> set[str]:
    """The network's handles no address refers to, in blocks of this node: what an ADD killed
    between writing its handle and its block leaves (its DEL drops it; GC must, when no DEL
    comes). A handle of another node's ADD points at that node's blocks."""
    referenced = {attr.handle_id for block in blocks for _, attr in block.allocated()}
    affinity = {str(block.cidr): block.affinity for block in blocks}
    return {
        handle_id
        for handle_id, (handle, _kv) in ipam.handles().items()
        if handle_id.startswith(prefix)
        and handle_id not in referenced
        and all(affinity.get(cidr) in (None, f"host:{node}") for cidr in handle.block)
    }


def status(call: CmdArgs) -> None:
    ctx = cni.context(call, "ipam")
    try:
        with cni.datastore(ctx) as store:
            store.get("/calico/ipam/v2/config")
    except DatastoreUnavailable as exc:
        raise CNIError(Code.PLUGIN_NOT_AVAILABLE, f"the Calico datastore is unavailable: {exc}") from None
