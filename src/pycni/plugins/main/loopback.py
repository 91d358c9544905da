"""loopback: brings the container's `lo` up (and down on DEL).

As the reference plugin does, it ignores CNI_IFNAME (only `lo` makes sense) and,
in a chain, passes the previous result through untouched.
"""

from __future__ import annotations

import ipaddress

from pycni.net import netlink, netns
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Interface, IPConfig, Result

ABOUT = "CNI loopback plugin (pycni)"
LOOPBACK = "lo"
IFF_UP = 0x1


def _lo_index(ipr: netlink.IPRoute) -> int:
    found = ipr.link_lookup(ifname=LOOPBACK)
    if not found:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, "the container has no loopback interface")
    return int(found[0])


def _bring_up(ns_path: str) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    with netlink.route(ns_path) as ipr:
        index = _lo_index(ipr)
        ipr.link("set", index=index, state="up")
        addresses = []
        for msg in ipr.get_addr(index=index):
            addr = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            if not addr.ip.is_loopback:
                raise CNIError(Code.INVALID_NETWORK_CONFIG, f"loopback interface found with non-loopback address {addr}")
            addresses.append(addr)
    return addresses


def add(call: CmdArgs) -> Result:
    addresses = _bring_up(call.netns)
    if call.prev_result is not None:
        return call.prev_result
    first: dict[int, ipaddress.IPv4Interface | ipaddress.IPv6Interface] = {}
    for addr in addresses:
        first.setdefault(addr.version, addr)
    return Result(
        cni_version=call.cni_version,
        interfaces=[Interface(name=LOOPBACK, mac="00:00:00:00:00:00", sandbox=call.netns)],
        ips=[IPConfig(address=first[v], interface=0) for v in (4, 6) if v in first],
    )


def check(call: CmdArgs) -> None:
    with netlink.route(call.netns) as ipr:
        link = ipr.get_links(_lo_index(ipr))[0]
        if not link["flags"] & IFF_UP:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, "loopback interface is down")


def delete(call: CmdArgs) -> None:
    if not call.netns or not netns.exists(call.netns):
        return  # the namespace is gone, and its lo with it
    with netlink.route(call.netns) as ipr:
        found = ipr.link_lookup(ifname=LOOPBACK)
        if found:
            ipr.link("set", index=found[0], state="down")
