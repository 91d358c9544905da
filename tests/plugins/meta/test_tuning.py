"""tuning: sysctls and link settings applied in the container, restored on DEL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ...conftest import NetNS, run_plugin, unique
from .conftest import MAIN_IMPLS, make_cni_path


def link(ns: NetNS, ifname: str = "eth0") -> dict[str, Any]:
    (info,) = ns.ip_json("-d", "link", "show", ifname)
    return info


def sysctl(ns: NetNS, key: str) -> str:
    return ns.run("cat", "/proc/sys/" + key).stdout.strip()


@pytest.mark.parametrize("main", MAIN_IMPLS)
def test_applied_checked_and_restored(main: str, make_network: Any, netns: NetNS, tmp_path: Path) -> None:
    data_dir = tmp_path / "tuning"
    tuning = {
        "type": "tuning",
        "dataDir": str(data_dir),
        "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "net/ipv4/conf/all/arp_announce": "2"},
        "mtu": 1400,
        "promisc": True,
        "allmulti": True,
        "txQLen": 321,
        "capabilities": {"mac": True},
    }
    network = make_network([tuning], main=main)
    att = network.attach(netns, {"mac": "02:aa:bb:cc:dd:ee"})
    eth0 = link(netns)
    assert eth0["address"] == "02:aa:bb:cc:dd:ee" and eth0["mtu"] == 1400 and eth0["txqlen"] == 321
    assert "PROMISC" in eth0["flags"] and "ALLMULTI" in eth0["flags"]
    assert sysctl(netns, "net/ipv4/conf/eth0/arp_ignore") == "1"
    assert sysctl(netns, "net/ipv4/conf/all/arp_announce") == "2"
    container_if = next(i for i in att.result.interfaces if i.sandbox)
    assert container_if.mac == "02:aa:bb:cc:dd:ee"
    record = data_dir / f"{att.rt.container_id}_eth0.json"
    saved = json.loads(record.read_text())
    assert saved["mtu"] == 1500 and saved["promisc"] is False and isinstance(saved["txQLen"], int)
    network.check(att)
    # DEL restores, then the main plugin removes eth0; the record is gone either way.
    network.detach(att)
    assert not record.exists()


def test_del_restores_link_and_sysctls(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    netns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns.path}], "ips": []}
    conf = {
        "cniVersion": "1.0.0",
        "name": "tunenet",
        "type": "tuning",
        "dataDir": str(tmp_path),
        "mtu": 1300,
        "sysctl": {"net.ipv4.conf.eth0.arp_ignore": "2"},
        "prevResult": prev,
    }
    old_mac = link(netns)["address"]
    out = run_plugin(plugin_dir / "tuning", "ADD", conf, netns=netns.path, cni_args="MAC=02:00:00:00:00:42")
    assert out.returncode == 0, out.stdout
    assert link(netns)["address"] == "02:00:00:00:00:42" and link(netns)["mtu"] == 1300
    assert run_plugin(plugin_dir / "tuning", "DEL", conf, netns=netns.path, cni_args="MAC=02:00:00:00:00:42").returncode == 0
    assert link(netns)["address"] == old_mac and link(netns)["mtu"] == 1500
    assert sysctl(netns, "net/ipv4/conf/eth0/arp_ignore") == "0"
    assert list(tmp_path.iterdir()) == []


def test_mac_precedence_as_the_reference(plugin_dir: Path, reference_dir: Path, make_netns: Any, tmp_path: Path) -> None:
    """config < CNI_ARGS MAC < runtimeConfig.mac < args.cni.mac, for ours and the reference alike."""
    cases = [
        ({"mac": "02:00:00:00:00:01"}, "", "02:00:00:00:00:01"),
        ({"mac": "02:00:00:00:00:01"}, "MAC=02:00:00:00:00:02", "02:00:00:00:00:02"),
        ({"runtimeConfig": {"mac": "02:00:00:00:00:03"}}, "MAC=02:00:00:00:00:02", "02:00:00:00:00:03"),
        ({"runtimeConfig": {"mac": "02:00:00:00:00:03"}, "args": {"cni": {"mac": "02:00:00:00:00:04"}}}, "", "02:00:00:00:00:04"),
    ]
    for extra, cni_args, want in cases:
        for executable in (plugin_dir / "tuning", reference_dir / "tuning"):
            ns = make_netns()
            ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
            prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": ns.path}]}
            conf = {
                "cniVersion": "1.0.0",
                "name": "tunenet",
                "type": "tuning",
                "dataDir": str(tmp_path / unique()),
                "prevResult": prev,
            }
            conf.update(extra)
            out = run_plugin(executable, "ADD", conf, netns=ns.path, cni_args=cni_args)
            assert out.returncode == 0, (executable, out.stdout)
            assert link(ns)["address"] == want, (executable, extra, cni_args)
            assert out.json["interfaces"][0]["mac"] == want


@pytest.mark.parametrize(
    "key",
    ["kernel.hostname", "net/../kernel/hostname", "net.ipv4.conf.../x", "/etc/passwd", "vm.swappiness"],
)
def test_sysctl_outside_net_is_refused(plugin_dir: Path, netns: NetNS, tmp_path: Path, key: str) -> None:
    netns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns.path}]}
    conf = {
        "cniVersion": "1.0.0",
        "name": "n",
        "type": "tuning",
        "dataDir": str(tmp_path),
        "sysctl": {key: "1"},
        "prevResult": prev,
    }
    out = run_plugin(plugin_dir / "tuning", "ADD", conf, netns=netns.path)
    assert out.returncode == 1 and out.json["code"] == 7, out.stdout
    assert list(tmp_path.iterdir()) == []


def test_interface_names_with_dots(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    netns.run("ip", "link", "add", "eth0.5", "type", "veth", "peer", "name", "peer0")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0.5", "sandbox": netns.path}]}
    conf = {
        "cniVersion": "1.0.0",
        "name": "n",
        "type": "tuning",
        "dataDir": str(tmp_path),
        "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1", "net/ipv4/conf/eth0.5/arp_announce": "2"},
        "prevResult": prev,
    }
    out = run_plugin(plugin_dir / "tuning", "ADD", conf, netns=netns.path, ifname="eth0.5")
    assert out.returncode == 0, out.stdout
    assert sysctl(netns, "net/ipv4/conf/eth0.5/arp_ignore") == "1"
    assert sysctl(netns, "net/ipv4/conf/eth0.5/arp_announce") == "2"


@pytest.mark.reference
def test_our_loopback_then_reference_tuning(plugin_dir: Path, tmp_path: Path, netns: NetNS) -> None:
    """Our main plugin followed by the reference's meta plugin, through the runtime."""
    from pycni.runtime import CNIConfig, RuntimeConf
    from pycni.spec.config import NetworkConfigList

    path = make_cni_path(tmp_path, plugin_dir, main="ours", meta="reference")
    conf = {
        "cniVersion": "1.0.0",
        "name": "lo-tuned",
        "plugins": [
            {"type": "loopback"},
            {"type": "tuning", "dataDir": str(tmp_path / "tuning"), "sysctl": {"net.ipv4.conf.lo.arp_ignore": "1"}, "mtu": 9000},
        ],
    }
    net = NetworkConfigList.from_bytes(json.dumps(conf).encode())
    cni = CNIConfig([str(path)], cache_dir=str(tmp_path / "cache"))
    rt = RuntimeConf(container_id="pctlotune", netns=netns.path, ifname="lo")
    cni.add_network_list(net, rt)
    assert sysctl(netns, "net/ipv4/conf/lo/arp_ignore") == "1"
    assert link(netns, "lo")["mtu"] == 9000
    cni.check_network_list(net, rt)
    cni.del_network_list(net, rt)
    assert link(netns, "lo")["mtu"] == 65536


