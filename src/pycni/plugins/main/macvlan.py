"""macvlan: a container interface with its own MAC on a host interface (the master).

A drop-in for the reference plugin: `master` (by default the interface of the host's
default route), `mode` (bridge, private, vepa, passthru), `mtu` (at most the master's),
`mac` (the configuration's, CNI_ARGS MAC, or the `mac` capability), `linkInContainer`
(the master is in the container's namespace), `bcqueuelen` and, optionally, `ipam`:
without it the interface is only brought up (layer 2). The macvlan is created directly
in the container under its final name. Beyond the reference: DEL needs neither the master
nor the namespace, removes only a macvlan, and GC and STATUS reach the IPAM plugin.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycni.net import links
from pycni.net.attachment import Link
from pycni.plugins import request
from pycni.plugins.main import _underlay as underlay
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code

ABOUT = "CNI macvlan plugin (pycni)"
MODES = ("bridge", "private", "vepa", "passthru")
MAX_BC_QUEUE_LEN = 2**32 - 1


@dataclass
class Conf:
    master: str
    mode: str
    mtu: int
    mac: str
    in_container: bool
    bc_queue_len: int
    ipam_type: str


def load_conf(call: CmdArgs) -> Conf:
    """The configuration; ADD and CHECK also resolve the master and check the MTU against it."""
    f = call.conf.fields
    mode = f.get_str("mode") or "bridge"
    if mode not in MODES:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f'unknown macvlan "mode" {mode!r}: expected one of {", ".join(MODES)}')
    conf = Conf(
        master=f.get_str("master"),
        mode=mode,
        mtu=f.get_int("mtu", minimum=0),
        mac="",
        in_container=f.get_bool("linkInContainer"),
        bc_queue_len=f.get_int("bcqueuelen", minimum=0, maximum=MAX_BC_QUEUE_LEN),
        ipam_type=call.conf.ipam.get_str("type"),
    )
    if call.command in ("ADD", "CHECK"):
        conf.mac = request.requested_mac(call, args_cni=False, conf_key=True)
        conf.master = underlay.resolve_master(call, conf.master, conf.in_container, conf.mtu, "macvlan")
    return conf


def plan(call: CmdArgs) -> underlay.Plan:
    conf = load_conf(call)

    def set_bc_queue_len(link: Link) -> None:
        what = f"failed to set bcqueuelen {conf.bc_queue_len} on {link.where()}"
        links.set_macvlan_bc_queue_len(link.ns, link.index, conf.bc_queue_len, what)

    link = underlay.sublink(
        call,
        "macvlan",
        conf.master,
        conf.in_container,
        conf.mtu,
        create={"macvlan_mode": conf.mode},
        mac=conf.mac,
        finish=set_bc_queue_len if conf.bc_queue_len else None,
    )
    return underlay.Plan(link, conf.ipam_type, notify=(underlay.ARP_NOTIFY, underlay.NDISC_NOTIFY))


add, check, delete, gc, status = underlay.commands(plan)
