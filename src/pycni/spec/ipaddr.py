"""IP addresses, interfaces and networks parsed from untrusted text, as Go's net package
parses them: Python's `ipaddress` also accepts an IPv6 scope (`fe80::1%eth0`), whose
text is free-form (spaces, quotes, braces) and is kept in the address's string form.
Such a string would name one address in two ways (two host-local files for one address)
and could carry text into an nftables script, so a scope is refused here; every parse of
configuration, CNI_ARGS, capability arguments and results goes through these functions.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _plain(text: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a string")
    if "%" in text:
        raise ValueError(f"{text!r}: an IPv6 scope (%...) is not accepted")
    return text


def address(text: str) -> IPAddress:
    return ipaddress.ip_address(_plain(text))


def interface(text: str) -> IPInterface:
    return ipaddress.ip_interface(_plain(text))


def network(text: str, strict: bool = True) -> IPNetwork:
    return ipaddress.ip_network(_plain(text), strict=strict)
