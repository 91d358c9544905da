"""host-device: the reference's result and kernel state, the device given back as the host had
it (name, MTU, MAC, alias, addresses, routes, state), traffic through it, interoperation with
the reference's ADD and DEL, CHECK, idempotent DEL, GC, the four ways of naming the device
(kernelpath and pciBusID on a made-up sysfs tree: this VM has no PCI network device to lend)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pycni.net import hostdevice, netlink
from pycni.spec.errors import CNIError

from ...conftest import NetNS, delete_link, normalize_result, run_plugin, unique
from . import kernel_state as ks
from .underlay import IFNAME, Attach, assert_del_is_idempotent, comparable, link_state

STATE_DIR = Path("/run/cni/host-device")
CONF: dict[str, Any] = {"cniVersion": "1.0.0", "name": "pcthd", "type": "host-device", "device": "{master}"}


def variant(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return dict(json.loads(json.dumps(base)), **changes)


def random_mac() -> str:
    return "0a:58:" + ":".join(secrets.token_hex(1) for _ in range(4))


@pytest.fixture
def devices(make_netns: Callable[[], NetNS]) -> Iterator[Callable[[], tuple[str, NetNS, str]]]:
    """Host devices to lend: one end of a veth pair in the stand-in host, configured as a host
    would (MTU 1400, its own MAC, an alias, IPv4 and IPv6 addresses, a static route); the other
    end in a namespace of its own ("far", 198.18.x.1/24). Returns (device, far, host prefix)."""
    made: list[str] = []
    octets = iter(secrets.SystemRandom().sample(range(256), 32))  # one subnet per device, none shared

    def make() -> tuple[str, NetNS, str]:
        device, far, octet = unique("pctd"), make_netns(), next(octets)
        prefix = f"198.18.{octet}."
        subprocess.run(["ip", "link", "add", device, "type", "veth", "peer", "name", "far0", "netns", far.name], check=True)
        made.append(device)
        for cmd in (
            ["link", "set", device, "mtu", "1400", "address", random_mac(), "alias", "pct-orig", "up"],
            ["addr", "add", f"{prefix}9/24", "dev", device],
            ["addr", "add", f"2001:db8:{octet:x}::9/64", "dev", device, "nodad"],
            ["route", "add", f"198.19.{octet}.0/24", "via", f"{prefix}1", "dev", device],
        ):
            subprocess.run(["ip", *cmd], check=True)
        far.run("ip", "addr", "add", f"{prefix}1/24", "dev", "far0")
        far.run("ip", "link", "set", "far0", "up")
        return device, far, prefix

    yield make
    for device in made:
        delete_link(device)


def host_view(device: str) -> dict[str, Any]:
    """The device as the host sees it: what DEL must give back."""
    found = ks.ip_json("-d", "addr", "show", device)
    if not found:
        return {}
    (link,) = found
    routes = [r for r in ks.routes(None, device) if r.get("protocol") != "kernel"]
    return {
        "mtu": link.get("mtu"),
        "mac": link.get("address"),
        "up": "UP" in link.get("flags", []),
        "alias": link.get("ifalias", ""),
        "addresses": sorted(
            f"{a['local']}/{a['prefixlen']} {'nodad' if a.get('nodad') else ''}"
            for a in link["addr_info"]
            if a.get("scope") != "link"
        ),
        "routes": routes,
    }


@pytest.fixture
def pair(plugin_dir: Path, reference_dir: Path, make_netns: Callable[[], NetNS], devices: Any, tmp_path: Path) -> Any:
    def make(families: tuple[int, ...] = (4,)) -> tuple[Attach, Attach]:
        sides = []
        for i, directory in enumerate((plugin_dir, reference_dir)):
            data_dir = tmp_path / ("ours", "ref")[i]
            data_dir.mkdir(exist_ok=True)
            subnets = [f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24"]
            subnets += [f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}::/64"] if 6 in families else []
            sides.append(Attach(directory / "host-device", make_netns(), devices()[0], subnets, data_dir))
        return sides[0], sides[1]

    return make


IPV4 = variant(CONF, ipam={"type": "host-local", "subnet": "{subnet0}", "routes": [{"dst": "0.0.0.0/0"}]})
DUAL = variant(CONF, ipam={"type": "host-local", "ranges": [[{"subnet": "{subnet0}"}], [{"subnet": "{subnet1}"}]]})
PARITY: dict[str, tuple[dict[str, Any], tuple[int, ...]]] = {
    "no IPAM": (CONF, (4,)),
    "IPv4": (IPV4, (4,)),
    "IPv4 + IPv6": (DUAL, (4, 6)),
    "cniVersion 0.4.0": (variant(DUAL, cniVersion="0.4.0"), (4, 6)),
}


def container_state(side: Attach) -> dict[str, Any]:
    state = link_state(side.ns)
    state.pop("parent")  # the peer of each side's veth
    return state


@pytest.mark.reference
@pytest.mark.parametrize("case", list(PARITY))
@pytest.mark.difference("host-device-restore")
def test_same_result_and_container_state_as_reference_and_given_back_better(case: str, pair: Any) -> None:
    template, families = PARITY[case]
    ours, ref = pair(families)
    before = {side.master: host_view(side.master) for side in (ours, ref)}
    results = []
    for side in (ours, ref):
        out = side.run("ADD", template)
        assert out.returncode == 0, (side.executable, out.stdout)
        results.append(out.json)
        assert out.json["interfaces"][0]["mac"] == before[side.master]["mac"]  # the device keeps its MAC
    assert comparable(ours, ref, normalize_result(results[0])) == normalize_result(results[1])
    assert comparable(ours, ref, container_state(ours)) == container_state(ref)
    assert container_state(ours)["alias"] == ours.master and container_state(ours)["mtu"] == 1400
    for side in (ours, ref):
        assert side.run("DEL", template).returncode == 0
        assert IFNAME not in side.names() and side.allocations() == []
    assert host_view(ours.master) == before[ours.master]
    # The reference gives it back down, without its addresses and routes, its alias overwritten.
    assert host_view(ref.master) == dict(before[ref.master], up=False, alias=ref.master, addresses=[], routes=[])
    assert not list(STATE_DIR.glob(f"pcthd/{ours.container_id}-*"))


@pytest.mark.difference("host-device-restore")
def test_given_back_as_the_host_had_it_whatever_the_container_did(devices: Any, plugin_dir: Path, netns: NetNS) -> None:
    device, _far, prefix = devices()
    before = host_view(device)
    conf = variant(CONF, device=device, ipam={"type": "static", "addresses": [{"address": f"{prefix}2/24"}]})
    out = run_plugin(plugin_dir / "host-device", "ADD", conf, netns=netns.path, ifname=IFNAME)
    assert out.returncode == 0, out.stdout
    assert netns.run("ping", "-c", "1", "-W", "2", f"{prefix}1", check=False).returncode == 0  # through the lent device
    assert host_view(device) == {}  # gone from the host
    netns.run("ip", "link", "set", IFNAME, "down")
    netns.run("ip", "link", "set", IFNAME, "mtu", "1300", "address", random_mac(), "alias", "changed")
    assert run_plugin(plugin_dir / "host-device", "DEL", conf, netns=netns.path, ifname=IFNAME).returncode == 0
    assert host_view(device) == before
    assert subprocess.run(["ping", "-c", "1", "-W", "2", f"{prefix}1"], capture_output=True, check=False).returncode == 0


def test_a_failed_add_gives_everything_back(devices: Any, plugin_dir: Path, netns: NetNS) -> None:
    device, _far, _prefix = devices()
    before = host_view(device)
    ipam = {"type": "static", "addresses": [{"address": "192.0.2.5/24"}], "routes": [{"dst": "0.0.0.0/0", "gw": "198.51.100.77"}]}
    out = run_plugin(plugin_dir / "host-device", "ADD", variant(CONF, device=device, ipam=ipam), netns=netns.path, ifname=IFNAME)
    assert out.returncode == 1 and out.json["code"] == 100 and "0.0.0.0/0" in out.json["msg"], out.stdout
    assert host_view(device) == before and IFNAME not in {link["ifname"] for link in netns.ip_json("link")}
    assert not list(STATE_DIR.glob("pcthd/pct-container-*"))


@pytest.mark.reference
def test_interoperates_with_the_reference(devices: Any, plugin_dir: Path, reference_dir: Path, netns: NetNS) -> None:
    """Each DEL gives back what the other's ADD lent (the alias names the device)."""
    device = devices()[0]
    conf = variant(CONF, device=device)
    for adder, deleter in ((reference_dir, plugin_dir), (plugin_dir, reference_dir)):
        assert run_plugin(adder / "host-device", "ADD", conf, netns=netns.path, ifname=IFNAME).returncode == 0
        out = run_plugin(deleter / "host-device", "DEL", conf, netns=netns.path, ifname=IFNAME)
        assert out.returncode == 0, (deleter, out.stdout)
        assert host_view(device)["mtu"] == 1400 and IFNAME not in {link["ifname"] for link in netns.ip_json("link")}
    # Our record of the second ADD is left for GC (the reference's DEL knows nothing of it).
    gc = variant(conf, cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})
    assert run_plugin(plugin_dir / "host-device", "GC", gc).returncode == 0
    assert not list(STATE_DIR.glob("pcthd/pct-container-*"))


