"""`subnet.env`, the file flanneld writes for the CNI plugin (pkg/subnet WriteSubnetFile):

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.3.1/24          the lease's first address, with its prefix
    FLANNEL_IPV6_NETWORK=...              (when IPv6 is enabled)
    FLANNEL_IPV6_SUBNET=...
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=false

Written atomically (a temporary file in the same directory, fsynced, renamed over it, mode
0644), so a plugin never reads half a file. flanneld reads it back at start (godotenv's
syntax) to take back the subnet it had.
"""

from __future__ import annotations

import ipaddress

from pycni import files
from pycni.flannel.config import NetworkConfig

DEFAULT_PATH = "/run/flannel/subnet.env"


def render(
    config: NetworkConfig,
    ip_masq: bool,
    subnet: ipaddress.IPv4Network,
    subnet6: ipaddress.IPv6Network | None,
    mtu: int,
) -> str:
    lines = [f"FLANNEL_NETWORK={config.network}", f"FLANNEL_SUBNET={subnet.network_address + 1}/{subnet.prefixlen}"]
    if config.enable_ipv6 and subnet6 is not None:
        lines += [
            f"FLANNEL_IPV6_NETWORK={config.ipv6_network}",
            f"FLANNEL_IPV6_SUBNET={subnet6.network_address + 1}/{subnet6.prefixlen}",
        ]
    lines += [f"FLANNEL_MTU={mtu}", f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}"]
    return "\n".join(lines) + "\n"


def write(path: str, text: str) -> None:
    files.replace_file(path, text.encode(), 0o644, fsync=True)


def read(path: str) -> dict[str, str]:
    """The variables of a dotenv file (godotenv's syntax: comments, `export`, quotes); {} when absent."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return {}
    out: dict[str, str] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.strip().removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].strip()
        out[key] = value
    return out


def previous_subnet(values: dict[str, str], key: str, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """flannel's ReadCIDRFromSubnetFile: the network of one CIDR (None when absent, several or bad)."""
    text = values.get(key, "")
    if not text or "," in text:
        return None
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    return net if net.version == version else None
