"""Kernel state as the reference comparisons see it: what `ip -j`, `bridge -j` and sysctl report
about a container and the host side of its attachment, with what legitimately differs between
two attachments (generated names, MACs, indexes, the subnet) left out or renamed."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

from ...conftest import NetNS

CONTAINER_SYSCTLS = (
    "net/ipv4/conf/{if}/arp_notify",
    "net/ipv6/conf/{if}/accept_dad",
    "net/ipv6/conf/{if}/enhanced_dad",
    "net/ipv6/conf/{if}/disable_ipv6",
    "net/ipv6/conf/lo/disable_ipv6",
)
HOST_SYSCTLS = ("net/ipv6/conf/{if}/accept_ra",)
PORT_FLAGS = ("hairpin", "isolated", "state", "learning", "flood", "mcast_flood", "guard", "root_block", "fastleave")


def ip_json(*argv: str, ns: NetNS | None = None) -> Any:
    cmd = ["ip", "-j", *argv]
    proc = subprocess.run(["ip", "netns", "exec", ns.name, *cmd] if ns else cmd, capture_output=True, text=True, check=False)
    return json.loads(proc.stdout or "[]") if proc.returncode == 0 else []


def _read_sysctl(key: str, ns: NetNS | None) -> str:
    path = "/proc/sys/" + key
    cmd = ["cat", path]
    proc = subprocess.run(["ip", "netns", "exec", ns.name, *cmd] if ns else cmd, capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "missing"


def addresses(link: dict[str, Any]) -> list[str]:
    return sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") != "link")


def routes(ns: NetNS | None, dev: str | None = None, table: str = "main") -> list[dict[str, Any]]:
    out = []
    for family in ("-4", "-6"):
        argv = [family, "route", "show", "table", table, *(["dev", dev] if dev else [])]
        for route in ip_json(*argv, ns=ns):
            if route.get("dst", "").startswith("fe80::") or route.get("dst", "").startswith("ff00::"):
                continue
            route.pop("flags", None)
            if dev:
                route.pop("dev", None)
            out.append(route)
    return sorted(out, key=json.dumps)


def container(ns: NetNS, ifname: str = "eth0") -> dict[str, Any]:
    (link,) = ip_json("-d", "addr", "show", ifname, ns=ns) or [{}]
    return {
        "kind": link.get("linkinfo", {}).get("info_kind"),
        "mtu": link.get("mtu"),
        "txqlen": link.get("txqlen"),  # `ip -j` leaves out a queue length of 0
        "up": "UP" in link.get("flags", []),
        "operstate": link.get("operstate"),
        "addresses": addresses(link),
        "routes": routes(ns),
        "sysctls": {k: _read_sysctl(k.format(**{"if": ifname}), ns) for k in CONTAINER_SYSCTLS},
    }


def bridge(name: str) -> dict[str, Any]:
    (link,) = ip_json("-d", "addr", "show", name) or [{}]
    with open(f"/sys/class/net/{name}/addr_assign_type") as fh:
        assign = fh.read().strip()
    return {
        "mtu": link.get("mtu"),
        "txqlen": link.get("txqlen"),  # the kernel's default: the reference asks for it (TxQLen -1)
        "up": "UP" in link.get("flags", []),
        "promisc": link.get("promiscuity", 0) > 0,
        "vlan_filtering": link.get("linkinfo", {}).get("info_data", {}).get("vlan_filtering"),
        "addresses": addresses(link),
        "mac_assign_type": assign,
        "sysctls": {k: _read_sysctl(k.format(**{"if": name}), None) for k in HOST_SYSCTLS},
    }


def ports(bridge_name: str) -> list[dict[str, Any]]:
    """The bridge's ports, with their flags (`bridge -d link`) and host sysctls."""
    out = []
    proc = subprocess.run(["bridge", "-j", "-d", "link", "show"], capture_output=True, text=True, check=True)
    for port in json.loads(proc.stdout or "[]"):
        if port.get("master") != bridge_name:
            continue
        (link,) = ip_json("-d", "addr", "show", port["ifname"]) or [{}]
        out.append(
            {
                "mtu": link.get("mtu"),
                "txqlen": link.get("txqlen"),
                "up": "UP" in link.get("flags", []),
                "addresses": addresses(link),
                "flags": {k: port.get(k) for k in PORT_FLAGS},
                "sysctls": {k: _read_sysctl(k.format(**{"if": port["ifname"]}), None) for k in HOST_SYSCTLS},
            }
        )
    return out


def host_veth(name: str) -> dict[str, Any]:
    """ptp's host end: its addresses and the routes through it."""
    (link,) = ip_json("-d", "addr", "show", name) or [{}]
    return {
        "mtu": link.get("mtu"),
        "txqlen": link.get("txqlen"),
        "up": "UP" in link.get("flags", []),
        "addresses": addresses(link),
        "routes": routes(None, name),
        "sysctls": {k: _read_sysctl(k.format(**{"if": name}), None) for k in HOST_SYSCTLS},
    }


def settled(ns: NetNS | None, dev: str, timeout: float = 5.0) -> None:
    """Wait until `dev` has no tentative IPv6 address: the kernel adds an address's local
    route only after duplicate address detection, which both sides of a comparison must pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [link for link in ip_json("-6", "addr", "show", "dev", dev, "tentative", ns=ns) if link.get("addr_info")]:
            return
        time.sleep(0.05)


def renamed(state: Any, pairs: list[tuple[str, str]]) -> Any:
    """`state` with each text `a` replaced by `b` (one subnet's prefix by another's)."""
    text = json.dumps(state, sort_keys=True)
    for a, b in pairs:
        text = text.replace(a, b)
    return json.loads(text)
