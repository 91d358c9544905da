"""host-local IPAM: addresses from range sets, recorded in files on this host.

A drop-in for the reference plugin: the same configuration, result and on-disk store
(see `hostlocal.store`), so Go's host-local and this one can share a data directory,
even at the same time. Beyond the reference: configuration errors are code 7 naming
the range; a requested address is checked before anything is allocated; an ADD that
fails gives back exactly what it took; CHECK verifies the prevResult's addresses are
still held by the attachment; GC (spec 1.1.0) releases every address whose attachment
is no longer valid (the reference leaks them, e.g. after a reboot); STATUS reports a
range set with no free address as code 50.
"""

from __future__ import annotations

import contextlib

from pycni import faults, gcreport
from pycni.plugins.ipam.hostlocal import allocator
from pycni.plugins.ipam.hostlocal.config import Config, Requested, load
from pycni.plugins.ipam.hostlocal.store import Store
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code
from pycni.spec.gc import valid_attachments
from pycni.spec.result import DNS, IPAddress, Result

ABOUT = "CNI host-local IPAM plugin (pycni)"


def _match_requests(config: Config) -> list[Requested | None]:
    """The requested address for each range set (the first that falls in it); a request
    outside every range set, or for a gateway, fails before anything is allocated."""
    per_set: list[Requested | None] = [None] * len(config.range_sets)
    for req in config.requested:
        index = next((i for i, s in enumerate(config.range_sets) if s.contains(req.ip) and per_set[i] is None), None)
        if index is None:
            if any(s.contains(req.ip) for s in config.range_sets):
                raise CNIError(req.code, f"failed to allocate all requested IPs: {req.ip} ({req.source}): one per range set")
            sets = "; ".join(str(s) for s in config.range_sets)
            raise CNIError(req.code, f"requested IP {req.ip} ({req.source}) is not in any range set: {sets}")
        gateway = config.range_sets[index].range_for(req.ip)
        if gateway is not None and gateway.gateway == req.ip:
            raise CNIError(req.code, f"requested ip {req.ip} ({req.source}) is subnet's gateway")
        per_set[index] = req
    return per_set


def parse_resolv_conf(path: str) -> DNS:
    """nameserver, domain, search and options lines of a resolv.conf, as the reference reads it."""
    dns = DNS()
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise CNIError(Code.IO_FAILURE, f"cannot read resolvConf {path}: {exc.strerror}") from None
    for line in lines:
        fields = line.strip().split()
        if len(fields) < 2 or fields[0][0] in "#;":
            continue
        if fields[0] == "nameserver":
            dns.nameservers.append(fields[1])
        elif fields[0] == "domain":
            dns.domain = fields[1]
        elif fields[0] == "search":
            dns.search += fields[1:]
        elif fields[0] == "options":
            dns.options += fields[1:]
    return dns


def add(call: CmdArgs) -> Result:
    config = load(call)
    requests = _match_requests(config)
    result = Result(cni_version=call.cni_version, routes=config.routes)
    if config.resolv_conf:
        result.dns = parse_resolv_conf(config.resolv_conf)
    taken: list[IPAddress] = []
    with Store(config.data_dir, config.network, indexed=call.mode.via_agent) as store:
        positions = [store.last_reserved(index) for index in range(len(config.range_sets))]
        try:
            for index, range_set in enumerate(config.range_sets):
                got = allocator.allocate(store, range_set, index, call.container_id, call.ifname, requests[index])
                taken.append(got.address.ip)
                result.ips.append(got)
                faults.checkpoint("address-allocated")
        except BaseException as exc:
            # Give back every address and round-robin position: the store is as it was.
            for ip in taken:
                store.release(ip)
            for index, position in enumerate(positions[: len(taken)]):
                store.restore_last_reserved(index, position)
            if isinstance(exc, CNIError):
                exc.msg = f"failed to allocate for range {len(taken)}: {exc.msg}"
            raise
    return result


def check(call: CmdArgs) -> None:
    config = load(call)
    with Store(config.data_dir, config.network, create=False, indexed=call.mode.via_agent) as store:
        held = store.held_by(call.container_id, call.ifname)
    if not held:
        raise CNIError(Code.UNKNOWN_CONTAINER, f"Failed to find address added by container {call.container_id}")
    prev = call.prev_result
    for ip in prev.ips if prev is not None else []:
        ours = any(s.contains(ip.address.ip) for s in config.range_sets)
        if ours and ip.address.ip not in held:
            raise CNIError(Code.UNKNOWN_CONTAINER, f"{ip.address.ip} is not allocated to {call.container_id}/{call.ifname}")


def delete(call: CmdArgs) -> None:
    config = load(call, strict=False)
    with Store(config.data_dir, config.network, create=False, indexed=call.mode.via_agent) as store:
        store.release_attachment(call.container_id, call.ifname)


def gc(call: CmdArgs) -> None:
    config = load(call, strict=False)
    valid = valid_attachments(call.conf.raw)
    valid_ids = {container_id for container_id, _ in valid}
    with Store(config.data_dir, config.network, create=False) as store:
        for ip, holder in store.allocations().items():
            keep = holder.container_id in valid_ids if holder.ifname is None else (holder.container_id, holder.ifname) in valid
            if not keep:
                call.log.info("GC: releasing %s of %s/%s", ip, holder.container_id, holder.ifname)
                with contextlib.suppress(CNIError):
                    store.release(ip)
                    gcreport.released("address", str(ip))


def status(call: CmdArgs) -> None:
    config = load(call)
    with Store(config.data_dir, config.network, create=False) as store:
        for range_set in config.range_sets:
            if allocator.free(store, range_set) <= 0:
                raise CNIError(Code.PLUGIN_NOT_AVAILABLE, f"no IP addresses available in range set: {range_set}")
