"""Host interfaces lent to containers: finding one, and what it was before it was lent.

A host device is named in one of four ways, as the reference host-device plugin reads
them: its name, its MAC (`hwaddr`), its kernel device path (`kernelpath`, a directory
under /sys/devices whose `net` subdirectory names it) or its PCI address (`pciBusID`, or
the `deviceID` capability: /sys/bus/pci/devices/<address>/net, or the `net` directory of
its virtio device). A PCI device bound to a userspace (DPDK) driver has no interface to
move. The sysfs root is a parameter so that the lookups can be tried on a made-up tree.

Moving an interface into another namespace drops its addresses and routes, and a
container may change its MTU or MAC. `DeviceState` records what the host had (MTU, MAC,
up or down, alias, permanent addresses, static routes through it) so that the interface
comes back as it was.
"""

from __future__ import annotations

import glob
import ipaddress
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from pycni.net import addrs, links, netlink
from pycni.spec.errors import CNIError, Code

if TYPE_CHECKING:
    from pycni.net.netlink import IPRoute

log = logging.getLogger("pycni.net.hostdevice")
SYSFS = "/sys"
USERSPACE_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio")  # DPDK: the device has no netdev
IFA_F_PERMANENT = 0x80
RTPROT_KERNEL, RTPROT_RA = 2, 9
RTN_UNICAST = 1
RT_SCOPE_LINK = 253


def _bad(msg: str, details: str = "") -> CNIError:
    return CNIError(Code.INVALID_NETWORK_CONFIG, msg, details)


# -- finding the device ------------------------------------------------------------


def by_hwaddr(ipr: IPRoute, mac: str) -> str:
    """The first host interface (by index) with this MAC."""
    for msg in sorted(ipr.get_links(), key=lambda m: int(m["index"])):
        if links.mac(msg).lower() == mac.lower():
            return links.name(msg)
    raise _bad(f'no host interface has the MAC address {mac} ("hwaddr")')


def by_kernelpath(ipr: IPRoute, path: str, sysfs: str = SYSFS) -> str:
    """The first interface listed under `path`/net that is a host interface."""
    if not os.path.normpath(path).startswith("/sys/devices/") or "\0" in path:
        raise _bad(f'"kernelpath" {path!r} must be an absolute path beginning with /sys/devices/')
    net_dir = os.path.join(sysfs, os.path.relpath(path, "/sys"), "net")
    try:
        entries = sorted(os.listdir(net_dir))
    except OSError:
        raise _bad(f'no network devices at {os.path.join(path, "net")} ("kernelpath")') from None
    for entry in entries:
        if links.get(ipr, entry) is not None:
            return entry
    raise _bad(f'none of the network devices at {os.path.join(path, "net")} is a host interface ("kernelpath")')


def pci_device_dir(address: str, sysfs: str = SYSFS) -> str:
    directory = os.path.join(sysfs, "bus/pci/devices", address)
    if "/" in address or not os.path.exists(directory):
        raise _bad(f"PCI device {address} does not exist (no /sys/bus/pci/devices/{address})", '"pciBusID" or "deviceID"')
    return directory


def pci_driver(address: str, sysfs: str = SYSFS) -> str:
    """The driver the PCI device is bound to ("" when none is)."""
    link = os.path.join(pci_device_dir(address, sysfs), "driver")
    return os.path.basename(os.path.realpath(link)) if os.path.exists(link) else ""


def is_userspace_driven(address: str, sysfs: str = SYSFS) -> bool:
    """True when a userspace (DPDK) driver owns the device: there is no interface to move."""
    return pci_driver(address, sysfs) in USERSPACE_DRIVERS


def by_pci(ipr: IPRoute, address: str, sysfs: str = SYSFS) -> str:
    """The interface of a PCI network device (or of its virtio device)."""
    device = pci_device_dir(address, sysfs)
    net_dir = os.path.join(device, "net")
    if not os.path.isdir(net_dir):
        virtio = sorted(glob.glob(os.path.join(glob.escape(device), "virtio*", "net")))
        if not virtio:
            driver = pci_driver(address, sysfs)
            bound = f"bound to {driver}" if driver else "bound to no driver"
            raise _bad(f"PCI device {address} is not a network device with an interface (no net directory; {bound})")
        net_dir = virtio[0]
    entries = sorted(os.listdir(net_dir))
    if not entries or links.get(ipr, entries[0]) is None:
        raise _bad(f"PCI device {address} has no interface in this network namespace")
    return entries[0]


# -- what the host had -------------------------------------------------------------


