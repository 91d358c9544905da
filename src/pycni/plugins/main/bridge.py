"""bridge: a veth pair per container, its host end a port of a Linux bridge.

A drop-in for the reference plugin: every option, the same result (interfaces in
the order bridge, host veth, container interface) and the same kernel state. The
attachment is described once (`describe`): ADD applies it, CHECK compares the kernel
with it, DEL removes it. The bridge, its gateway address and ip_forward are shared
and never removed. Beyond the reference: ipMasq and macspoofchk rules go on DEL even
when the namespace is already gone, GC (spec 1.1.0) removes stale ones, and CHECK
tolerates what later plugins change (addresses, routes, MTU, a MAC set by tuning).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from pycni import gcreport
from pycni.net import attachment, ipconfig, ipmasq, links, netlink, spoofcheck, sysctl
from pycni.net.attachment import Address, Attachment, BridgePort, Creation, Link, Settings, Sysctl, VethAttachment
from pycni.plugins import checking, delegation, request
from pycni.skel import CmdArgs
from pycni.spec import names
from pycni.spec.config import Fields
from pycni.spec.errors import CNIError, Code
from pycni.spec.gc import valid_attachments
from pycni.spec.result import Interface, IPConfig, Result, Route

ABOUT = "CNI bridge plugin (pycni)"
DEFAULT_BRIDGE = "cni0"
CONTAINER_INDEX = 2  # the container interface's position in the result


@dataclass
class Conf:
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    mtu: int = 0
    hairpin: bool = False
    promisc: bool = False
    vlan: int = 0
    trunk: list[int] = field(default_factory=list)
    preserve_default_vlan: bool = True
    macspoofchk: bool = False
    enable_dad: bool = False
    disable_container_interface: bool = False
    port_isolation: bool = False
    mac: str = ""
    ipam_type: str = ""

    @property
    def vlan_filtering(self) -> bool:
        return bool(self.vlan or self.trunk)


def _trunk(fields: Fields) -> list[int]:
    """The `vlanTrunk` entries ({minID, maxID} ranges and {id}s) as a sorted list of VLAN IDs."""
    vids: set[int] = set()
    for i, item in enumerate(fields.get_list("vlanTrunk")):
        if not isinstance(item, dict):
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"vlanTrunk[{i}] must be an object with minID/maxID or id")
        entry = Fields(item, f"vlanTrunk[{i}]")
        low, high = ("minID" in entry), ("maxID" in entry)
        if low != high:
            missing = "maxID" if low else "minID"
            msg = f"vlanTrunk[{i}]: minID and maxID must be set together, {missing} is missing"
            raise CNIError(Code.INVALID_NETWORK_CONFIG, msg)
        if low:
            first = entry.get_int("minID", minimum=1, maximum=4094)
            last = entry.get_int("maxID", minimum=1, maximum=4094)
            if last < first:
                raise CNIError(Code.INVALID_NETWORK_CONFIG, f"vlanTrunk[{i}]: minID {first} is greater than maxID {last}")
            vids.update(range(first, last + 1))
        if "id" in entry:
            vids.add(entry.get_int("id", minimum=1, maximum=4094))
    return sorted(vids)


def load_conf(call: CmdArgs) -> Conf:
    f = call.conf.fields
    conf = Conf(
        bridge=f.get_str("bridge") or DEFAULT_BRIDGE,
        is_gateway=f.get_bool("isGateway"),
        is_default_gateway=f.get_bool("isDefaultGateway"),
        force_address=f.get_bool("forceAddress"),
        ip_masq=f.get_bool("ipMasq"),
        mtu=f.get_int("mtu", minimum=0, maximum=65535),
        hairpin=f.get_bool("hairpinMode"),
        promisc=f.get_bool("promiscMode"),
        vlan=f.get_int("vlan", minimum=0, maximum=4094),
        trunk=_trunk(f),
        preserve_default_vlan=f.get_bool("preserveDefaultVlan", True),
        macspoofchk=f.get_bool("macspoofchk"),
        enable_dad=f.get_bool("enabledad"),
        disable_container_interface=f.get_bool("disableContainerInterface"),
        port_isolation=f.get_bool("portIsolation"),
        mac=request.requested_mac(call),
        ipam_type=call.conf.ipam.get_str("type"),
    )
    problem = names.interface_name_problem(conf.bridge)
    if problem:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f'invalid "bridge": {problem}')
    backend = f.get_str("ipMasqBackend")
    if backend not in ("", "nftables", "iptables"):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"unknown ipMasqBackend {backend!r}: expected nftables or iptables")
    if conf.vlan and conf.trunk:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "cannot set vlan and vlanTrunk at the same time")
    if conf.is_default_gateway:
        conf.is_gateway = True
    if conf.hairpin and conf.promisc:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "cannot set hairpin mode and promiscuous mode at the same time")
    if conf.ipam_type and conf.disable_container_interface:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "cannot use IPAM when disableContainerInterface is set")
    return conf


def gateways(ips: list[IPConfig], routes: list[Route], conf: Conf) -> list[IPConfig]:
    """The reference's calcGateways: every address belongs to the container interface; with
    isGateway each gets a gateway (the subnet's first address unless IPAM chose one) and with
    isDefaultGateway each family a default route through it (appended to `routes`).
    Returns the bridge's addresses."""
    bridge_addresses: list[IPConfig] = []
    for ip in ips:
        ip.interface = CONTAINER_INDEX
        if ip.gateway is None and conf.is_gateway:
            ip.gateway = ip.address.network.network_address + 1
        if conf.is_default_gateway:
            default = ipaddress.ip_interface("0.0.0.0/0" if ip.address.version == 4 else "::/0")
            if not any(r.gw is not None and r.dst == default for r in routes):
                routes.append(Route(dst=default, gw=ip.gateway))
        if conf.is_gateway and ip.gateway is not None:
            gw = ipaddress.ip_interface(f"{ip.gateway}/{ip.address.network.prefixlen}")
            bridge_addresses.append(IPConfig(address=gw))
    return bridge_addresses


@dataclass
class BridgeAttachment(VethAttachment):
    """The veth pair's attachment, with the bridge (and VLAN gateway) the result names too."""

    bridge: Link
    vlan_gateway: Link | None = None


def describe(conf: Conf, call: CmdArgs, result: Result | None, host: Interface | None = None) -> BridgeAttachment:
    """The attachment for `result` (the IPAM result at ADD, the prevResult at CHECK, None at DEL)."""
    att = Attachment()
    bridge = att.add(
        Link(
            conf.bridge,
            kind="bridge",
            shared=True,
            creation=Creation(create={"br_vlan_filtering": 1} if conf.vlan_filtering else {}),
            settings=Settings(mtu=conf.mtu, promisc=conf.promisc),
        )
    )
    att.sysctls.append(Sysctl(sysctl.conf_key(6, "{link}", "accept_ra"), "0", link=bridge))
    flags = {"mode": int(conf.hairpin)}
    if conf.port_isolation:
        flags["isolated"] = 1
    host_link = Link(
        host.name if host else "",
        settings=Settings(mtu=conf.mtu, mac=host.mac if host else "", wait_up=not conf.disable_container_interface),
        port=BridgePort(
            bridge,
            flags,
            vlans=[(conf.vlan, True, True)] if conf.vlan else [(v, False, False) for v in conf.trunk],
            drop_default_vlan=conf.vlan_filtering and not conf.preserve_default_vlan,
        ),
    )
    index = result.container_interface(call.ifname, call.netns) if result is not None else None
    container_mac = result.interfaces[index].mac if result is not None and index is not None else conf.mac
    container = Link(
        call.ifname, ns=call.netns, settings=Settings(mtu=conf.mtu, mac=container_mac, up=not conf.disable_container_interface)
    )
    att.veth(host_link, container)
    att.sysctls.append(Sysctl(sysctl.conf_key(6, "{link}", "accept_ra"), "0", link=host_link))
    parts = BridgeAttachment(att, host=host_link, container=container, bridge=bridge)
    if result is None:  # DEL: the links and rules, found by name
        _rules(conf, call, parts, [])
        return parts
    # At CHECK the prevResult may also hold other interfaces' addresses (a chain).
    ips = [ip for ip in result.ips if index is None or ip.interface in (None, index)]
    bridge_addresses = gateways(ips, result.routes, conf)
    if conf.ipam_type:
        _container_sysctls(conf, att, container)
        ipconfig.configure(att, container, ips, result.routes)
    gateway_link = bridge
    if conf.vlan and bridge_addresses:
        gateway_link = parts.vlan_gateway = _vlan_gateway(conf, att, bridge)
    for gw in bridge_addresses:
        gateway_link.settings.pin_mac = True
        att.addresses.append(Address(gateway_link, gw.address, shared=True, exclusive=True, force=conf.force_address))
        key = "net/ipv4/ip_forward" if gw.address.version == 4 else "net/ipv6/conf/all/forwarding"
        att.sysctls.append(Sysctl(key, "1", strict=True))
    _rules(conf, call, parts, ips)
    return parts


def _container_sysctls(conf: Conf, att: Attachment, container: Link) -> None:
    """As the reference: DAD off unless enabledad (hairpin and promiscuous bridges echo the
    probes back), gratuitous ARP when the interface comes up."""
    if conf.enable_dad:
        att.sysctls.append(Sysctl(sysctl.conf_key(6, "{link}", "enhanced_dad"), "1", link=container))
        att.sysctls.append(Sysctl(sysctl.conf_key(6, "{link}", "accept_dad"), "1", link=container))
    else:
        att.sysctls.append(Sysctl(sysctl.conf_key(6, "{link}", "accept_dad"), "0", link=container))
    att.sysctls.append(Sysctl(sysctl.conf_key(4, "{link}", "arp_notify"), "1", link=container))


def _vlan_gateway(conf: Conf, att: Attachment, bridge: Link) -> Link:
    """The reference's "<bridge>.<vlan>" veth whose peer is an access port of the VLAN: it
    carries the gateway address of a VLAN network, shared by every container on it."""
    gateway = Link(f"{conf.bridge}.{conf.vlan}", shared=True, settings=Settings(mtu=conf.mtu))
    port = Link(
        "",
        shared=True,
        settings=Settings(mtu=conf.mtu),
        port=BridgePort(bridge, vlans=[(conf.vlan, True, True)], drop_default_vlan=not conf.preserve_default_vlan),
    )
    att.veth(gateway, port)  # when the pair exists already, its port is left as it is
    return gateway


def _rules(conf: Conf, call: CmdArgs, parts: BridgeAttachment, ips: list[IPConfig]) -> None:
    if conf.ip_masq and conf.ipam_type:
        parts.att.rules.append(ipmasq.IPMasq(call.conf.name, call.ifname, call.container_id, [ip.address for ip in ips]))
    if conf.macspoofchk:
        host, container = parts.host, parts.container
        parts.att.rules.append(
            spoofcheck.SpoofCheck(lambda: host.name, lambda: container.actual_mac, call.container_id, call.ifname)
        )


# -- ADD -------------------------------------------------------------------------


def add(call: CmdArgs) -> Result:
    conf = load_conf(call)
    request.require_netns(call)
    with delegation.ipam_allocation(call, conf.ipam_type) as ipam_result:
        result = Result(cni_version=call.cni_version)
        if ipam_result is not None:
            result.ips, result.routes, result.dns = ipam_result.ips, ipam_result.routes, ipam_result.dns
        parts = describe(conf, call, result)
        attachment.apply(parts.att)
    result.interfaces = [
        Interface(parts.bridge.name, mac=parts.bridge.actual_mac),
        Interface(parts.host.name, mac=parts.host.actual_mac),
        Interface(parts.container.name, mac=parts.container.actual_mac, sandbox=call.netns),
    ]
    if parts.vlan_gateway is not None:
        result.interfaces.append(Interface(parts.vlan_gateway.name, mac=parts.vlan_gateway.actual_mac))
    result.dns = request.conf_dns(call) or result.dns
    return result


# -- CHECK -----------------------------------------------------------------------


def check(call: CmdArgs) -> None:
    conf = load_conf(call)
    prev = checking.check_prev_result(call, conf.ipam_type)
    others = (conf.bridge, f"{conf.bridge}.{conf.vlan}")
    host = next((i for i in prev.interfaces if not i.sandbox and i.name not in others), None)
    if host is None:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"the prevResult names no veth for bridge {conf.bridge}")
    parts = describe(conf, call, prev.copy(), host)
    bridge_mac = next((i.mac for i in prev.interfaces if i.name == conf.bridge and not i.sandbox), "")
    if conf.is_gateway:  # only a bridge with an address has its MAC pinned; otherwise it follows the ports
        parts.bridge.settings.mac = bridge_mac
    problems = attachment.compare(parts.att)
    if problems:
        raise checking.check_failed("bridge", problems)


# -- DEL -------------------------------------------------------------------------


def delete(call: CmdArgs) -> None:
    conf = load_conf(call)
    parts = describe(conf, call, None)
    try:
        attachment.remove(parts.att)
    finally:
        delegation.delegate_ipam(call, conf.ipam_type, "DEL")


# -- GC, STATUS ------------------------------------------------------------------


def gc(call: CmdArgs) -> None:
    """Remove the network's ipMasq rules of attachments that are not valid, and every
    macspoofchk rule whose host veth is gone (its container is gone; the rules name no
    network, so one that still has its veth is left to its own network's DEL), whatever
    the configuration says now; then forward GC to the IPAM plugin."""
    conf = load_conf(call)
    for address in ipmasq.gc(call.conf.name, valid_attachments(call.conf.raw)):
        gcreport.released("ipMasq rule", address)
    with netlink.route(None) as ipr:
        for veth in spoofcheck.gc(lambda _ref, iface: not iface or links.get(ipr, iface) is None):
            gcreport.released("macspoofchk rule", veth)
    delegation.delegate_ipam(call, conf.ipam_type, "GC")


def status(call: CmdArgs) -> None:
    conf = load_conf(call)
    delegation.delegate_ipam(call, conf.ipam_type, "STATUS")