def test_check(pair: Any) -> None:
    ours, _ = pair((4, 6))
    result = ours.run("ADD", DUAL).json
    assert ours.run("CHECK", DUAL, prevResult=result).returncode == 0
    ours.ns.run("ip", "link", "set", IFNAME, "address", random_mac())
    ours.ns.run("ip", "-4", "addr", "flush", "dev", IFNAME)
    bad = ours.run("CHECK", DUAL, prevResult=result)
    assert bad.returncode == 1 and bad.json["code"] == 100, bad.stdout
    assert "has MAC" in bad.json["msg"] and "does not have address" in bad.json["msg"]
    assert ours.run("DEL", DUAL).returncode == 0


def test_del_is_idempotent(pair: Any) -> None:
    ours, _ = pair()
    before = host_view(ours.master)
    assert ours.run("ADD", IPV4).returncode == 0
    assert_del_is_idempotent(ours, IPV4)
    assert host_view(ours.master) == before


def test_gc_gives_back_what_the_runtime_forgot(devices: Any, plugin_dir: Path, make_netns: Callable[[], NetNS]) -> None:
    """Three lent devices: one still valid; one in a container the runtime forgot; one whose
    container went away (the kernel hands a physical device back to the host under the name it
    had inside). GC gives the last two back, as the host had them."""
    lent = []
    for i in range(3):
        device, ns = devices()[0], make_netns()
        conf = variant(CONF, cniVersion="1.1.0", device=device)
        out = run_plugin(plugin_dir / "host-device", "ADD", conf, netns=ns.path, container_id=f"pctgc{i}", ifname=f"net{i}")
        assert out.returncode == 0, out.stdout
        lent.append((device, ns, conf))
    befores = [host_view(device) for device, _ns, _conf in lent]
    assert all(view == {} for view in befores)
    _, gone_ns, _ = lent[2]
    gone_ns.run("ip", "link", "set", "net2", "netns", str(os.getpid()))  # what the kernel does to a physical device
    subprocess.run(["ip", "netns", "del", gone_ns.name], check=True)
    valid = [{"containerID": "pctgc0", "ifname": "net0"}]
    conf = variant(CONF, cniVersion="1.1.0", **{"cni.dev/valid-attachments": valid})
    assert run_plugin(plugin_dir / "host-device", "GC", conf).returncode == 0
    assert host_view(lent[0][0]) == {} and "net0" in {link["ifname"] for link in lent[0][1].ip_json("link")}
    for device, _ns, _conf in lent[1:]:
        view = host_view(device)
        assert view["mtu"] == 1400 and view["alias"] == "pct-orig" and view["up"] and len(view["addresses"]) == 2
    assert [p.name for p in STATE_DIR.glob("pcthd/pctgc*")] == ["pctgc0-net0.json"]
    first_device, first_ns, first_conf = lent[0]
    out = run_plugin(plugin_dir / "host-device", "DEL", first_conf, netns=first_ns.path, container_id="pctgc0", ifname="net0")
    assert out.returncode == 0 and host_view(first_device)["up"]


