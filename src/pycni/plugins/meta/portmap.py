"""portmap: forwards host ports to the container (the `portMappings` capability).

A chained plugin: the container's addresses come from prevResult. nftables by
default (one transaction per ADD and per DEL, sets and maps so the cost does not
grow with the number of containers; see `_portmap_nft`), iptables on request or
when the configuration uses iptables syntax (the reference's layout; see
`_portmap_iptables`). Better than the reference: a host port already mapped by
another container is refused (naming both) instead of silently taken over; CHECK
checks the address families the container has; GC removes stale mappings.
"""

from __future__ import annotations

import logging

from pycni.net import sysctl
from pycni.plugins.meta import _chained
from pycni.plugins.meta import _portmap_conf as conf_mod
from pycni.plugins.meta import _portmap_nft as nftb
from pycni.skel import CmdArgs
from pycni.spec import gokeys
from pycni.spec.errors import CNIError
from pycni.spec.result import IPInterface, Result

ABOUT = "CNI portmap plugin (pycni)"
log = logging.getLogger("pycni.plugin.portmap")
LOCK = "portmap"


def _enable_localnet_routing(conf: conf_mod.PortMapConf, addresses: dict[int, IPInterface]) -> dict[int, int | None]:
    """Find the host interface toward the container; with SNAT, let 127/8 be routed out of it
    (route_localnet), as the reference does, so the host's loopback reaches the container."""
    indexes: dict[int, int | None] = {}
    for family, address in addresses.items():
        found = nftb.host_interface(address)
        indexes[family] = found[0] if found else None
        if found and family == 4 and conf.snat and conf.mappings_for(4):
            sysctl.write(sysctl.conf_key(4, found[1], "route_localnet"), "1")
    return indexes


def _forget_udp_flows(conf: conf_mod.PortMapConf, families: list[int]) -> None:
    """Drop conntrack entries of the mapped UDP ports: a stale flow would blackhole the new mapping.
    Informative only, as in the reference."""
    udp = [(family, m) for family in families for m in conf.mappings_for(family) if m.protocol == "udp"]
    if not udp:
        return
    import subprocess  # here: a call that maps only TCP ports does without it

    for family, m in udp:
        argv = ["conntrack", "-D", "-f", "ipv4" if family == 4 else "ipv6", "-p", "udp", "--orig-port-dst", str(m.host_port)]
        try:
            subprocess.run(argv, capture_output=True, check=False, timeout=10)
        except (OSError, subprocess.SubprocessError) as exc:
            log.info("could not flush UDP conntrack entries for port %s: %s", m.host_port, exc)


def add(call: CmdArgs) -> Result:
    prev = _chained.require_prev_result(call, "portmap")
    conf = conf_mod.parse(call)
    if not conf.mappings:
        return prev
    addresses = _chained.require_container_addresses(prev, call.ifname, "portmap")
    families = [f for f in sorted(addresses) if conf.mappings_for(f)]
    if conf.backend == "iptables":
        from pycni.plugins.meta import _portmap_iptables as ipt  # the reference's layout: only on request

        with _chained.host_lock(LOCK + "-iptables"):
            ipt.add(conf, call.conf.name, call.container_id, call.ifname, addresses)
        _enable_localnet_routing(conf, addresses)
    else:
        indexes = _enable_localnet_routing(conf, addresses)
        with _chained.host_lock(LOCK):
            nftb.add(conf, call.conf.name, call.container_id, call.ifname, _chained.call_tag(call), addresses, indexes)
    _forget_udp_flows(conf, families)
    return prev


def check(call: CmdArgs) -> None:
    prev = _chained.require_prev_result(call, "portmap")
    conf = conf_mod.parse(call)
    if not conf.mappings:
        return
    # Only the families the container has: the reference checks both and fails on IPv4-only containers.
    addresses = _chained.require_container_addresses(prev, call.ifname, "portmap")
    if conf.backend == "iptables":
        from pycni.plugins.meta import _portmap_iptables as ipt

        ipt.check(conf, call.conf.name, call.container_id, call.ifname, addresses)
    else:
        indexes = {family: found[0] if (found := nftb.host_interface(a)) else None for family, a in addresses.items()}
        nftb.check(conf, call.conf.name, _chained.call_tag(call), addresses, indexes)


def delete(call: CmdArgs) -> None:
    try:
        conf = conf_mod.parse(call)
    except CNIError as err:
        # DEL must not be blocked by a configuration that cannot be read: remove what is ours anyway.
        log.warning("portmap DEL with an invalid configuration (%s): removing this attachment's entries", err)
        conf = conf_mod.PortMapConf()
    if conf.backend == "iptables":
        from pycni.plugins.meta import _portmap_iptables as ipt

        with _chained.host_lock(LOCK + "-iptables"):
            ipt.delete(call.conf.name, call.container_id, call.ifname)
        return
    with _chained.host_lock(LOCK):
        given = nftb.entries_of_mappings(conf, call.conf.name)
        nftb.delete(call.conf.name, call.container_id, call.ifname, _chained.call_tag(call), given)


def gc(call: CmdArgs) -> None:
    backend = call.conf.fields.get_str("backend")
    with _chained.host_lock(LOCK):
        nftb.gc(call.conf.name, _chained.valid_tags(call))
    if backend == "iptables":
        from pycni.plugins.meta import _portmap_iptables as ipt

        raw = call.conf.fields.raw("cni.dev/valid-attachments") or []
        valid = {(gokeys.get(a, "containerID", ""), gokeys.get(a, "ifname", "")) for a in raw if isinstance(a, dict)}
        with _chained.host_lock(LOCK + "-iptables"):
            ipt.gc(call.conf.name, valid)
