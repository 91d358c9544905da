"""tap (an upstream plugin newer than Debian's 1.1.1, so compared with its code, not run): the
device and its tun flags for each way the reference makes it, owner and group enforced by the
kernel, mtu, mac, a bridge in the container, IPAM, CHECK, DEL and clear errors."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from ...conftest import NetNS, run_plugin
from .underlay import IFNAME, Attach, link_state

Pair = Callable[..., tuple[Attach, Attach]]

TAP = {"cniVersion": "1.0.0", "name": "pcttap", "type": "tap"}
NOBODY = 65534
# Attaches a process to the persistent tap, as a VM monitor would (fails unless it may).
OPEN_TAP = """
import fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
flags = 0x0002 | 0x1000 | (0x0100 if sys.argv[2] == "mq" else 0)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", sys.argv[1].encode(), flags))
"""


def variant(**changes: Any) -> dict[str, Any]:
    return dict(json.loads(json.dumps(TAP)), **changes)


def run(side: Attach | NetNS, plugin_dir: Any, command: str, conf: dict[str, Any], **kw: Any) -> Any:
    ns = side if isinstance(side, NetNS) else side.ns
    return run_plugin(plugin_dir / "tap", command, conf, netns=kw.pop("netns", ns.path), ifname=IFNAME, **kw)


# name: (changes, expected tun flags as `ip -d` shows them)
FLAGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "as ip tuntap makes it": ({}, {"pi": False, "vnet_hdr": False, "persist": True}),
    "owner only": ({"owner": NOBODY}, {"pi": False, "vnet_hdr": False, "persist": True, "user": "nobody"}),
    "multi-queue, group only": ({"group": NOBODY, "multiQueue": True}, {"pi": False, "vnet_hdr": False, "multi_queue": True}),
    "as netlink makes it (owner and group)": ({"owner": 0, "group": 0}, {"pi": True, "vnet_hdr": True, "user": "root"}),
    "netlink, multi-queue": ({"owner": 0, "group": 0, "multiQueue": True}, {"pi": False, "vnet_hdr": True, "multi_queue": True}),
}


@pytest.mark.parametrize("case", list(FLAGS))
def test_the_device_is_made_as_the_reference_makes_it(case: str, plugin_dir: Any, netns: NetNS) -> None:
    changes, flags = FLAGS[case]
    conf = variant(mtu=1400, mac="0a:58:0a:f4:00:0a", **changes)
    out = run(netns, plugin_dir, "ADD", conf)
    assert out.returncode == 0, out.stdout
    assert out.json["interfaces"] == [{"name": IFNAME, "mac": "0a:58:0a:f4:00:0a", "sandbox": netns.path}]
    current = link_state(netns)
    assert (current["kind"], current["data"]["type"], current["mtu"], current["up"]) == ("tun", "tap", 1400, True)
    assert {k: current["data"].get(k) for k in flags} == flags
    assert run(netns, plugin_dir, "CHECK", dict(conf, prevResult=out.json)).returncode == 0
    for _ in range(2):
        assert run(netns, plugin_dir, "DEL", conf).returncode == 0
    assert IFNAME not in {link["ifname"] for link in netns.ip_json("link")}


@pytest.mark.parametrize(
    ("owner", "group", "allowed"), [(0, None, True), (1000, None, False), (None, 0, True), (None, 1000, False)]
)
def test_only_the_owner_or_group_may_open_it(
    owner: int | None, group: int | None, allowed: bool, plugin_dir: Any, netns: NetNS
) -> None:
    """A VM monitor without CAP_NET_ADMIN (here root without it) attaches only to a tap it owns."""
    conf = variant(**{k: v for k, v in (("owner", owner), ("group", group)) if v is not None})
    assert run(netns, plugin_dir, "ADD", conf).returncode == 0
    attach = netns.run("setpriv", "--bounding-set", "-net_admin", "/usr/bin/python3", "-c", OPEN_TAP, IFNAME, "sq", check=False)
    assert (attach.returncode == 0) == allowed, attach.stderr
    assert run(netns, plugin_dir, "DEL", conf).returncode == 0


def test_port_of_a_bridge_in_the_container_with_addresses(underlay_pair: Pair, plugin_dir: Any) -> None:
    ours, _ = underlay_pair("tap", (4, 6))
    ours.ns.run("ip", "link", "add", "br0", "type", "bridge")
    conf = variant(bridge="br0", ipam={"type": "host-local", "ranges": [[{"subnet": "{subnet0}"}], [{"subnet": "{subnet1}"}]]})
    out = ours.run("ADD", conf)
    assert out.returncode == 0, out.stdout
    current = link_state(ours.ns)
    assert current["master"] == "br0" and current["addresses"] == sorted(ip["address"] for ip in out.json["ips"])
    assert current["sysctls"]["net/ipv4/conf/{if}/arp_notify"] == "1"
    assert not link_state(ours.ns, "br0")["up"]  # the container's bridge is used as it is
    assert ours.run("CHECK", conf, prevResult=out.json).returncode == 0
    ours.ns.run("ip", "link", "set", IFNAME, "nomaster")
    ours.ns.run("ip", "link", "set", IFNAME, "address", "0a:58:00:00:00:02")
    bad = ours.run("CHECK", conf, prevResult=out.json)
    assert bad.returncode == 1 and "is not a port of br0" in bad.json["msg"] and "has MAC" in bad.json["msg"], bad.stdout
    assert ours.run("DEL", conf).returncode == 0
    assert IFNAME not in ours.names() and "br0" in ours.names() and ours.allocations() == []


def test_mac_from_cni_args_and_capability(plugin_dir: Any, netns: NetNS) -> None:
    for conf, args, mac in (
        (variant(mac="0a:58:00:00:00:01"), "IgnoreUnknown=1;MAC=0a:58:00:00:00:02", "0a:58:00:00:00:02"),
        (variant(runtimeConfig={"mac": "0a:58:00:00:00:03"}), "MAC=0a:58:00:00:00:02", "0a:58:00:00:00:03"),
    ):
        out = run(netns, plugin_dir, "ADD", conf, cni_args=args)
        assert out.returncode == 0 and out.json["interfaces"][0]["mac"] == mac, out.stdout
        assert run(netns, plugin_dir, "DEL", conf).returncode == 0


def test_del_leaves_another_kind_of_interface_alone(plugin_dir: Any, netns: NetNS) -> None:
    netns.run("ip", "link", "add", IFNAME, "type", "veth", "peer", "name", "other0")
    out = run(netns, plugin_dir, "ADD", TAP)
    assert out.returncode == 1 and out.json["code"] == 102 and "already exists" in out.json["msg"], out.stdout
    assert run(netns, plugin_dir, "DEL", TAP).returncode == 0
    assert link_state(netns)["kind"] == "veth"
    assert run(netns, plugin_dir, "DEL", TAP, netns="/run/netns/pct-gone").returncode == 0


@pytest.mark.parametrize(
    ("changes", "code", "fragment"),
    [
        ({"bridge": "pct-nobr"}, 7, "pct-nobr"),
        ({"bridge": "a-bridge-name-too-long"}, 7, 'invalid "bridge"'),
        ({"owner": -1}, 7, "'owner'"),
        ({"group": "wheel"}, 7, "'group'"),
        ({"mtu": 70000}, 7, "'mtu'"),
        ({"mac": "0a:58"}, 7, "invalid MAC address '0a:58' in \"mac\""),
        ({"multiQueue": "yes"}, 7, "'multiQueue'"),
        ({"ipam": {"type": "static", "addresses": [{"address": "192.0.2.5/24"}], "routes": [{"dst": "0.0.0.0/0",
          "gw": "198.18.0.1"}]}}, 100, "0.0.0.0/0"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error_and_leaves_nothing(
    changes: dict[str, Any], code: int, fragment: str, plugin_dir: Any, netns: NetNS
) -> None:
    out = run(netns, plugin_dir, "ADD", variant(**changes))
    assert out.returncode == 1 and out.json["code"] == code and fragment in out.json["msg"], out.stdout
    assert IFNAME not in {link["ifname"] for link in netns.ip_json("link")}


def test_selinux_context_needs_selinux(plugin_dir: Any, netns: NetNS) -> None:
    if subprocess.run(["test", "-d", "/sys/fs/selinux"], check=False).returncode == 0:
        pytest.skip("SELinux is enabled here: a context would be applied")
    out = run(netns, plugin_dir, "ADD", variant(selinuxContext="system_u:system_r:container_t:s0"))
    assert out.returncode == 1 and out.json["code"] == 101 and "SELinux context" in out.json["msg"], out.stdout
    assert IFNAME not in {link["ifname"] for link in netns.ip_json("link")}