def test_gc_collects_only_leaked_records_of_its_network(make_network: Any, make_netns: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "tuning-gc"
    tuning = {"type": "tuning", "dataDir": str(data_dir), "mtu": 1400}
    network, other = make_network([tuning]), make_network([tuning])
    keep = network.attach(make_netns())
    leaked = network.attach(make_netns())
    other_att = other.attach(make_netns())
    # A record the reference plugin wrote (no network in it) is not ours to judge.
    (data_dir / "refcontainer_eth0.json").write_text(json.dumps({"mtu": 1500}))
    kept, gone, elsewhere = (data_dir / f"{a.rt.container_id}_eth0.json" for a in (keep, leaked, other_att))
    assert kept.exists() and gone.exists() and elsewhere.exists()
    out = network.gc_plugin("tuning", [keep])
    assert out.returncode == 0, out.stdout
    assert not gone.exists()
    assert kept.exists() and elsewhere.exists() and (data_dir / "refcontainer_eth0.json").exists()
    network.check(keep)


def test_missing_container_interface_is_a_clear_error(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns.path}]}
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "tuning", "dataDir": str(tmp_path), "mtu": 1400, "prevResult": prev}
    out = run_plugin(plugin_dir / "tuning", "ADD", conf, netns=netns.path)
    assert out.returncode == 1 and out.json["code"] == 7 and "container interface eth0 not found" in out.json["msg"]
    assert list(tmp_path.iterdir()) == []


def test_refused_link_settings_leave_no_data_dir(plugin_dir: Path, netns: NetNS, tmp_path: Path) -> None:
    """Found by fuzzing: an ADD the kernel refused (or an out-of-range txQLen) left the
    dataDir it had created for its record. Out of range is code 7 naming the key; a value the
    kernel refuses is rolled back, the directory with it."""
    netns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns.path}], "ips": []}
    data_dir = tmp_path / "tuning"
    base = {"cniVersion": "1.0.0", "name": "n", "type": "tuning", "dataDir": str(data_dir), "prevResult": prev}
    out = run_plugin(plugin_dir / "tuning", "ADD", {**base, "txQLen": 2**63}, netns=netns.path)
    assert out.returncode == 1 and out.json["code"] == 7 and "txQLen" in out.json["msg"], out.stdout
    out = run_plugin(plugin_dir / "tuning", "ADD", {**base, "promisc": True, "mtu": 70000}, netns=netns.path)
    assert out.returncode == 1 and out.json["code"] != 999, out.stdout
    assert not data_dir.exists()
    assert "PROMISC" not in link(netns)["flags"] and link(netns)["mtu"] == 1500
