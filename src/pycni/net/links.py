"""Links through one pyroute2 socket: look up, create (a veth pair in one request), set, delete.

Every function takes an open `IPRoute` (`pycni.net.netlink.route(ns)`), so a plugin
talks to each namespace through one socket for the whole call. Failures the kernel
reports become CNIErrors naming the link: code 100, or 101 when the kernel lacks
the feature (EOPNOTSUPP): "this kernel has no ipvlan link type (CONFIG_IPVLAN)".
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from pycni.net import netlink, netns
from pycni.spec.errors import CNIError, Code

if TYPE_CHECKING:
    from pycni.net.netlink import IPRoute

IFNAMSIZ = 16  # with the terminating NUL
IFF_UP = 0x1
IFF_PROMISC = 0x100
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4
# Bridge port flags as IFLA_BRPORT_* names (pyroute2's short form) to what they mean.
PORT_FLAGS = {"mode": "hairpin", "isolated": "isolated"}

Msg = Any  # a pyroute2 ifinfmsg


def kernel_error(exc: BaseException, what: str, unsupported: str = "") -> CNIError:
    """A CNIError for a failed netlink call: 101 when the kernel lacks the feature, which
    `unsupported` names ("bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)")."""
    code = netlink.error_code(exc)
    reason = os.strerror(code) if code else str(exc)
    if code == errno.EOPNOTSUPP and unsupported:
        return CNIError(Code.KERNEL_UNSUPPORTED, f"{what}: {missing_feature(unsupported)}", reason)
    return CNIError(Code.KERNEL, f"{what}: {reason}")


def missing_feature(feature: str) -> str:
    """How an error names a kernel feature that is missing."""
    return f"this kernel has no {feature}"


# The kernel option behind each link type, to name it when the kernel answers a creation
# with EOPNOTSUPP ("Unknown device type": neither built in nor loadable as a module).
LINK_TYPE_OPTIONS = {
    "bridge": "CONFIG_BRIDGE",
    "dummy": "CONFIG_DUMMY",
    "ipvlan": "CONFIG_IPVLAN",
    "macvlan": "CONFIG_MACVLAN",
    "tun": "CONFIG_TUN",
    "veth": "CONFIG_VETH",
    "vlan": "CONFIG_VLAN_8021Q",
    "vxlan": "CONFIG_VXLAN",
}


def link_type_feature(kind: str) -> str:
    """The feature a link type is: "ipvlan link type (CONFIG_IPVLAN)"."""
    option = LINK_TYPE_OPTIONS.get(kind)
    return f"{kind} link type ({option})" if option else f"{kind!r} link type"


def random_veth_name() -> str:
    """The reference's host-side name: "veth" and 8 random hex digits (NetworkManager ignores veth*)."""
    return "veth" + os.urandom(4).hex()


def get(ipr: IPRoute, name: str) -> Msg | None:
    """The link called `name`, or None.

    The kernel looks the name up (RTM_GETLINK with IFLA_IFNAME): pyroute2's
    get_links(ifname=...) would dump every link and filter them here, which costs a
    host with many containers a parsed message per link on each lookup."""
    if not name or len(name.encode()) >= IFNAMSIZ:
        return None  # cannot exist (the kernel would refuse the request)
    try:
        found = ipr.link("get", ifname=name)
    except Exception as exc:  # noqa: BLE001 - a missing link is ENODEV; anything else is real
        if netlink.is_errno(exc, errno.ENODEV, errno.ENOENT):
            return None
        raise kernel_error(exc, f"looking up link {name}") from None
    return found[0] if found else None


def by_index(ipr: IPRoute, index: int) -> Msg | None:
    try:
        found = ipr.get_links(index)
    except Exception as exc:  # noqa: BLE001
        if netlink.is_errno(exc, errno.ENODEV, errno.ENOENT):
            return None
        raise kernel_error(exc, f"looking up link #{index}") from None
    return found[0] if found else None


def kind(msg: Msg) -> str:
    info = msg.get_attr("IFLA_LINKINFO")
    return str(info.get_attr("IFLA_INFO_KIND") or "") if info is not None else ""


def info_data(msg: Msg) -> Any:
    """The kind-specific attributes (IFLA_INFO_DATA) of a link, or None."""
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_DATA") if info is not None else None


def name(msg: Msg) -> str:
    return str(msg.get_attr("IFLA_IFNAME"))


def mac(msg: Msg) -> str:
    return str(msg.get_attr("IFLA_ADDRESS") or "")


def master(msg: Msg) -> int:
    return int(msg.get_attr("IFLA_MASTER") or 0)


def peer_index(msg: Msg) -> int:
    """A veth's peer ifindex (in the peer's namespace)."""
    return int(msg.get_attr("IFLA_LINK") or 0)


def is_up(msg: Msg) -> bool:
    return bool(msg["flags"] & IFF_UP)


def is_promisc(msg: Msg) -> bool:
    return bool(msg["flags"] & IFF_PROMISC)


def oper_up(msg: Msg) -> bool:
    return bool(msg.get_attr("IFLA_OPERSTATE") == "UP")


