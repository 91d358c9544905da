"""host-device: moves an existing host interface into the container, and back on DEL.

A drop-in for the reference plugin: the device is named by `device`, `hwaddr`,
`kernelpath` or `pciBusID` (the `deviceID` capability overrides it); it is moved in under
CNI_IFNAME, with its host name kept as its alias (so the reference's DEL can give back
ours and ours the reference's), brought up and, with `ipam`, configured. A PCI device
bound to a userspace (DPDK) driver has no interface: ADD returns an empty result, DEL
does nothing. Moving drops an interface's addresses; the reference gives the device back
down, without them, and with whatever MTU and MAC the container left. Here ADD records
what the host had (MTU, MAC, up, alias, permanent addresses, static routes) in
/run/cni/host-device/<network>/, and DEL, a failed ADD and GC put all of it back.
DEL is idempotent (a missing namespace or interface is fine), and GC gives back the
devices of attachments the runtime no longer knows.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pycni import faults, gcreport
from pycni.net import attachment, hostdevice, links, netlink, netns
from pycni.net.attachment import Attachment, Creation, Link
from pycni.net.hostdevice import DeviceState
from pycni.plugins import delegation, request
from pycni.plugins.main import _underlay as underlay
from pycni.plugins.records import PARTIAL, is_partial_record, remove_record, write_record
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code
from pycni.spec.gc import valid_attachments
from pycni.spec.result import Result

ABOUT = "CNI host-device plugin (pycni)"
STATE_DIR = "/run/cni/host-device"  # records of lent devices mean nothing after a reboot


@dataclass
class Conf:
    device: str
    hwaddr: str
    kernelpath: str
    pci: str
    ipam_type: str


def load_conf(call: CmdArgs) -> Conf:
    f = call.conf.fields
    hwaddr = f.get_str("hwaddr")
    conf = Conf(
        device=f.get_str("device"),
        hwaddr=request.parse_mac(hwaddr, '"hwaddr"') if hwaddr else "",
        kernelpath=f.get_str("kernelpath"),
        pci=call.conf.runtime_config.get_str("deviceID") or f.get_str("pciBusID"),
        ipam_type=call.conf.ipam.get_str("type"),
    )
    if call.command == "ADD" and not (conf.device or conf.hwaddr or conf.kernelpath or conf.pci):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, 'specify either "device", "hwaddr", "kernelpath" or "pciBusID"')
    return conf


def find_device(ipr: netlink.IPRoute, conf: Conf) -> str:
    """The host interface the configuration names (in the reference's order of precedence)."""
    if conf.device:
        if links.get(ipr, conf.device) is None:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f'host device {conf.device!r} does not exist ("device")')
        return conf.device
    if conf.hwaddr:
        return hostdevice.by_hwaddr(ipr, conf.hwaddr)
    if conf.kernelpath:
        return hostdevice.by_kernelpath(ipr, conf.kernelpath)
    return hostdevice.by_pci(ipr, conf.pci)


def plan(call: CmdArgs, device: str, ipam_type: str) -> underlay.Plan:
    return underlay.Plan(Link(call.ifname, ns=call.netns, kind="", creation=Creation(device=device)), ipam_type)


# -- the records of lent devices ---------------------------------------------------


@dataclass
class Lent:
    """A device lent to an attachment, as ADD recorded it."""

    container_id: str
    ifname: str
    netns: str
    state: DeviceState
    path: str = ""


def _record_path(network: str, container_id: str, ifname: str) -> str:
    return os.path.join(STATE_DIR, network, f"{container_id}-{ifname}.json")


def save(call: CmdArgs, state: DeviceState) -> str:
    path = _record_path(call.conf.name, call.container_id, call.ifname)
    body = {"containerID": call.container_id, "ifname": call.ifname, "netns": call.netns, "host": state.to_dict()}
    write_record(path, body, "device-record-tmp")
    return path


