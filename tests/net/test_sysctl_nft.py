"""Shared kernel helpers: sysctl (host and namespaced) and nftables transactions."""

from __future__ import annotations

import pytest

from pycni.net import nft, sysctl
from pycni.spec.errors import CNIError

from ..conftest import NetNS, unique


@pytest.mark.parametrize(
    "key",
    ["kernel.hostname", "net/../kernel/hostname", "net.ipv4.conf.../x", "net", "", "/etc/passwd", "net/ipv4/\0x"],
)
def test_keys_outside_net_are_refused(key: str) -> None:
    with pytest.raises(CNIError) as exc:
        sysctl.normalize(key)
    assert exc.value.code == 7


def test_namespaced_write_leaves_the_host_alone(netns: NetNS) -> None:
    key = "net.ipv4.conf.lo.accept_local"
    host_before = sysctl.read(key)
    new = "0" if sysctl.read(key, netns.path) == "1" else "1"
    previous = sysctl.write(key, new, netns.path)
    assert previous != new
    assert sysctl.read(key.replace(".", "/"), netns.path) == new
    assert netns.run("sysctl", "-n", key).stdout.strip() == new
    assert sysctl.read(key) == host_before


def test_missing_key_is_a_config_error(netns: NetNS) -> None:
    with pytest.raises(CNIError, match="does not exist"):
        sysctl.write("net/ipv4/conf/nosuchif/forwarding", "1", netns.path)


def test_nft_transaction_is_atomic() -> None:
    table = unique("pct_t", 20)
    good = [{"add": {"table": {"family": "inet", "name": table}}}]
    bad = [*good, {"add": {"chain": {"family": "inet", "table": table, "name": "c", "type": "nope", "hook": "input", "prio": 0}}}]
    try:
        with pytest.raises(CNIError) as exc:
            nft.run(bad, "test")
        assert exc.value.code == 100
        assert not nft.table_exists("inet", table), "a failed transaction must leave nothing"
        nft.run(good)
        assert nft.table_exists("inet", table)
        assert nft.list_objects(f"table inet {table}")[0]["table"]["name"] == table
    finally:
        nft.run_text(f"delete table inet {table}") if nft.table_exists("inet", table) else None
    assert nft.list_objects(f"table inet {table}") == []


def test_nft_from_inside_a_namespace_acts_there(netns: NetNS) -> None:
    """A thread inside a container's namespace gets that namespace's rules, not the host's
    (the process keeps one libnftables context, bound to its own namespace)."""
    from pycni.net import netns as nsmod

    host_table, inner_table = unique("pcth"), unique("pcti")
    nft.run_text(f"add table inet {host_table}")  # the kept context now exists, in the host
    try:

        def inside() -> tuple[bool, bool]:
            nft.run_text(f"add table inet {inner_table}")
            return nft.table_exists("inet", inner_table), nft.table_exists("inet", host_table)

        assert nsmod.run_in(netns.path, inside) == (True, False)
        assert not nft.table_exists("inet", inner_table)
        assert inner_table in netns.run("nft", "list", "tables").stdout
    finally:
        nft.run_text(f"delete table inet {host_table}")
