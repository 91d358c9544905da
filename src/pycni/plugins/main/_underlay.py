"""What the underlay plugins share: one interface in the container, made there from a host
link (macvlan, ipvlan, vlan), made on its own (dummy, tap) or moved in (host-device), and
configured from the IPAM result as the reference's ConfigureIface does.

A plugin describes its interface once as a `Plan` (the container `Link` with its kind and
creation attributes, the IPAM type, the sysctls it sets once the interface has addresses);
`add`, `check` and `delete` here turn that into an attachment and apply it, compare the
kernel with it, or remove it. Each module keeps its own configuration rules and the
reference's quirks (which of them reads a `mac`, where IPAM is optional).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pycni.net import addrs, attachment, ipconfig, links, netlink, netns, sysctl
from pycni.net.attachment import Attachment, Creation, Link, Settings, Sysctl
from pycni.plugins import checking, delegation, request
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code
from pycni.spec.gc import valid_attachments
from pycni.spec.result import Interface, IPConfig, Result

# Announce the interface's addresses when it comes up (gratuitous ARP, unsolicited NA): a
# macvlan or ipvlan gets a new MAC (or shares one) on a network whose neighbours have caches.
ARP_NOTIFY = sysctl.conf_key(4, "{link}", "arp_notify")
NDISC_NOTIFY = sysctl.conf_key(6, "{link}", "ndisc_notify")


@dataclass
class Plan:
    """The container interface a plugin attaches, and how it is configured."""

    link: Link
    ipam_type: str = ""
    notify: tuple[str, ...] = ()  # sysctls set to "1" on the interface when it gets addresses
    others: list[Link] = field(default_factory=list)  # links the attachment needs too (tap's bridge)
    mtu_checked: bool = False  # CHECK compares the MTU too (vlan's reference does)
    given: Result | None = None  # without IPAM, the addresses ADD configures (a chained prevResult's)


Command = Callable[[CmdArgs], None]


def commands(build: Callable[[CmdArgs], Plan]) -> tuple[Callable[[CmdArgs], Result], Command, Command, Command, Command]:
    """A plugin's ADD, CHECK, DEL, GC and STATUS from the function that builds its plan."""

    def add_command(call: CmdArgs) -> Result:
        return add(call, build(call))

    def check_command(call: CmdArgs) -> None:
        check(call, build(call))

    def delete_command(call: CmdArgs) -> None:
        delete(call, build(call))

    def gc_command(call: CmdArgs) -> None:
        gc(call, build(call).ipam_type)

    def status_command(call: CmdArgs) -> None:
        status(call, build(call).ipam_type)

    return add_command, check_command, delete_command, gc_command, status_command


def sublink(
    call: CmdArgs,
    kind: str,
    master: str,
    in_container: bool,
    mtu: int,
    create: dict[str, Any],
    mac: str = "",
    finish: Callable[[Link], None] | None = None,
) -> Link:
    """CNI_IFNAME in CNI_NETNS, made from `master` (in the host, or in the container) with the
    kind's `create` attributes and a transmit queue length of 0 as the reference makes it (Go
    netlink's LinkAttrs literal)."""
    creation = Creation(parent=master, parent_in_ns=in_container, create={"txqlen": 0, **create}, finish=finish)
    return Link(call.ifname, ns=call.netns, kind=kind, creation=creation, settings=Settings(mtu=mtu, mac=mac))


def describe(plan: Plan, result: Result | None) -> Attachment:
    """The attachment for `result` (whose addresses all belong to the container interface)."""
    att = Attachment()
    for other in plan.others:
        att.add(other)
    att.add(plan.link)
    if result is not None and result.ips:
        for key in plan.notify:
            att.sysctls.append(Sysctl(key, "1", link=plan.link))
        ipconfig.configure(att, plan.link, result.ips, result.routes)
    return att


# -- the master a link is made from ------------------------------------------------


def master_ns(call: CmdArgs, in_container: bool) -> str | None:
    """Where the master is looked up: the host, or the container (linkInContainer)."""
    return call.netns if in_container else None


def default_master(call: CmdArgs, in_container: bool, plugin: str) -> str:
    """The interface of the default route (the reference's master when none is given)."""
    ns = master_ns(call, in_container)
    where = f"the container {call.netns}" if in_container else "the host"
    with netlink.route(ns) as ipr:
        index = addrs.default_route_index(ipr)
        msg = links.by_index(ipr, index) if index else None
    if msg is None:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f'{plugin}: "master" is not set and {where} has no default route to take its interface from',
        )
    return links.name(msg)


