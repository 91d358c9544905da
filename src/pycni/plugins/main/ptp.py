"""ptp: a veth pair per container, routed point to point through the host.

As the reference: the container end gets the IPAM addresses; its whole subnet is
reached via the gateway, which answers on the host end (the gateway address, /32 or
/128, sits on every host veth); the host routes each container address to its veth.
One difference in how, not what: the container addresses are added with
`noprefixroute` instead of the reference's "add, then delete the kernel's prefix
route" — the routing table is the same, and the prefix route cannot come back when
the interface goes down and up again (it does with the reference).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pycni import gcreport
from pycni.net import attachment, ipconfig, ipmasq, sysctl
from pycni.net.attachment import Address, Attachment, Link, Route, Settings, Sysctl, VethAttachment
from pycni.plugins import checking, delegation, request
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code
from pycni.spec.gc import valid_attachments
from pycni.spec.result import Interface, IPConfig, Result

ABOUT = "CNI ptp plugin (pycni)"
CONTAINER_INDEX = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254  # the reference's host route to each container address


@dataclass
class Conf:
    ip_masq: bool
    mtu: int
    ipam_type: str


def load_conf(call: CmdArgs) -> Conf:
    f = call.conf.fields
    conf = Conf(
        ip_masq=f.get_bool("ipMasq"),
        mtu=f.get_int("mtu", minimum=0, maximum=65535),
        ipam_type=call.conf.ipam.get_str("type"),
    )
    if f.get_str("ipMasqBackend") not in ("", "nftables", "iptables"):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"unknown ipMasqBackend {f.get_str('ipMasqBackend')!r}")
    if not conf.ipam_type:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, 'ptp needs an IPAM plugin: set "ipam": {"type": ...}')
    return conf


def _host_prefix(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(f"{ip}/{ip.max_prefixlen}")


def describe(conf: Conf, call: CmdArgs, result: Result | None, host: Interface | None = None) -> VethAttachment:
    """The attachment for `result` (the IPAM result at ADD, the prevResult at CHECK, None at DEL)."""
    att = Attachment()
    index = result.container_interface(call.ifname, call.netns) if result is not None else None
    container_mac = result.interfaces[index].mac if result is not None and index is not None else ""
    host_link = Link(host.name if host else "", settings=Settings(mtu=conf.mtu, mac=host.mac if host else ""))
    container = Link(call.ifname, ns=call.netns, settings=Settings(mtu=conf.mtu, mac=container_mac))
    att.veth(host_link, container)
    att.sysctls.append(Sysctl(sysctl.conf_key(6, "{link}", "accept_ra"), "0", link=host_link))
    parts = VethAttachment(att, host=host_link, container=container)
    if result is None:
        _rules(conf, call, att, [])
        return parts
    ips = [ip for ip in result.ips if index is None or ip.interface in (None, index)]
    for ip in ips:
        ip.interface = CONTAINER_INDEX
        if ip.gateway is None:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"ptp needs a gateway for {ip.address}: the IPAM result has none")
        key = "net/ipv4/ip_forward" if ip.address.version == 4 else "net/ipv6/conf/all/forwarding"
        att.sysctls.append(Sysctl(key, "1", strict=True))
    ipconfig.add_addresses(att, container, ips, noprefixroute=True)
    for ip in ips:
        assert ip.gateway is not None
        # The gateway is on the link; the rest of the subnet is behind it.
        att.routes.append(Route(_host_prefix(ip.gateway).network, scope=RT_SCOPE_LINK, src=ip.address.ip, link=container))
        att.routes.append(Route(ip.address.network, gw=ip.gateway, src=ip.address.ip, scope=RT_SCOPE_UNIVERSE, link=container))
        att.addresses.append(Address(host_link, _host_prefix(ip.gateway)))
        att.routes.append(Route(_host_prefix(ip.address.ip).network, scope=RT_SCOPE_HOST, link=host_link))
    ipconfig.add_routes(att, container, ips, result.routes)
    _rules(conf, call, att, ips)
    return parts


def _rules(conf: Conf, call: CmdArgs, att: Attachment, ips: list[IPConfig]) -> None:
    if conf.ip_masq:
        att.rules.append(ipmasq.IPMasq(call.conf.name, call.ifname, call.container_id, [ip.address for ip in ips]))


def add(call: CmdArgs) -> Result:
    conf = load_conf(call)
    request.require_netns(call)
    with delegation.ipam_allocation(call, conf.ipam_type) as ipam_result:
        assert ipam_result is not None
        result = Result(cni_version=call.cni_version, ips=ipam_result.ips, routes=ipam_result.routes, dns=ipam_result.dns)
        parts = describe(conf, call, result)
        attachment.apply(parts.att)
    result.interfaces = [
        Interface(parts.host.name, mac=parts.host.actual_mac),
        Interface(parts.container.name, mac=parts.container.actual_mac, sandbox=call.netns),
    ]
    result.dns = request.conf_dns(call) or result.dns
    return result


def check(call: CmdArgs) -> None:
    conf = load_conf(call)
    prev = checking.check_prev_result(call, conf.ipam_type)
    host = next((i for i in prev.interfaces if not i.sandbox), None)
    if host is None:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "the prevResult names no host veth")
    problems = attachment.compare(describe(conf, call, prev.copy(), host).att)
    if problems:
        raise checking.check_failed("ptp", problems)


def delete(call: CmdArgs) -> None:
    conf = load_conf(call)
    try:
        delegation.delegate_ipam(call, conf.ipam_type, "DEL")
    finally:
        attachment.remove(describe(conf, call, None).att)


def gc(call: CmdArgs) -> None:
    conf = load_conf(call)
    for address in ipmasq.gc(call.conf.name, valid_attachments(call.conf.raw)):  # even if ipMasq was turned off since
        gcreport.released("ipMasq rule", address)
    delegation.delegate_ipam(call, conf.ipam_type, "GC")


def status(call: CmdArgs) -> None:
    delegation.delegate_ipam(call, load_conf(call).ipam_type, "STATUS")
