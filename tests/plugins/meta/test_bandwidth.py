"""bandwidth with real traffic: iperf3 into and out of a limited container."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from pycni.plugins.meta.bandwidth import ifb_name

from ...conftest import NetNS, run_plugin
from .conftest import MAIN_IMPLS, links

RATE = 20_000_000  # bits/s
BURST = 1_000_000  # bits
BANDWIDTH = {"type": "bandwidth", "capabilities": {"bandwidth": True}}
LIMITS = {"ingressRate": RATE, "ingressBurst": BURST, "egressRate": RATE, "egressBurst": BURST}


def iperf(server_ns: NetNS, address: str, reverse: bool, seconds: int = 2) -> float:
    """Bits per second received, host client <-> server in `server_ns` (reverse: the server sends)."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns.name, "iperf3", "-s", "-1", "-p", "5201"], stdout=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            argv = ["iperf3", "-c", address, "-p", "5201", "-t", str(seconds), "-O", "1", "-J"] + (["-R"] if reverse else [])
            proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
            data = json.loads(proc.stdout or "{}")
            if "error" not in data and proc.returncode == 0:
                return float(data["end"]["sum_received"]["bits_per_second"])
            if time.monotonic() > deadline:
                raise AssertionError(f"iperf3 failed: {data.get('error', proc.stderr)}")
            time.sleep(0.2)
    finally:
        server.kill()
        server.wait()


@pytest.mark.parametrize("main", MAIN_IMPLS)
def test_limited_container_and_unlimited_neighbour(main: str, make_network: Any, make_netns: Any) -> None:
    network = make_network([BANDWIDTH], main=main)
    limited_ns, free_ns = make_netns(), make_netns()
    limited = network.attach(limited_ns, {"bandwidth": LIMITS})
    free = network.attach(free_ns)
    ifb = ifb_name(network.net.name, limited.rt.container_id, "eth0")
    assert [i.name for i in limited.result.interfaces][-1] == ifb
    assert ifb in links()
    into = iperf(limited_ns, limited.address(), reverse=False)
    out_of = iperf(limited_ns, limited.address(), reverse=True)
    assert 0.8 * RATE <= into <= 1.2 * RATE, f"into the container: {into / 1e6:.1f} Mbit/s"
    assert 0.8 * RATE <= out_of <= 1.2 * RATE, f"out of the container: {out_of / 1e6:.1f} Mbit/s"
    neighbour = iperf(free_ns, free.address(), reverse=False)
    assert neighbour > 5 * RATE, f"the unlimited neighbour: {neighbour / 1e6:.1f} Mbit/s"
    network.check(limited)
    host_veth = limited.result.interfaces[1].name
    network.detach(limited)
    assert ifb not in links()
    qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", host_veth], capture_output=True, text=True).stdout
    assert "tbf" not in qdiscs and "ingress" not in qdiscs


@pytest.mark.parametrize(
    ("limits", "needle"),
    [
        ({"ingressRate": 1000}, "ingressBurst"),
        ({"egressBurst": 1000}, "egressRate"),
        ({"ingressRate": 1000, "ingressBurst": 8 * 2**32}, "ingressBurst"),
        ({"egressRate": -1, "egressBurst": 10}, "egressRate"),
    ],
)
@pytest.mark.difference("error-codes")
def test_bad_limits_are_code_7(plugin_dir: Any, netns: NetNS, limits: dict[str, int], needle: str) -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns.path}]}
    conf = {"cniVersion": "1.0.0", "name": "bw", "type": "bandwidth", "prevResult": prev, **limits}
    out = run_plugin(plugin_dir / "bandwidth", "ADD", conf, netns=netns.path)
    assert out.returncode == 1 and out.json["code"] == 7 and needle in out.json["msg"], out.stdout
    runtime = {
        "cniVersion": "1.0.0",
        "name": "bw",
        "type": "bandwidth",
        "prevResult": prev,
        "runtimeConfig": {"bandwidth": limits},
    }
    out = run_plugin(plugin_dir / "bandwidth", "ADD", runtime, netns=netns.path)
    assert out.returncode == 1 and out.json["code"] == 7 and needle in out.json["msg"], out.stdout


@pytest.mark.difference("bandwidth-ifb")
def test_ifb_names_differ_per_interface() -> None:
    assert ifb_name("net", "c1", "eth0") != ifb_name("net", "c1", "eth1")
    assert all(len(ifb_name("n" * 200, "c" * 200, i)) <= 15 for i in ("eth0", "net1"))


def test_static_limits_win_over_the_capability(make_network: Any, make_netns: Any) -> None:
    static = {"type": "bandwidth", "capabilities": {"bandwidth": True}, "ingressRate": 8_000_000, "ingressBurst": 80_000}
    network = make_network([static])
    att = network.attach(make_netns(), {"bandwidth": LIMITS})
    host_veth = att.result.interfaces[1].name
    out = subprocess.run(["tc", "-j", "qdisc", "show", "dev", host_veth], capture_output=True, text=True, check=True).stdout
    tbf = next(q for q in json.loads(out) if q["kind"] == "tbf")
    assert tbf["options"]["rate"] == 1_000_000  # bytes/s: the static 8 Mbit/s, not the capability's
    assert ifb_name(network.net.name, att.rt.container_id, "eth0") not in links()  # no egress limit statically


def qdisc_kinds(dev: str) -> set[str]:
    out = subprocess.run(["tc", "-j", "qdisc", "show", "dev", dev], capture_output=True, text=True, check=True).stdout
    return {q["kind"] for q in json.loads(out)}