def master_mtu(call: CmdArgs, master: str, in_container: bool) -> int:
    """The master's MTU; a missing master is a configuration error naming it."""
    ns = master_ns(call, in_container)
    with netlink.route(ns) as ipr:
        msg = links.get(ipr, master)
    if msg is None:
        where = f"the container {call.netns}" if in_container else "the host"
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"master {master!r} does not exist in {where}", '"master" names it')
    return int(msg.get_attr("IFLA_MTU") or 0)


def resolve_master(call: CmdArgs, master: str, in_container: bool, mtu: int, plugin: str) -> str:
    """The master (by default the interface of the default route), which must exist and whose
    MTU a link made from it may not exceed (the reference's rule, and the kernel's)."""
    master = master or default_master(call, in_container, plugin)
    check_mtu(call, mtu, master, in_container)
    return master


def check_mtu(call: CmdArgs, mtu: int, master: str, in_container: bool) -> None:
    limit = master_mtu(call, master, in_container)
    if mtu > limit:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f'invalid "mtu" {mtu}: must be between 0 and the MTU of master {master} ({limit})',
        )


# -- ADD, CHECK, DEL ---------------------------------------------------------------


def add(call: CmdArgs, plan: Plan) -> Result:
    """Create the interface, then allocate addresses (IPAM, or the plan's `given`: a chained
    prevResult's) and configure them; a failure undoes all of it. The interface comes first, as with the
    reference: a kernel without its link type fails before IPAM allocates anything. The
    result names the one interface (index 0)."""
    request.require_netns(call)
    bare = Attachment(links=[*plan.others, plan.link])
    attachment.apply(bare)
    try:
        with delegation.ipam_allocation(call, plan.ipam_type) as ipam_result:
            source = ipam_result or plan.given
            result = Result(cni_version=call.cni_version)
            if source is not None:
                result.ips = [IPConfig(ip.address, ip.gateway, interface=0) for ip in source.ips]
                result.routes, result.dns = list(source.routes), source.dns
            attachment.apply(describe(plan, result))
    except BaseException:
        attachment.remove(bare)
        raise
    result.interfaces = [Interface(plan.link.name, mac=plan.link.actual_mac, sandbox=call.netns)]
    result.dns = request.conf_dns(call) or result.dns
    return result


def prev_interface(call: CmdArgs, ipam_type: str) -> tuple[Result, Interface, list[IPConfig]]:
    """CHECK's start: IPAM's CHECK, the prevResult, its container interface and that interface's addresses."""
    prev = checking.check_prev_result(call, ipam_type)
    index = prev.container_interface(call.ifname, call.netns)
    assert index is not None  # check_prev_result made sure
    ips = [ip for ip in prev.ips if ip.interface in (None, index)]
    return prev, prev.interfaces[index], ips


def check(call: CmdArgs, plan: Plan) -> None:
    """Compare the container interface, its addresses and routes with the prevResult."""
    prev, interface, ips = prev_interface(call, plan.ipam_type)
    plan.link.settings.mac = interface.mac
    expected = Result(cni_version=prev.cni_version, ips=ips, routes=prev.routes)
    problems = attachment.compare(describe(plan, expected))
    if plan.mtu_checked and plan.link.settings.mtu:
        problems += _mtu_differences(plan.link)
    if problems:
        raise checking.check_failed(call.plugin_type, problems)


def _mtu_differences(link: Link) -> list[str]:
    try:
        with netlink.route(link.ns) as ipr:
            msg = links.get(ipr, link.name)
    except netns.NetNSNotFound:
        return []  # compare() reported it
    actual = int(msg.get_attr("IFLA_MTU") or 0) if msg is not None else link.settings.mtu
    return [] if actual == link.settings.mtu else [f"{link.where()} has MTU {actual}, expected {link.settings.mtu}"]


def delete(call: CmdArgs, plan: Plan) -> None:
    """Release the addresses, then remove the interface; what is gone already is fine."""
    try:
        delegation.delegate_ipam(call, plan.ipam_type, "DEL")
    finally:
        if call.netns:
            attachment.remove(describe(plan, None))


def gc(call: CmdArgs, ipam_type: str) -> None:
    """Nothing of ours outlives a container (its interface goes with its namespace): GC is IPAM's."""
    valid_attachments(call.conf.raw)  # a malformed list is refused all the same
    delegation.delegate_ipam(call, ipam_type, "GC")


def status(call: CmdArgs, ipam_type: str) -> None:
    delegation.delegate_ipam(call, ipam_type, "STATUS")