# -- naming the device ------------------------------------------------------------


def test_device_by_mac(devices: Any, plugin_dir: Path, netns: NetNS) -> None:
    device = devices()[0]
    mac = host_view(device)["mac"]
    conf = {"cniVersion": "1.0.0", "name": "pcthd", "type": "host-device", "hwaddr": mac.upper()}
    out = run_plugin(plugin_dir / "host-device", "ADD", conf, netns=netns.path, ifname=IFNAME)
    assert out.returncode == 0 and out.json["interfaces"][0]["mac"] == mac, out.stdout
    assert link_state(netns)["alias"] == device
    assert run_plugin(plugin_dir / "host-device", "DEL", conf, netns=netns.path, ifname=IFNAME).returncode == 0
    assert host_view(device)["up"]


def _fake_sysfs(root: Path, device: str) -> None:
    """A made-up sysfs: a PCI network device, a virtio one, one bound to vfio-pci (DPDK), one
    with no interface, and a kernel device path; each names `device` where it has a netdev."""
    for path in ("bus/pci/devices/0000:3d:00.1/net", "bus/pci/devices/0000:3d:00.2/virtio7/net", "devices/platform/nic0/net"):
        (root / path / device).mkdir(parents=True)
    drivers = root / "bus/pci/drivers"
    for name in ("ixgbe", "vfio-pci"):
        (drivers / name).mkdir(parents=True)
    for address, driver in (("0000:3d:00.1", "ixgbe"), ("0000:3d:00.3", "vfio-pci"), ("0000:3d:00.4", "")):
        (root / "bus/pci/devices" / address).mkdir(parents=True, exist_ok=True)
        if driver:
            (root / "bus/pci/devices" / address / "driver").symlink_to(drivers / driver)


