"""The reference plugins' own integration scenarios (containernetworking/plugins,
integration/: basic-ptp, chained-ptp-bandwidth, chained-bridge-bandwidth beside a basic
bridge), with our plugins in place of the reference's, under Go's libcni as the runtime.

The configurations are the scenarios' own (addresses made unique, data directories under
the test's): the ptp + bandwidth one gives its limits as `"runtimeConfig": {"bandWidth":
...}` in the configuration, which the Go plugin reads through encoding/json's
case-insensitive keys. Throttling is shown by the token buckets' counters: traffic beyond
the burst makes the tbf of the limited container (both directions) hold packets back, and
the neighbour on the unlimited network has no bucket at all.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from pycni.plugins.meta.bandwidth import ifb_name

from ..conftest import NetNS, delete_link, unique, unique_subnet
from .conftest import drive

pytestmark = pytest.mark.reference

ECHO = (
    "import socket,sys\n"
    "s=socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',int(sys.argv[1])))\n"
    "s.listen(4)\n"
    "print('ready',flush=True)\n"
    "while True:\n"
    "    c,_=s.accept()\n"
    "    while True:\n"
    "        d=c.recv(65536)\n"
    "        if not d: break\n"
    "        c.sendall(d)\n"
    "    c.close()\n"
)
SEND = (
    "import socket,sys\n"
    "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=60)\n"
    "n=int(sys.argv[3])\n"
    "s.sendall(b'a'*n)\n"
    "s.shutdown(socket.SHUT_WR)\n"
    "got=0\n"
    "while True:\n"
    "    d=s.recv(65536)\n"
    "    if not d: break\n"
    "    got+=len(d)\n"
    "print(got)\n"
)


def env_for(bin_dir: Path, tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, CNI_PATH=str(bin_dir), CNI_CACHE_DIR=str(tmp_path / "cache"), PYCNI_LOG_FILE=str(tmp_path / "log"))


def basic_ptp(subnet: str, data_dir: Path) -> dict[str, Any]:
    """integration/testdata/basic-ptp.json (a single configuration, version 0.3.0)."""
    return {
        "cniVersion": "0.3.0",
        "name": "basic-ptp",
        "type": "ptp",
        "ipMasq": True,
        "mtu": 512,
        "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(data_dir)},
    }


def chained_ptp_bandwidth(subnet: str, data_dir: Path) -> dict[str, Any]:
    """integration/testdata/chained-ptp-bandwidth.conflist: the limits as runtimeConfig.bandWidth."""
    return {
        "cniVersion": "0.3.1",
        "name": "chained-ptp-bandwidth",
        "plugins": [
            {
                "type": "ptp",
                "ipMasq": True,
                "mtu": 512,
                "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(data_dir)},
            },
            {
                "type": "bandwidth",
                "runtimeConfig": {"bandWidth": {"ingressRate": 800, "ingressBurst": 200, "egressRate": 800, "egressBurst": 200}},
            },
        ],
    }


def bridge_network(bridge: str, subnet: str, data_dir: Path, limited: bool) -> dict[str, Any]:
    """integration/testdata/chained-bridge-bandwidth/ and basic-bridge/ network-chain-test.conflist."""
    plugins: list[dict[str, Any]] = [
        {
            "type": "bridge",
            "bridge": bridge,
            "isDefaultGateway": True,
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(data_dir)},
        }
    ]
    if limited:
        plugins.append(
            {"type": "bandwidth", "ingressRate": 8000, "ingressBurst": 16000, "egressRate": 8000, "egressBurst": 16000}
        )
    return {"cniVersion": "0.3.1", "name": "network-chain-test", "plugins": plugins}


def write(netdir: Path, conf: dict[str, Any]) -> None:
    netdir.mkdir(exist_ok=True)
    suffix = ".conflist" if "plugins" in conf else ".conf"
    (netdir / f"10-{conf['name']}{suffix}").write_text(json.dumps(conf))


def address(ns: NetNS) -> str:
    (link,) = ns.ip_json("-4", "addr", "show", "eth0")
    return str(link["addr_info"][0]["local"])


def tbf(dev: str) -> dict[str, Any]:
    out = subprocess.run(["tc", "-s", "-j", "qdisc", "show", "dev", dev], capture_output=True, text=True, check=True).stdout
    found = [q for q in json.loads(out or "[]") if q["kind"] == "tbf"]
    return found[0] if found else {}


@pytest.mark.parametrize("scenario", ["basic-ptp", "chained-ptp-bandwidth"])
def test_ptp_scenarios(scenario: str, libcni_driver: Path, plugin_dir: Path, make_netns: Any, tmp_path: Path) -> None:
    """`cnitool add`, the container has an address of the subnet, `cnitool del`."""
    subnet = unique_subnet()
    make = basic_ptp if scenario == "basic-ptp" else chained_ptp_bandwidth
    conf = make(subnet, tmp_path / "ipam")
    netdir = tmp_path / "net.d"
    write(netdir, conf)
    ns = make_netns()
    env = env_for(plugin_dir, tmp_path)
    result = json.loads(drive(libcni_driver, "add", netdir, conf["name"], ns.path, "cnitool-1", env))
    assert address(ns).startswith(subnet.rsplit(".", 1)[0] + "."), ns.ip_json("addr")
    host_veth = next(i["name"] for i in result["interfaces"] if not i.get("sandbox"))
    if scenario == "chained-ptp-bandwidth":
        # runtimeConfig.bandWidth was read: 800 bit/s both ways.
        assert tbf(host_veth)["options"]["rate"] == 100
        assert tbf(ifb_name(conf["name"], "cnitool-1", "eth0"))["options"]["rate"] == 100
    drive(libcni_driver, "del", netdir, conf["name"], ns.path, "cnitool-1", env)
    assert "eth0" not in {link["ifname"] for link in ns.ip_json("link")}


def test_bandwidth_limits_only_the_restricted_veth(
    libcni_driver: Path, plugin_dir: Path, make_netns: Any, tmp_path: Path
) -> None:
    """Two containers, one on the chained bridge + bandwidth network (8000 bit/s, burst 16000
    bits), one on the basic bridge network; an echo server in each; traffic beyond the burst."""
    bridges = [unique("pctbr"), unique("pctbr")]
    namespaces = [make_netns(), make_netns()]
    env = env_for(plugin_dir, tmp_path)
    netdirs = [tmp_path / "chained", tmp_path / "basic"]
    servers: list[subprocess.Popen[str]] = []
    try:
        for i, limited in enumerate((True, False)):
            write(netdirs[i], bridge_network(bridges[i], unique_subnet(), tmp_path / f"ipam{i}", limited))
            drive(libcni_driver, "add", netdirs[i], "network-chain-test", namespaces[i].path, f"cnitool-{i}", env)
            proc = subprocess.Popen(
                ["ip", "netns", "exec", namespaces[i].name, "python3", "-c", ECHO, "7000"],
                stdout=subprocess.PIPE,
                text=True,
            )
            servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        limited_ip, free_ip = address(namespaces[0]), address(namespaces[1])
        limited_veth = next(p for p in _ports(bridges[0]))
        free_veth = next(p for p in _ports(bridges[1]))
        ifb = ifb_name("network-chain-test", "cnitool-0", "eth0")
        # The unlimited neighbour echoes 20000 bytes (as the scenario sends) and has no bucket.
        echoed = subprocess.run(["python3", "-c", SEND, free_ip, "7000", "20000"], capture_output=True, text=True, timeout=60)
        assert echoed.stdout.strip() == "20000", echoed.stderr
        assert tbf(free_veth) == {}
        # The restricted one: 20000 bytes is ten times its burst; both buckets start holding back.
        assert tbf(limited_veth)["options"]["rate"] == 1000 and tbf(ifb)["options"]["rate"] == 1000
        sender = subprocess.Popen(["python3", "-c", SEND, limited_ip, "7000", "20000"], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not (tbf(limited_veth).get("overlimits") and tbf(ifb).get("overlimits")):
                assert time.monotonic() < deadline, (tbf(limited_veth), tbf(ifb))
                time.sleep(0.2)
        finally:
            sender.kill()
            sender.wait()
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        for i, ns in enumerate(namespaces):
            drive(libcni_driver, "del", netdirs[i], "network-chain-test", ns.path, f"cnitool-{i}", env)
        for bridge in bridges:
            delete_link(bridge)
    assert ifb_name("network-chain-test", "cnitool-0", "eth0") not in {
        link["ifname"] for link in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
    }


def _ports(bridge: str) -> list[str]:
    out = subprocess.run(["ip", "-j", "link", "show", "master", bridge], capture_output=True, text=True, check=True).stdout
    return [link["ifname"] for link in json.loads(out)]