@pytest.mark.difference("bandwidth-ifb")
def test_del_removes_qdiscs_and_ifb_and_is_idempotent(plugin_dir: Any, make_network: Any, make_netns: Any) -> None:
    """bandwidth's own DEL (before the main plugin deletes the veth): the host veth is clean again."""
    network = make_network([BANDWIDTH])
    att = network.attach(make_netns(), {"bandwidth": LIMITS})
    host_veth = att.result.interfaces[1].name
    ifb = ifb_name(network.net.name, att.rt.container_id, "eth0")
    assert {"tbf", "ingress"} <= qdisc_kinds(host_veth) and ifb in links()
    conf = {
        "cniVersion": "1.0.0",
        "name": network.net.name,
        "type": "bandwidth",
        "runtimeConfig": {"bandwidth": LIMITS},
        "prevResult": att.result.to_dict(),
    }
    for _ in range(2):
        out = run_plugin(plugin_dir / "bandwidth", "DEL", conf, netns=att.ns.path, container_id=att.rt.container_id)
        assert out.returncode == 0, out.stdout
        assert not {"tbf", "ingress"} & qdisc_kinds(host_veth) and ifb not in links()
    network.detach(att)


def test_gc_collects_only_leaked_ifbs_of_its_network(make_network: Any, make_netns: Any) -> None:
    network, other = make_network([BANDWIDTH]), make_network([BANDWIDTH])
    keep = network.attach(make_netns(), {"bandwidth": LIMITS})
    leaked = network.attach(make_netns(), {"bandwidth": LIMITS})
    elsewhere = other.attach(make_netns(), {"bandwidth": LIMITS})
    keep_ifb, leaked_ifb, elsewhere_ifb = (ifb_name(a.net.name, a.rt.container_id, "eth0") for a in (keep, leaked, elsewhere))
    out = network.gc_plugin("bandwidth", [keep])
    assert out.returncode == 0, out.stdout
    assert leaked_ifb not in links()
    assert keep_ifb in links() and elsewhere_ifb in links()
    network.check(keep)
    other.check(elsewhere)


def test_prev_result_without_container_interface(plugin_dir: Any, netns: NetNS) -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "cni0"}], "ips": [{"address": "10.99.0.2/24", "interface": 0}]}
    conf = {"cniVersion": "1.0.0", "name": "bw", "type": "bandwidth", "prevResult": prev, **LIMITS}
    out = run_plugin(plugin_dir / "bandwidth", "ADD", conf, netns=netns.path)
    assert out.returncode == 1 and out.json["code"] == 7, out.stdout
    assert 'no container interface "eth0"' in out.json["msg"] and "cni0" in out.json["details"]
    no_prev = {k: v for k, v in conf.items() if k != "prevResult"}
    out = run_plugin(plugin_dir / "bandwidth", "ADD", no_prev, netns=netns.path)
    assert out.returncode == 1 and out.json["code"] == 7 and "chained plugin" in out.json["msg"], out.stdout


def _shaping(att: Any, network: Any) -> dict[str, Any]:
    """The kernel state bandwidth made for `att`: the host veth's qdiscs, the ifb and its qdiscs."""
    host_veth = att.result.interfaces[1].name
    ifb = ifb_name(network.net.name, att.rt.container_id, "eth0")

    def qdiscs(dev: str) -> list[dict[str, Any]]:
        out = subprocess.run(["tc", "-j", "qdisc", "show", "dev", dev], capture_output=True, text=True, check=False).stdout
        return [{k: q.get(k) for k in ("kind", "handle", "options")} for q in json.loads(out or "[]")]

    link = json.loads(subprocess.run(["ip", "-j", "link", "show", ifb], capture_output=True, text=True).stdout or "[{}]")[0]
    return {
        "host": qdiscs(host_veth),
        "ifb": {"mtu": link.get("mtu"), "txqlen": link.get("txqlen"), "up": "UP" in link.get("flags", [])} if link else None,
        "ifb_qdiscs": qdiscs(ifb) if link else [],
    }


# (ingressRate, ingressBurst) in bits, with the egress limit the same. containerd 1.6 sends a
# burst of math.MaxUint32 bits when the pod names none; the reference's integration tests use
# 800/200 and 8000/16000; a rate of 2**40 bit/s needs the 64-bit rate attribute; a rate under
# 8 bit/s is 0 bytes/s; the largest burst the reference accepts, and the first it refuses.
GO_VALUES = [
    (1_000_000, 4294967295),
    (800, 200),
    (8000, 16000),
    (2**40, 2**34),
    (7, 1000),
    (1_000_000, 34359738359),
    (1_000_000, 34359738360),
]


@pytest.mark.reference
@pytest.mark.parametrize(("rate", "burst"), GO_VALUES)
def test_limits_shape_as_the_reference_does(rate: int, burst: int, make_network: Any, make_netns: Any) -> None:
    """The same limits give the same qdiscs (Go's conversions of rate and burst to tc's 32-bit
    fields) and the same ifb, or the same refusal."""
    limits = {"ingressRate": rate, "ingressBurst": burst, "egressRate": rate, "egressBurst": burst}
    states = []
    for impl in ("ours", "reference"):
        network = make_network([BANDWIDTH], main="reference", impl=impl)
        try:
            att = network.attach(make_netns(), {"bandwidth": limits})
        except Exception as exc:  # noqa: BLE001 - a refusal, compared below
            states.append(("refused", type(exc).__name__))
            continue
        states.append(("shaped", _shaping(att, network)))
        network.detach(att)
    assert states[0] == states[1], states
