"""vlan: an 802.1Q VLAN interface of a host interface (the master), in the container.

A drop-in for the reference plugin: `master` (required), `vlanId` (0 to 4094), `mtu` (at
most the master's), `linkInContainer` and `ipam` (required). CHECK also compares the VLAN
ID and, when the configuration sets one, the MTU, as the reference does. A kernel without
802.1Q support fails ADD with code 101 naming it (CONFIG_VLAN_8021Q), before any address
is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycni.plugins.main import _underlay as underlay
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code

ABOUT = "CNI vlan plugin (pycni)"
MAX_VLAN_ID = 4094


@dataclass
class Conf:
    master: str
    vlan_id: int
    mtu: int
    in_container: bool
    ipam_type: str


def load_conf(call: CmdArgs) -> Conf:
    """The configuration; ADD and CHECK also check the MTU against the master's."""
    f = call.conf.fields
    conf = Conf(
        master=f.get_str("master"),
        vlan_id=f.get_int("vlanId", minimum=0, maximum=MAX_VLAN_ID),
        mtu=f.get_int("mtu", minimum=0),
        in_container=f.get_bool("linkInContainer"),
        ipam_type=call.conf.ipam.get_str("type"),
    )
    if call.command in ("ADD", "CHECK"):  # DEL, GC and STATUS clean up and report what they can
        if not conf.master:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, '"master" is required: the host interface to make the VLAN on')
        if not conf.ipam_type:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, 'vlan needs an IPAM plugin: set "ipam": {"type": ...}')
        underlay.check_mtu(call, conf.mtu, conf.master, conf.in_container)
    return conf


def plan(call: CmdArgs) -> underlay.Plan:
    conf = load_conf(call)
    link = underlay.sublink(call, "vlan", conf.master, conf.in_container, conf.mtu, create={"vlan_id": conf.vlan_id})
    return underlay.Plan(link, conf.ipam_type, mtu_checked=True)


add, check, delete, gc, status = underlay.commands(plan)
