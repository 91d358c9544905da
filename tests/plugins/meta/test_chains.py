"""Whole chains through pycni's runtime: a main plugin, then meta plugins, ADD, CHECK and DEL,
and afterwards nothing of the container left on the host.

With `MAIN_IMPLS` these run our bridge -> our portmap, bandwidth, tuning and firewall,
the reference bridge -> ours, our bridge -> the reference portmap, bandwidth and tuning
(and the reference's all the way, as a baseline); and our calico -> ours or the reference's.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pycni.plugins.meta import _portmap_records as portmap_records
from pycni.plugins.meta.bandwidth import ifb_name
from pycni.runtime import CNIConfig, RuntimeConf
from pycni.runtime.api import PluginFailed
from pycni.spec.config import NetworkConfigList

from ...conftest import unique, unique_subnet, unique_subnet6
from ..main.test_calico import calico_conf, pool_env
from .conftest import MAIN_IMPLS, Attachment, Network, ask, free_port, links, nft_mentions, portmap_elements, sh

UPLINK_ADDRESS = "198.51.100.2"  # the stand-in host's uplink (scripts/in-netns.sh)
LIMITS = {"ingressRate": 50_000_000, "ingressBurst": 1_000_000, "egressRate": 50_000_000, "egressBurst": 1_000_000}
MAC = "02:42:ac:11:00:42"


def meta_plugins(tuning_dir: Path, ours: bool = True) -> list[dict[str, Any]]:
    """portmap, bandwidth, tuning; for ours, tuning's txQLen (the reference's 1.1.1 ignores it) and firewall."""
    plugins: list[dict[str, Any]] = [
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        {
            "type": "tuning",
            "dataDir": str(tuning_dir),
            "capabilities": {"mac": True},
            # The reference's CHECK does not replace IFNAME (its ADD does).
            "sysctl": {f"net.ipv4.conf.{'IFNAME' if ours else 'eth0'}.arp_ignore": "1"},
        },
    ]
    if ours:
        plugins[2]["txQLen"] = 500
        plugins.append({"type": "firewall", "ingressPolicy": "same-bridge"})
    return plugins


def capabilities(port: int) -> dict[str, Any]:
    return {
        "portMappings": [{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}],
        "bandwidth": LIMITS,
        "mac": MAC,
    }


def assert_applied(network: Network, att: Attachment, port: int, tuning_dir: Path) -> str:
    """The chain's effects are there; returns the host veth."""
    assert ask(network.gateway, port) == network.gateway
    assert ask(network.gateway6, port, timeout=10) == network.gateway6
    eth0 = att.ns.ip_json("link", "show", "eth0")[0]
    assert eth0["address"] == MAC
    tuning = next(p for p in network.conf["plugins"] if p["type"] == "tuning")
    assert eth0.get("txqlen") == tuning.get("txQLen", eth0.get("txqlen"))
    assert att.ns.run("cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore").stdout.strip() == "1"
    assert ifb_name(network.net.name, att.rt.container_id, "eth0") in links()
    assert (tuning_dir / f"{att.rt.container_id}_eth0.json").exists()
    host_veth = next(i.name for i in att.result.interfaces if not i.sandbox and i.name != network.bridge)
    qdiscs = json.loads(sh("tc", "-j", "qdisc", "show", "dev", host_veth))
    assert {"tbf", "ingress"} <= {q["kind"] for q in qdiscs}
    return host_veth


def assert_nothing_left(network: Network, att: Attachment, host_veth: str, tuning_dir: Path) -> None:
    cid = att.rt.container_id
    assert nft_mentions(cid) == [] and portmap_elements(cid) == []  # portmap's and firewall's nftables entries
    assert ifb_name(network.net.name, cid, "eth0") not in links()
    assert host_veth not in links()  # and with it its qdiscs
    assert not (tuning_dir / f"{cid}_eth0.json").exists()
    assert not Path(portmap_records.path(network.net.name, cid, "eth0")).exists()
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert cid not in saved  # the reference plugins' iptables rules


@pytest.mark.parametrize("main", MAIN_IMPLS)
def test_our_four_meta_plugins_in_one_chain(
    main: str, make_network: Any, make_netns: Any, tcp_server: Any, tmp_path: Path
) -> None:
    tuning_dir = tmp_path / "tuning"
    network = make_network(meta_plugins(tuning_dir), main=main, dual_stack=True)
    web, port = make_netns(), free_port()
    att = network.attach(web, capabilities(port))
    assert next(i for i in att.result.interfaces if i.sandbox).mac == MAC  # tuning's MAC in the result
    assert att.result.interfaces[-1].name == ifb_name(network.net.name, att.rt.container_id, "eth0")
    tcp_server(web, 8080)
    host_veth = assert_applied(network, att, port, tuning_dir)
    assert att.rt.container_id in sh("nft", "list", "table", "inet", "cni_firewall")
    network.check(att)
    network.detach(att)
    assert_nothing_left(network, att, host_veth, tuning_dir)


