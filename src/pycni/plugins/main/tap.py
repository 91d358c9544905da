"""tap: a persistent tap device in the container, for a virtual machine running there.

As the upstream plugin (newer than Debian's 1.1.1): `multiQueue`, `mtu`, `mac` (the
configuration's, CNI_ARGS MAC, or the `mac` capability), `owner` and `group` (the user
and group allowed to open it), `selinuxContext` (the label it is created under), `bridge`
(a bridge in the container it becomes a port of) and, optionally, `ipam`. The device gets
the reference's tun flags: with both owner and group it is made as vishvananda/netlink
makes it (vnet_hdr on, packet information unless multi-queue), otherwise as `ip tuntap`
does (neither). Beyond the reference: `mtu` and `mac` are applied in both cases (the
reference drops them when owner and group are both set), CHECK compares the device (its
kind, MAC, state and bridge) and not only the addresses, DEL removes only a tun device.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycni.net import tuntap
from pycni.net.attachment import BridgePort, Creation, Link, Settings
from pycni.plugins import request
from pycni.plugins.main import _underlay as underlay
from pycni.skel import CmdArgs
from pycni.spec import names
from pycni.spec.errors import CNIError, Code

ABOUT = "CNI tap plugin (pycni)"
MAX_ID = 2**32 - 1


@dataclass
class Conf:
    multi_queue: bool
    mtu: int
    mac: str
    owner: int | None
    group: int | None
    selinux_context: str
    bridge: str
    ipam_type: str

    def flags(self) -> int:
        if self.owner is not None and self.group is not None:
            flags = tuntap.IFF_TAP | tuntap.IFF_VNET_HDR
            return flags | tuntap.IFF_MULTI_QUEUE | tuntap.IFF_NO_PI if self.multi_queue else flags
        flags = tuntap.IFF_TAP | tuntap.IFF_NO_PI
        return flags | tuntap.IFF_MULTI_QUEUE if self.multi_queue else flags


def load_conf(call: CmdArgs) -> Conf:
    f = call.conf.fields
    conf = Conf(
        multi_queue=f.get_bool("multiQueue"),
        mtu=f.get_int("mtu", minimum=0, maximum=65535),
        mac=request.requested_mac(call, args_cni=False, conf_key=True) if call.command in ("ADD", "CHECK") else "",
        owner=f.get_int("owner", minimum=0, maximum=MAX_ID) if "owner" in f else None,
        group=f.get_int("group", minimum=0, maximum=MAX_ID) if "group" in f else None,
        selinux_context=f.get_str("selinuxContext"),
        bridge=f.get_str("bridge"),
        ipam_type=call.conf.ipam.get_str("type"),
    )
    problem = names.interface_name_problem(conf.bridge) if conf.bridge else ""
    if problem:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f'invalid "bridge": {problem}')
    return conf


def plan(call: CmdArgs) -> underlay.Plan:
    conf = load_conf(call)

    def make(link: Link) -> None:
        assert link.ns is not None
        if conf.selinux_context:
            tuntap.create_tap_labelled(link.ns, link.name, conf.multi_queue, conf.owner, conf.group, conf.selinux_context)
        else:
            tuntap.create_tap(link.ns, link.name, conf.flags(), conf.owner, conf.group)

    # The bridge is the container's (a VM's network inside the pod), used as it is: never created or brought up.
    bridge = Link(conf.bridge, ns=call.netns, kind="", shared=True, settings=Settings(up=False)) if conf.bridge else None
    link = Link(
        call.ifname,
        ns=call.netns,
        kind="tun",
        creation=Creation(maker=make),
        settings=Settings(mtu=conf.mtu, mac=conf.mac),
        port=BridgePort(bridge) if bridge is not None else None,
    )
    return underlay.Plan(link, conf.ipam_type, notify=(underlay.ARP_NOTIFY,), others=[bridge] if bridge else [])


add, check, delete, gc, status = underlay.commands(plan)
