"""Which address of this host is the node's: calico/node's IP autodetection methods.

    first-found            the first global address of the first interface (by name) that
                           is not one of Calico's excluded kinds (lo, cali*, docker*, ...)
    interface=REGEX,...    the first interface whose name matches one of the expressions
    skip-interface=REGEX   first-found, skipping interfaces that match
    can-reach=DEST         the source address the kernel would use towards DEST
    cidr=CIDR,...          the first address inside one of the CIDRs

The answer keeps its prefix length (the node's subnet matters for CrossSubnet). Addresses are
read through netlink in the calling process's network namespace (the node's).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from pycni.net import netlink

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

# Calico's DEFAULT_INTERFACES_TO_EXCLUDE.
DEFAULT_EXCLUDES = (
    r"^docker.*", r"^cbr.*", r"^dummy.*", r"^virbr.*", r"^lxcbr.*", r"^veth.*", r"^lo",
    r"^cali.*", r"^tunl.*", r"^flannel.*", r"^kube-ipvs.*", r"^cni.*", r"^vxlan.calico.*",
    r"^vxlan-v6.calico.*", r"^wireguard.cali.*", r"^wg-v6.cali.*", r"^nodelocaldns.*",
)  # fmt: skip


class AutodetectError(ValueError):
    """The method is malformed or finds nothing; the message says which."""


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    addresses: tuple[IPInterface, ...]


def interfaces(version: int) -> list[Interface]:
    """Every interface with its global addresses of `version`, sorted by name."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with netlink.route() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        found: dict[int, list[IPInterface]] = {}
        for msg in ipr.get_addr(family=family):
            if msg["scope"] != 0:  # global only (not link or host scope)
                continue
            text = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if text:
                found.setdefault(msg["index"], []).append(ipaddress.ip_interface(f"{text}/{msg['prefixlen']}"))
    out = [Interface(names.get(i, str(i)), i, tuple(addrs)) for i, addrs in found.items()]
    return sorted(out, key=lambda itf: itf.name)


def _filter(items: Sequence[Interface], include: Sequence[str], exclude: Sequence[str]) -> list[Interface]:
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in exclude]
    return [
        itf for itf in items if (not inc or any(p.search(itf.name) for p in inc)) and not any(p.search(itf.name) for p in exc)
    ]


def _compile(method: str, patterns: str) -> list[str]:
    out = [p.strip() for p in patterns.split(",") if p.strip()]
    if not out:
        raise AutodetectError(f"IP autodetection method {method!r} needs at least one regular expression")
    for pattern in out:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise AutodetectError(f"IP autodetection method {method!r}: invalid regular expression {pattern!r}: {exc}") from None
    return out


def _first(items: Sequence[Interface], method: str, version: int) -> tuple[IPInterface, str]:
    for itf in items:
        if itf.addresses:
            return itf.addresses[0], itf.name
    raise AutodetectError(f"IP autodetection method {method!r} found no IPv{version} address on this host")


def autodetect(method: str, version: int, available: Sequence[Interface] | None = None) -> tuple[IPInterface, str]:
    """(address with prefix, interface name) that `method` picks; AutodetectError otherwise."""
    method = (method or "first-found").strip()
    items = list(available) if available is not None else interfaces(version)
    if method == "first-found":
        return _first(_filter(items, (), DEFAULT_EXCLUDES), method, version)
    kind, sep, arg = method.partition("=")
    if kind == "kubernetes-internal-ip":
        raise AutodetectError(
            "IP autodetection method kubernetes-internal-ip needs a Kubernetes API server, which pycni cannot use"
        )
    if not sep:
        raise AutodetectError(
            f"invalid IP autodetection method {method!r}: use first-found, interface=REGEX, "
            "skip-interface=REGEX, can-reach=DEST or cidr=CIDR"
        )
    if kind == "interface":
        return _first(_filter(items, _compile(method, arg), ()), method, version)
    if kind == "skip-interface":
        return _first(_filter(items, (), [*DEFAULT_EXCLUDES, *_compile(method, arg)]), method, version)
    if kind == "cidr":
        nets = []
        for text in [c.strip() for c in arg.split(",") if c.strip()]:
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise AutodetectError(f"IP autodetection method {method!r}: {text!r} is not a CIDR") from None
        if not nets:
            raise AutodetectError(f"IP autodetection method {method!r} needs a CIDR")
        for itf in items:
            for addr in itf.addresses:
                if any(addr.version == n.version and addr.ip in n for n in nets):
                    return addr, itf.name
        raise AutodetectError(f"IP autodetection method {method!r} found no IPv{version} address inside {arg}")
    if kind == "can-reach":
        return _can_reach(method, arg.strip(), version, items)
    if kind == "kubernetes-internal-ip":
        raise AutodetectError(
            "IP autodetection method kubernetes-internal-ip needs a Kubernetes API server, which pycni cannot use"
        )
    raise AutodetectError(f"invalid IP autodetection method {method!r}")


def _can_reach(method: str, dest: str, version: int, items: Sequence[Interface]) -> tuple[IPInterface, str]:
    try:
        target = ipaddress.ip_address(dest)
    except ValueError:
        try:
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            target = ipaddress.ip_address(socket.getaddrinfo(dest, None, family)[0][4][0])
        except (OSError, IndexError):
            raise AutodetectError(f"IP autodetection method {method!r}: cannot resolve {dest!r}") from None
    if target.version != version:
        raise AutodetectError(f"IP autodetection method {method!r}: {dest} is not an IPv{version} address")
    # A connected UDP socket sends nothing: the kernel only picks the route and source address.
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((str(target), 53))
        except OSError as exc:
            raise AutodetectError(f"IP autodetection method {method!r}: no route to {target}: {exc.strerror}") from None
        source = ipaddress.ip_address(sock.getsockname()[0])
    for itf in items:
        for addr in itf.addresses:
            if addr.ip == source:
                return addr, itf.name
    raise AutodetectError(f"IP autodetection method {method!r}: source address {source} towards {target} is on no interface")


def find_local(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, items: Sequence[Interface] | None = None
) -> tuple[IPInterface, str] | None:
    """The interface address equal to `address` (with its prefix), None when no interface has it."""
    for itf in items if items is not None else interfaces(address.version):
        for addr in itf.addresses:
            if addr.ip == address:
                return addr, itf.name
    return None