@pytest.mark.reference
@pytest.mark.parametrize("main", MAIN_IMPLS)
def test_reference_meta_plugins_after_the_main_plugin(
    main: str, make_network: Any, make_netns: Any, tcp_server: Any, tmp_path: Path
) -> None:
    """The reference portmap, bandwidth and tuning after `main`'s bridge. The reference portmap's
    CHECK always fails (it looks for its IPv4 rules in ip6tables, or for IPv6 rules a container
    without IPv6 cannot have): the rest of the chain is checked without it."""
    tuning_dir = tmp_path / "tuning"
    network = make_network(meta_plugins(tuning_dir, ours=False), main=main, impl="reference", dual_stack=True)
    web, port = make_netns(), free_port()
    att = network.attach(web, capabilities(port))
    tcp_server(web, 8080)
    host_veth = assert_applied(network, att, port, tuning_dir)
    with pytest.raises(PluginFailed, match=r'type="portmap" failed \(check\): could not check ipv6 dnat'):
        network.check(att)
    without_portmap = dict(network.conf, plugins=[p for p in network.conf["plugins"] if p["type"] != "portmap"])
    network.cni.check_network_list(NetworkConfigList.from_bytes(json.dumps(without_portmap).encode()), att.rt)
    network.detach(att)
    assert_nothing_left(network, att, host_veth, tuning_dir)


@pytest.mark.reference
@pytest.mark.parametrize("impl", ["ours", "reference"])
def test_meta_plugins_after_our_calico(
    impl: str, plugin_dir: Path, reference_dir: Path, make_netns: Any, tcp_server: Any, tmp_path: Path
) -> None:
    """pycni's other main plugin, calico (dual-stack, a veth with /32 and /128 routes and no bridge),
    then portmap, bandwidth and tuning: ours, or the reference's."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("calico", "calico-ipam"):
        (bin_dir / name).symlink_to(plugin_dir / name)
    for name in ("portmap", "bandwidth", "tuning"):
        (bin_dir / name).symlink_to((plugin_dir if impl == "ours" else reference_dir) / name)
    tuning_dir = tmp_path / "tuning"
    calico = calico_conf(tmp_path, ipam={"type": "calico-ipam", "assign_ipv6": "true"})
    del calico["cniVersion"], calico["name"]
    conf = {
        "cniVersion": "1.0.0",
        "name": unique("pct-cal-", 20),
        "plugins": [calico, *meta_plugins(tuning_dir, ours=False)],
    }
    net = NetworkConfigList.from_bytes(json.dumps(conf).encode())
    env = {"PATH": os.environ["PATH"], **pool_env(unique_subnet(24), unique_subnet6().replace("/64", "/48"))}
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "cache"), base_env=env)
    web, port = make_netns(), free_port()
    # As kubelet and containerd pass them: tuning refuses unknown CNI_ARGS otherwise (as the reference).
    args = [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", unique("web-", 12))]
    rt = RuntimeConf(unique("pctc", 20), web.path, "eth0", args=args, capability_args=capabilities(port))
    try:
        result = cni.add_network_list(net, rt)
        tcp_server(web, 8080)
        assert ask(UPLINK_ADDRESS, port) == UPLINK_ADDRESS  # the host's own address, DNATed in its output chain
        eth0 = web.ip_json("link", "show", "eth0")[0]
        assert eth0["address"] == MAC
        host_veth = next(i.name for i in result.interfaces if not i.sandbox)
        assert {"tbf", "ingress"} <= {q["kind"] for q in json.loads(sh("tc", "-j", "qdisc", "show", "dev", host_veth))}
        if impl == "ours":
            cni.check_network_list(net, rt)
        else:  # the reference portmap's CHECK fails whatever the container (see above)
            without_portmap = dict(conf, plugins=[p for p in conf["plugins"] if p["type"] != "portmap"])
            cni.check_network_list(NetworkConfigList.from_bytes(json.dumps(without_portmap).encode()), rt)
    finally:
        cni.del_network_list(net, rt)
    assert nft_mentions(rt.container_id) == [] and portmap_elements(rt.container_id) == []
    assert ifb_name(conf["name"], rt.container_id, "eth0") not in links() and host_veth not in links()
    assert not (tuning_dir / f"{rt.container_id}_eth0.json").exists()
    assert rt.container_id not in subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
