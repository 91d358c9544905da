"""Two attachments side by side, ours and the reference's: their namespaces, subnets whose
addresses differ only in a prefix, data directories, and placeholders in configurations."""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...conftest import NetNS, PluginRun, run_plugin
from . import kernel_state as ks


def subnet_pair(prefixlen: int = 24, version: int = 4) -> tuple[str, str]:
    """Two random private networks whose addresses differ only in their prefix text."""
    while True:
        if version == 4:
            second = 200 + secrets.randbelow(50)
            nets = [ipaddress.ip_network(f"10.{second}.{secrets.randbelow(256)}.0/{prefixlen}", strict=False) for _ in "ab"]
            if prefixlen <= 16:
                nets = [ipaddress.ip_network(f"10.{200 + secrets.randbelow(50)}.0.0/{prefixlen}") for _ in "ab"]
        else:
            nets = [
                ipaddress.ip_network(f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}::/64") for _ in "ab"
            ]
        if nets[0] != nets[1] and not nets[0].overlaps(nets[1]):
            return str(nets[0]), str(nets[1])


def prefix_text(subnet: str) -> str:
    """The part of an address's text that names the subnet: "10.231.7." or "fd12:3456:789a:"."""
    net = ipaddress.ip_network(subnet)
    if net.version == 6:
        return str(net.network_address).rstrip(":") + ":"
    octets = str(net.network_address).split(".")
    return ".".join(octets[: net.prefixlen // 8]) + "."


@dataclass
class Side:
    """One implementation's attachment: its namespace, bridge, subnets and data directory."""

    executable: Path
    ns: NetNS
    bridge: str
    subnets: list[str]
    data_dir: Path
    container_id: str

    def fill(self, text: str) -> str:
        """Placeholders made this side's: {subnetN}, {prefixN} (its text prefix), {addrK} (its K-th address)."""
        for i, subnet in enumerate(self.subnets):
            text = text.replace(f"{{subnet{i}}}", subnet).replace(f"{{prefix{i}}}", prefix_text(subnet))
        network = ipaddress.ip_network(self.subnets[0])
        return re.sub(r"\{addr(\d+)\}", lambda m: str(network[int(m.group(1))]), text)

    def conf(self, template: dict[str, Any]) -> dict[str, Any]:
        conf = json.loads(self.fill(json.dumps(template)))
        conf["bridge"] = self.bridge
        if conf.get("ipam", {}).get("type") == "host-local":
            conf["ipam"]["dataDir"] = str(self.data_dir)
        return conf

    def run(self, command: str, template: dict[str, Any], args: str = "", **extra: Any) -> PluginRun:
        return run_plugin(
            self.executable,
            command,
            dict(self.conf(template), **extra),
            netns=self.ns.path,
            container_id=self.container_id,
            cni_args=self.fill(args),
            env={"PYCNI_LOG_FILE": str(self.data_dir / "plugin.log")},
        )


def comparable(side: Side, other: Side, result: dict[str, Any]) -> dict[str, Any]:
    """A result or state with `side`'s subnets, bridge name and sandbox written as `other`'s."""
    pairs = [(prefix_text(a), prefix_text(b)) for a, b in zip(side.subnets, other.subnets, strict=True)]
    pairs += [(side.bridge, other.bridge), (side.ns.path, other.ns.path)]
    return ks.renamed(result, pairs)  # type: ignore[no-any-return]
