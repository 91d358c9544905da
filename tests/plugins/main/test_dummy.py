"""dummy (an upstream plugin newer than Debian's 1.1.1, so compared with its code, not run):
on a kernel without dummy links ADD fails naming the missing support and leaves nothing;
where the kernel has them, the result, the addresses, CHECK and DEL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from .underlay import (
    IFNAME,
    Attach,
    assert_del_is_idempotent,
    assert_fails_without_kernel_support,
    kernel_has,
    link_state,
    require_link_type,
)

Pair = Callable[..., tuple[Attach, Attach]]

CONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "pctdummy",
    "type": "dummy",
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "{subnet0}"}], [{"subnet": "{subnet1}"}]]},
}


def test_without_kernel_support_fails_and_leaves_nothing(underlay_pair: Pair) -> None:
    if kernel_has("dummy"):
        pytest.skip("this kernel has dummy links: their absence cannot be shown here")
    ours, _ = underlay_pair("dummy", (4, 6))
    assert_fails_without_kernel_support(ours, CONF, "dummy")


def test_ipam_is_required(underlay_pair: Pair) -> None:
    ours, _ = underlay_pair("dummy")
    out = ours.run("ADD", dict(CONF, ipam={}))
    assert out.returncode == 1 and out.json["code"] == 7 and "needs an IPAM plugin" in out.json["msg"], out.stdout
    assert IFNAME not in ours.names()
    assert ours.run("DEL", dict(CONF, ipam={})).returncode == 0  # nothing to release, nothing to remove


def test_add_check_del(underlay_pair: Pair) -> None:
    require_link_type("dummy")
    ours, _ = underlay_pair("dummy", (4, 6))
    out = ours.run("ADD", CONF)
    assert out.returncode == 0, out.stdout
    result = out.json
    assert result["interfaces"] == [
        {"name": IFNAME, "mac": ours.ns.ip_json("link", "show", IFNAME)[0]["address"], "sandbox": ours.ns.path}
    ]
    assert [ip["interface"] for ip in result["ips"]] == [0, 0]
    current = link_state(ours.ns)
    assert current["kind"] == "dummy" and current["up"]
    assert current["addresses"] == sorted(ip["address"] for ip in result["ips"])
    v4 = result["ips"][0]["address"].split("/")[0]
    assert ours.ns.run("ping", "-c", "1", "-W", "1", v4, check=False).returncode == 0
    assert ours.run("CHECK", CONF, prevResult=result).returncode == 0
    ours.ns.run("ip", "link", "set", IFNAME, "down")
    bad = ours.run("CHECK", CONF, prevResult=result)
    assert bad.returncode == 1 and "is down" in bad.json["msg"], bad.stdout
    assert_del_is_idempotent(ours, CONF)