def _read(path: str) -> Lent | None:
    try:
        with open(path) as fh:
            body = json.load(fh)
        return Lent(body["containerID"], body["ifname"], body.get("netns", ""), DeviceState.from_dict(body["host"]), path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load(call: CmdArgs) -> Lent | None:
    """The caller's record; not another attachment's whose file name is the same
    (container "a-b" interface "c" and container "a" interface "b-c")."""
    lent = _read(_record_path(call.conf.name, call.container_id, call.ifname))
    return lent if lent is None or (lent.container_id, lent.ifname) == (call.container_id, call.ifname) else None


def _refuse_foreign_record(call: CmdArgs) -> None:
    lent = _read(_record_path(call.conf.name, call.container_id, call.ifname))
    if lent is not None and (lent.container_id, lent.ifname) != (call.container_id, call.ifname):
        raise CNIError(
            Code.CONFLICT,
            f"host-device: {lent.path} records device {lent.state.device} lent to container {lent.container_id!r} "
            f"interface {lent.ifname!r}",
            "the two attachments' record names collide (<containerID>-<ifname>.json); nothing was changed",
        )


def records(network: str) -> list[Lent]:
    """The network's records; also those a killed ADD left half written (GC runs alone: no
    write is in progress), which name the device as well as the finished ones do."""
    directory = os.path.join(STATE_DIR, network)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json") or is_partial_record(n))
    except FileNotFoundError:
        return []
    return [lent for lent in (_read(os.path.join(directory, n)) for n in names) if lent is not None]


def forget(path: str) -> None:
    """Drop a record (and what a killed write of it left), and the network's directory (and
    ours) once empty: a refused ADD leaves nothing behind, not even a directory."""
    path = path.removesuffix(PARTIAL)
    remove_record(path)
    for directory in (os.path.dirname(path), STATE_DIR):
        try:
            os.rmdir(directory)
        except OSError:
            break  # not empty (or already gone)


def give_back(state: DeviceState) -> bool:
    """Restore the device in the host as it was recorded; False when it is not in the host."""
    with netlink.route(None) as ipr:
        return hostdevice.restore(ipr, state)


# -- ADD, CHECK, DEL, GC, STATUS -----------------------------------------------------


def add(call: CmdArgs) -> Result:
    conf = load_conf(call)
    request.require_netns(call)
    if conf.pci and hostdevice.is_userspace_driven(conf.pci):
        return Result(cni_version=call.cni_version)  # a DPDK device: nothing to move or configure
    _refuse_foreign_record(call)
    with netlink.route(None) as ipr:
        state = hostdevice.record(ipr, find_device(ipr, conf))
    path = save(call, state)
    faults.checkpoint("device-recorded")
    try:
        return underlay.add(call, plan(call, state.device, conf.ipam_type))
    except BaseException:
        give_back(state)
        forget(path)
        raise


def check(call: CmdArgs) -> None:
    conf = load_conf(call)
    if conf.pci and hostdevice.is_userspace_driven(conf.pci):  # as the reference: nothing of ours to compare
        delegation.delegate_ipam(call, conf.ipam_type, "CHECK")
        if call.prev_result is None:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, "host-device: required prevResult missing")
        return
    lent = load(call)
    underlay.check(call, plan(call, lent.state.device if lent else conf.device or "?", conf.ipam_type))


def delete(call: CmdArgs) -> None:
    conf = load_conf(call)
    if conf.pci and _userspace_driven_quietly(conf.pci):
        return
    lent = load(call)
    device = lent.state.device if lent else conf.device or _alias_in_container(call) or call.ifname
    underlay.delete(call, plan(call, device, conf.ipam_type))
    faults.checkpoint("device-returned")
    if lent is not None:
        give_back(lent.state)
    forget(_record_path(call.conf.name, call.container_id, call.ifname))  # and what a killed write left


def _alias_in_container(call: CmdArgs) -> str:
    """The host name ADD (ours or the reference's) left in the alias, when DEL knows no other."""
    if not call.netns or not netns.exists(call.netns):
        return ""
    with netlink.route(call.netns) as ipr:
        msg = links.get(ipr, call.ifname)
    return str(msg.get_attr("IFLA_IFALIAS") or "") if msg is not None else ""


def _userspace_driven_quietly(address: str) -> bool:
    try:
        return hostdevice.is_userspace_driven(address)
    except CNIError:
        return False  # the PCI device is gone: DEL goes on with what it can find


def gc(call: CmdArgs) -> None:
    """Give back the devices of attachments that are not valid any more: moved out of their
    container when it still exists, restored as recorded, their records dropped."""
    conf = load_conf(call)
    valid = valid_attachments(call.conf.raw)
    for lent in records(call.conf.name):
        if (lent.container_id, lent.ifname) in valid:
            continue
        if lent.netns and netns.exists(lent.netns):
            link = Link(lent.ifname, ns=lent.netns, kind="", creation=Creation(device=lent.state.device))
            attachment.remove(Attachment(links=[link]))
        give_back(lent.state)
        forget(lent.path)
        gcreport.released("device", lent.state.device)
    delegation.delegate_ipam(call, conf.ipam_type, "GC")


def status(call: CmdArgs) -> None:
    underlay.status(call, load_conf(call).ipam_type)