def test_kernelpath_and_pci_lookups(devices: Any, tmp_path: Path) -> None:
    device = devices()[0]
    _fake_sysfs(tmp_path, device)
    with netlink.route(None) as ipr:
        assert hostdevice.by_kernelpath(ipr, "/sys/devices/platform/nic0", sysfs=str(tmp_path)) == device
        assert hostdevice.by_pci(ipr, "0000:3d:00.1", sysfs=str(tmp_path)) == device
        assert hostdevice.by_pci(ipr, "0000:3d:00.2", sysfs=str(tmp_path)) == device  # its virtio device's
        assert hostdevice.pci_driver("0000:3d:00.1", sysfs=str(tmp_path)) == "ixgbe"
        assert hostdevice.is_userspace_driven("0000:3d:00.3", sysfs=str(tmp_path))
        assert not hostdevice.is_userspace_driven("0000:3d:00.1", sysfs=str(tmp_path))
        for call, fragment in (
            (lambda: hostdevice.by_pci(ipr, "0000:3d:00.4", sysfs=str(tmp_path)), "bound to no driver"),
            (lambda: hostdevice.by_pci(ipr, "0000:3d:00.9", sysfs=str(tmp_path)), "does not exist"),
            (lambda: hostdevice.by_kernelpath(ipr, "/sys/devices/platform/nic9", sysfs=str(tmp_path)), "no network devices"),
        ):
            with pytest.raises(CNIError, match=fragment):
                call()


def _pci_without_netdev() -> str:
    for path in sorted(Path("/sys/bus/pci/devices").glob("*")):
        if not (path / "net").exists() and not list(path.glob("virtio*/net")):
            return path.name
    pytest.skip("every PCI device of this machine is a network device")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"device": "pct-nodevice"}, "host device 'pct-nodevice' does not exist"),
        ({"device": "", "pciBusID": "0000:ff:1f.7"}, "PCI device 0000:ff:1f.7 does not exist"),
        ({"device": "", "pciBusID": "{pci}"}, "is not a network device with an interface"),
        ({"runtimeConfig": {"deviceID": "0000:ff:1e.7"}}, "PCI device 0000:ff:1e.7 does not exist"),
        ({"device": "", "kernelpath": "/sys/devices/pct-nothere"}, "no network devices at /sys/devices/pct-nothere/net"),
        ({"device": "", "kernelpath": "devices/x"}, "must be an absolute path beginning with /sys/devices/"),
        ({"device": "", "hwaddr": "0a:58:00:00:00:00:01"}, "invalid MAC address"),
        ({"device": "", "hwaddr": "0a:58:ff:ff:ff:fe"}, "no host interface has the MAC address 0a:58:ff:ff:ff:fe"),
        ({"device": ""}, 'specify either "device", "hwaddr", "kernelpath" or "pciBusID"'),
    ],
)
def test_bad_input_is_a_clear_error_and_lends_nothing(
    changes: dict[str, Any], fragment: str, devices: Any, plugin_dir: Path, netns: NetNS
) -> None:
    device = devices()[0]
    before = host_view(device)
    conf = json.loads(json.dumps(variant(CONF, **changes)).replace("{master}", device).replace("{pci}", _pci_without_netdev()))
    out = run_plugin(plugin_dir / "host-device", "ADD", conf, netns=netns.path, ifname=IFNAME)
    assert out.returncode == 1 and out.json["code"] == 7 and fragment in out.json["msg"], out.stdout
    assert host_view(device) == before and IFNAME not in {link["ifname"] for link in netns.ip_json("link")}