@dataclass
class DeviceState:
    """A host interface's own settings, recorded before it is lent to a container."""

    device: str
    mtu: int
    mac: str
    up: bool
    alias: str = ""
    addresses: list[dict[str, Any]] = field(default_factory=list)  # {"address": "192.0.2.9/24", "nodad": true, ...}
    routes: list[dict[str, Any]] = field(default_factory=list)  # {"dst", "gw", "priority", "table", "scope"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def record(ipr: IPRoute, name: str) -> DeviceState:
    """What `name` has now: its settings, permanent addresses and static routes."""
    msg = links.get(ipr, name)
    if msg is None:
        raise _bad(f"host device {name!r} does not exist")
    index = int(msg["index"])
    state = DeviceState(
        device=name,
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        mac=links.mac(msg),
        up=links.is_up(msg),
        alias=str(msg.get_attr("IFLA_IFALIAS") or ""),
    )
    for addr in netlink.link_addresses(ipr, index):
        flags = addr.get_attr("IFA_FLAGS") or addr["flags"]
        version = 4 if addr["family"] == socket.AF_INET else 6
        if addr["scope"] >= RT_SCOPE_LINK or (version == 6 and not flags & IFA_F_PERMANENT):
            continue  # link-local and SLAAC addresses come back by themselves
        local = addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")
        state.addresses.append(
            {
                "address": f"{local}/{addr['prefixlen']}",
                "noprefixroute": bool(flags & addrs.IFA_F_NOPREFIXROUTE),
                "nodad": bool(flags & addrs.IFA_F_NODAD),
            }
        )
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in netlink.routes(ipr, family, oif=index):
            kept = _route(route, index, family)
            if kept is not None:
                state.routes.append(kept)
    return state


def _route(msg: Any, index: int, family: int) -> dict[str, Any] | None:
    """A static unicast route through the device, or None for what the kernel makes itself."""
    table = int(msg.get_attr("RTA_TABLE") or msg["table"])
    if msg["proto"] in (RTPROT_KERNEL, RTPROT_RA) or msg["type"] != RTN_UNICAST or table == 255:
        return None
    if msg.get_attr("RTA_MULTIPATH") or (msg.get_attr("RTA_OIF") or 0) != index:
        return None
    dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
    network = ipaddress.ip_network(f"{dst}/{msg['dst_len']}")
    if network.version == 6 and network.is_link_local:
        return None
    return {
        "dst": str(network),
        "gw": msg.get_attr("RTA_GATEWAY"),
        "priority": int(msg.get_attr("RTA_PRIORITY") or 0),
        "table": table,
        "scope": int(msg["scope"]),
    }


def find_lent(ipr: IPRoute, state: DeviceState) -> Any:
    """The device in this namespace: by its name, or by the alias it carries while lent (a
    container namespace that went away gives a physical device back under another name)."""
    msg = links.get(ipr, state.device)
    if msg is not None:
        return msg
    for candidate in ipr.get_links():
        if candidate.get_attr("IFLA_IFALIAS") == state.device:
            return candidate
    return None


def restore(ipr: IPRoute, state: DeviceState) -> bool:
    """Give the device its recorded name, settings, addresses and routes back; False when it
    is not in this namespace. Best effort: a step that fails is logged, the others are done."""
    msg = find_lent(ipr, state)
    if msg is None:
        return False
    index = int(msg["index"])
    what = f"restoring host device {state.device}"
    if links.name(msg) != state.device:
        links.set_attrs(ipr, index, what, state="down")
        links.set_attrs(ipr, index, what, ifname=state.device)
    changes: dict[str, Any] = {"ifalias": state.alias}
    if int(msg.get_attr("IFLA_MTU") or 0) != state.mtu and state.mtu:
        changes["mtu"] = state.mtu
    if links.mac(msg).lower() != state.mac.lower() and state.mac:
        changes["address"] = state.mac
    _best_effort(what, partial(links.set_attrs, ipr, index, what, **changes))
    for item in state.addresses:
        address = ipaddress.ip_interface(item["address"])
        flags = {"noprefixroute": bool(item.get("noprefixroute")), "nodad": bool(item.get("nodad"))}
        _best_effort(what, partial(addrs.add_address, ipr, index, address, state.device, **flags))
    if state.up:
        _best_effort(what, partial(links.set_attrs, ipr, index, what, state="up"))
    for item in sorted(state.routes, key=lambda r: -int(r.get("scope", 0))):  # link routes before routes via gateways
        route = addrs.RouteFields(
            ipaddress.ip_network(item["dst"]),
            gw=ipaddress.ip_address(item["gw"]) if item.get("gw") else None,
            oif=index,
            scope=int(item.get("scope", 0)),
            table=int(item.get("table", addrs.RT_TABLE_MAIN)),
            priority=int(item.get("priority", 0)),
        )
        _best_effort(what, partial(addrs.add_route, ipr, route, state.device))
    return True


def _best_effort(what: str, step: Callable[[], object]) -> None:
    try:
        step()
    except CNIError as exc:  # an address or route that exists already is not an error (addrs)
        log.warning("%s: %s", what, exc.msg)
