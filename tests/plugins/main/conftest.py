"""Fixtures of the main plugins' tests."""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ...conftest import NetNS, delete_link, unique
from .sides import Side, subnet_pair
from .underlay import Attach, make_master


@pytest.fixture
def sides(
    plugin_dir: Path, reference_dir: Path, make_netns: Callable[[], NetNS], tmp_path: Path
) -> Iterator[Callable[..., tuple[Side, Side]]]:
    made: list[Side] = []

    def make(families: tuple[int, ...] = (4,), prefixlen: int = 24, plugin: str = "bridge") -> tuple[Side, Side]:
        pairs = [subnet_pair(prefixlen, f) for f in families]
        ours = Side(plugin_dir / plugin, make_netns(), unique("pctbr"), [p[0] for p in pairs], tmp_path / "ours", unique("pctc"))
        ref = Side(reference_dir / plugin, make_netns(), unique("pctbr"), [p[1] for p in pairs], tmp_path / "ref", unique("pctc"))
        for side in (ours, ref):
            side.data_dir.mkdir(exist_ok=True)
        made.extend([ours, ref])
        return ours, ref

    yield make
    for side in made:
        delete_link(side.bridge)
        delete_link(f"{side.bridge}.100")


@pytest.fixture
def outside(make_netns: Callable[[], NetNS]) -> Iterator[tuple[NetNS, str, str]]:
    """A namespace outside every container subnet, routed from the host: (ns, host address, its address)."""
    ns = make_netns()
    link = unique("pctout")
    base = ipaddress.ip_network(f"198.18.{secrets.randbelow(256)}.{4 * secrets.randbelow(64)}/30")
    host_ip, far_ip = str(base[1]), str(base[2])
    subprocess.run(["ip", "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns.name], check=True)
    subprocess.run(["ip", "addr", "add", f"{host_ip}/30", "dev", link], check=True)
    subprocess.run(["ip", "link", "set", link, "up"], check=True)
    ns.run("ip", "addr", "add", f"{far_ip}/30", "dev", "eth0")
    ns.run("ip", "link", "set", "eth0", "up")
    try:
        yield ns, host_ip, far_ip
    finally:
        delete_link(link)


@pytest.fixture
def masters() -> Iterator[Callable[..., str]]:
    """Veth pairs in the stand-in host (both ends up) to make links from; removed afterwards."""
    made: list[str] = []

    def make(mtu: int = 1500) -> str:
        made.append(make_master(mtu))
        return made[-1]

    yield make
    for name in made:
        delete_link(name)


@pytest.fixture
def underlay_pair(
    plugin_dir: Path, reference_dir: Path, make_netns: Callable[[], NetNS], masters: Callable[..., str], tmp_path: Path
) -> Callable[..., tuple[Attach, Attach]]:
    """Ours and the reference's attachment of one plugin, each with its own master, namespace,
    subnets (differing only in their prefix) and data directory."""

    def make(plugin: str, families: tuple[int, ...] = (4,), prefixlen: int = 24) -> tuple[Attach, Attach]:
        pairs = [subnet_pair(prefixlen, f) for f in families]
        sides = []
        for i, directory in enumerate((plugin_dir, reference_dir)):
            data_dir = tmp_path / ("ours", "ref")[i]
            data_dir.mkdir(exist_ok=True)
            sides.append(Attach(directory / plugin, make_netns(), masters(), [p[i] for p in pairs], data_dir))
        return sides[0], sides[1]

    return make