def port_flags(msg: Msg) -> dict[str, int]:
    """The bridge port flags (`PORT_FLAGS` keys) of a bridge port."""
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_SLAVE_DATA") if info is not None else None
    if data is None:
        return {}
    return {key: int(data.get_attr("IFLA_BRPORT_" + key.upper()) or 0) for key in PORT_FLAGS}


def create(ipr: IPRoute, spec: dict[str, Any], peer_ns: str | None = None, what: str = "") -> None:
    """RTM_NEWLINK with `spec` (pyroute2 keywords); a veth's `peer` dict is placed in `peer_ns`.

    Placing the peer through IFLA_NET_NS_FD creates it in the container under its final
    name in the same request: no temporary name, no move, no rename."""
    spec = dict(spec)
    fd = -1
    try:
        if "peer" in spec and peer_ns is not None:
            fd = netns.open_fd(peer_ns)
            spec["peer"] = dict(spec["peer"], net_ns_fd=fd)
        ipr.link("add", **spec)
    except CNIError:
        raise
    except Exception as exc:
        if netlink.is_errno(exc, errno.EEXIST):
            raise
        raise kernel_error(exc, what or f"creating {spec.get('kind', 'link')} {spec.get('ifname')}", _unsupported(spec)) from None
    finally:
        if fd >= 0:
            os.close(fd)


def _unsupported(spec: dict[str, Any]) -> str:
    if spec.get("br_vlan_filtering"):
        return "bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)"
    return link_type_feature(str(spec.get("kind")))


def set_attrs(ipr: IPRoute, index: int, what: str, **attrs: Any) -> None:
    try:
        ipr.link("set", index=index, **attrs)
    except Exception as exc:  # noqa: BLE001
        raise kernel_error(exc, what) from None


def set_port_flags(ipr: IPRoute, index: int, flags: dict[str, int], what: str) -> None:
    try:
        ipr.brport("set", index=index, **flags)
    except Exception as exc:  # noqa: BLE001
        raise kernel_error(exc, what, "support for these bridge port flags") from None


def add_vlan(ipr: IPRoute, index: int, vid: int, pvid: bool, untagged: bool, what: str) -> None:
    flags = (BRIDGE_VLAN_INFO_PVID if pvid else 0) | (BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0)
    try:
        ipr.vlan_filter("add", index=index, vlan_info={"vid": vid, "flags": flags})
    except Exception as exc:  # noqa: BLE001
        raise kernel_error(exc, what, "bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)") from None


def remove_vlans(ipr: IPRoute, index: int, what: str) -> None:
    """Remove every VLAN of a bridge port (the reference's preserveDefaultVlan=false)."""
    try:
        for msg in ipr.get_vlans():
            if msg["index"] != index:
                continue
            spec = msg.get_attr("IFLA_AF_SPEC")
            for info in spec.get_attrs("IFLA_BRIDGE_VLAN_INFO") if spec is not None else []:
                ipr.vlan_filter("del", index=index, vlan_info={"vid": info["vid"]})
    except Exception as exc:  # noqa: BLE001
        raise kernel_error(exc, what, "bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)") from None


def delete(ipr: IPRoute, index: int) -> bool:
    """Delete a link; False when it was already gone."""
    try:
        ipr.link("del", index=index)
    except Exception as exc:  # noqa: BLE001
        if netlink.is_errno(exc, errno.ENODEV, errno.ENOENT):
            return False
        raise kernel_error(exc, f"deleting link #{index}") from None
    return True


def wait_oper_up(ipr: IPRoute, index: int, timeout: float = 2.5) -> Msg:
    """Wait until a link's operstate is UP (a bridge port whose peer came up); its final state."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        msg = by_index(ipr, index)
        if msg is None:
            raise CNIError(Code.KERNEL, f"link #{index} disappeared while waiting for it to come up")
        if oper_up(msg) or time.monotonic() >= deadline:
            return msg
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# -- macvlan's broadcast queue length: pyroute2 0.9.7 has no IFLA_MACVLAN_BC_QUEUE_LEN ----

RTM_NEWLINK = 16
IFLA_LINKINFO, IFLA_INFO_KIND, IFLA_INFO_DATA = 18, 1, 2
IFLA_MACVLAN_BC_QUEUE_LEN = 7


def set_macvlan_bc_queue_len(ns: str | None, index: int, length: int, what: str) -> None:
    """Ask for a broadcast queue of `length` on macvlan #`index` in `ns` (the port uses the
    largest any of its macvlans asks for). One RTM_NEWLINK, encoded here because the
    attribute is newer than pyroute2's macvlan description."""
    data = netlink.attr(IFLA_MACVLAN_BC_QUEUE_LEN, struct.pack("=I", length))
    info = netlink.attr(IFLA_INFO_KIND, b"macvlan") + netlink.attr(IFLA_INFO_DATA, data)
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0) + netlink.attr(IFLA_LINKINFO, info)
    try:
        netlink.request(ns, RTM_NEWLINK, 0, body)
    except OSError as exc:
        raise CNIError(Code.KERNEL, f"{what}: {exc.strerror}") from None
