"""ipvlan: a container interface sharing the MAC of a host interface (the master).

A drop-in for the reference plugin: `master` (by default the interface of the host's
default route), `mode` (l2, l3, l3s), `mtu`, `linkInContainer` and `ipam`. In a chain,
`ipam` may be left out: the prevResult's addresses are used, and without a `master` the
prevResult's only interface is the master. A kernel without ipvlan support fails ADD
with code 101 naming it (CONFIG_IPVLAN), before any address is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycni.plugins.main import _underlay as underlay
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result

ABOUT = "CNI ipvlan plugin (pycni)"
MODES = {"l2": 0, "l3": 1, "l3s": 2}  # IPVLAN_MODE_*


@dataclass
class Conf:
    master: str
    mode: str
    mtu: int
    in_container: bool
    ipam_type: str
    chained: Result | None  # the prevResult whose addresses ADD uses when there is no IPAM


def load_conf(call: CmdArgs) -> Conf:
    """The configuration; ADD and CHECK also resolve the master and check the MTU against it."""
    f = call.conf.fields
    mode = f.get_str("mode") or "l2"
    if mode not in MODES:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f'unknown ipvlan "mode" {mode!r}: expected one of {", ".join(MODES)}')
    conf = Conf(
        master=f.get_str("master"),
        mode=mode,
        mtu=f.get_int("mtu", minimum=0),
        in_container=f.get_bool("linkInContainer"),
        ipam_type=call.conf.ipam.get_str("type"),
        chained=call.prev_result if call.command == "ADD" else None,
    )
    if call.command == "ADD" and not conf.ipam_type and not (conf.chained and conf.chained.ips):
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            'ipvlan needs an IPAM plugin ("ipam": {"type": ...}) or, in a chain, a prevResult with addresses',
        )
    if call.command in ("ADD", "CHECK"):
        master = conf.master or (_chained_master(conf) if conf.chained else "")
        conf.master = underlay.resolve_master(call, master, conf.in_container, conf.mtu, "ipvlan")
    return conf


def _chained_master(conf: Conf) -> str:
    """In a chain without a master, the previous plugin's only interface is the master."""
    assert conf.chained is not None
    interfaces = conf.chained.interfaces
    if len(interfaces) == 1 and interfaces[0].name:
        return interfaces[0].name
    raise CNIError(
        Code.INVALID_NETWORK_CONFIG,
        f'ipvlan: "master" is not set and the prevResult has {len(interfaces)} interfaces, not one to take as the master',
    )


def plan(call: CmdArgs) -> underlay.Plan:
    conf = load_conf(call)
    link = underlay.sublink(call, "ipvlan", conf.master, conf.in_container, conf.mtu, create={"ipvlan_mode": MODES[conf.mode]})
    notify = (underlay.ARP_NOTIFY, underlay.NDISC_NOTIFY)
    return underlay.Plan(link, conf.ipam_type, notify=notify, given=None if conf.ipam_type else conf.chained)


add, check, delete, gc, status = underlay.commands(plan)
