"""calico-node's parts without a cluster: confd's output (compared with confd's own compiled
templates, and parsed by the real BIRD), IPIP routes, IP autodetection, the VTEP MAC, the
BIRD control protocol, BGP resource validation, the main loop on the embedded store, and
calicoctl's BGP kinds and node deletion."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from pycni.calico import model
from pycni.calico.bgp import parse_asn, validate_config, validate_peer
from pycni.calico.calicoctl.main import run as calicoctl
from pycni.calico.datastore import KV, WatchEvent
from pycni.calico.datastore.sqlite import SQLiteDatastore
from pycni.calico.ipam import IPAM
from pycni.calico.node import autodetect, ipip
from pycni.calico.node.bird import control
from pycni.calico.node.bird.confd import Generator
from pycni.calico.node.component import NodeContext
from pycni.calico.node.config import ConfigError, load
from pycni.calico.node.loop import MainLoop
from pycni.calico.node.startup import vxlan_mac
from pycni.calico.node.view import ClusterView
from pycni.calico.resources import NODE, Resources, ValidationError

CONFD = Path(__file__).parent / "confd"
PREFIX = "/calico/resources/v3/projectcalico.org/"
PLURALS = {"Node": "nodes", "IPPool": "ippools", "BGPConfiguration": "bgpconfigurations", "BGPPeer": "bgppeers"}
# The block affinities of confd's mock data for the node under test (kube-master).
AFFINITIES = {
    "10.0.0.0-30": None,
    "10.1.0.0-24": None,
    "10.2.0.1-32": None,
    "192.168.221.192-26": None,
    "192.168.221.64-26": "confirmed",
}


def _view(case: str) -> ClusterView:
    view = ClusterView()
    for doc in yaml.safe_load_all((CONFD / case / "input.yaml").read_text()):
        if doc:
            view.apply(PREFIX + PLURALS[doc["kind"]] + "/" + doc["metadata"]["name"], json.dumps(doc))
    for cidr, state in AFFINITIES.items():
        view.apply(f"/calico/ipam/v2/host/kube-master/ipv4/block/{cidr}", json.dumps({} if state is None else {"state": state}))
    return view


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("case", ["mesh/ipip-off", "mesh/vxlan-always"])
def test_confd_output_matches_confds_compiled_templates(case: str, tmp_path: Path) -> None:
    gen = Generator(_view(case), "kube-master")
    for version in (4, 6):
        files = gen.render(version).by_name(version)
        for name, text in files.items():
            assert _lines(text) == _lines((CONFD / case / name).read_text()), f"{case}/{name}"
            (tmp_path / name).write_text(text)
        binary = shutil.which("bird" if version == 4 else "bird6", path="/usr/sbin:/usr/bin")
        assert binary, "BIRD is not installed: run `make setup`"
        main = tmp_path / ("bird.cfg" if version == 4 else "bird6.cfg")
        out = subprocess.run([binary, "-p", "-c", str(main)], capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr


def test_confd_peers_from_bgppeers_and_mesh_off() -> None:
    view = _view("mesh/ipip-off")
    view.apply(PREFIX + "bgpconfigurations/default", json.dumps({"spec": {"nodeToNodeMeshEnabled": False, "asNumber": 65001}}))
    view.apply(PREFIX + "bgppeers/tor", json.dumps({"spec": {"peerIP": "10.192.0.250", "asNumber": 65000}}))
    view.apply(
        PREFIX + "bgppeers/rack", json.dumps({"spec": {"node": "kube-master", "peerIP": "10.192.0.251:1790", "asNumber": 65001}})
    )
    view.apply(PREFIX + "bgppeers/other", json.dumps({"spec": {"node": "kube-node-1", "peerIP": "10.192.0.252", "asNumber": 1}}))
    view.apply(PREFIX + "nodes/kube-node-2", json.dumps({"metadata": {"name": "kube-node-2", "labels": {"rr": "yes"}},
                                                         "spec": {"bgp": {"ipv4Address": "10.192.0.4/16"}}}))  # fmt: skip
    view.apply(
        PREFIX + "bgppeers/to-rr", json.dumps({"spec": {"nodeSelector": "all()", "peerSelector": "rr == 'yes'", "asNumber": 1}})
    )
    text = Generator(view, "kube-master").main(4)
    assert "Mesh_" not in text
    assert "protocol bgp Global_10_192_0_250 from bgp_template {\n  neighbor 10.192.0.250 as 65000;" in text
    assert "calico_export_to_bgp_peers(false);" in text  # eBGP to the ToR
    assert "protocol bgp Node_10_192_0_251_port_1790 from bgp_template {\n  neighbor 10.192.0.251 port 1790 as 65001;" in text
    assert "Node_10_192_0_4 from bgp_template {\n  neighbor 10.192.0.4 as 65001;" in text
    assert "10.192.0.252" not in text  # another node's peer
    assert "local as 65001;" in text


def test_ipip_routes_are_computed_for_a_kernel_that_has_it() -> None:
    view = ClusterView()
    view.apply(
        PREFIX + "ippools/p", json.dumps({"metadata": {"name": "p"}, "spec": {"cidr": "10.9.0.0/16", "ipipMode": "CrossSubnet"}})
    )
    for name, addr in (("a", "172.16.0.1/24"), ("b", "172.16.0.2/24"), ("c", "172.16.9.3/24")):
        view.apply(PREFIX + f"nodes/{name}", json.dumps({"metadata": {"name": name}, "spec": {"bgp": {"ipv4Address": addr}}}))
    for cidr, host in (("10.9.0.0-26", "a"), ("10.9.0.64-26", "b"), ("10.9.0.128-26", "c")):
        view.apply(
            model.BLOCKS_PREFIX + "ipv4/block/" + cidr, json.dumps({"cidr": cidr.replace("-", "/"), "affinity": f"host:{host}"})
        )
    routes = ipip.wanted_routes(view, view.nodes["a"])
    assert routes == [
        ipip.IPIPRoute(ipaddress.IPv4Network("10.9.0.64/26"), ipaddress.IPv4Address("172.16.0.2"), ""),
        ipip.IPIPRoute(ipaddress.IPv4Network("10.9.0.128/26"), ipaddress.IPv4Address("172.16.9.3"), "tunl0"),
    ]
    assert "CONFIG_NET_IPIP" in ipip.MISSING


def test_autodetection_methods() -> None:
    itf = autodetect.Interface
    items = [
        itf("cali123", 5, (ipaddress.ip_interface("10.0.0.1/32"),)),
        itf("docker0", 4, (ipaddress.ip_interface("172.17.0.1/16"),)),
        itf("eth0", 2, (ipaddress.ip_interface("192.0.2.10/24"),)),
        itf("eth1", 3, (ipaddress.ip_interface("198.51.100.7/25"),)),
    ]
    assert autodetect.autodetect("first-found", 4, items) == (ipaddress.ip_interface("192.0.2.10/24"), "eth0")
    assert autodetect.autodetect("interface=eth1", 4, items)[1] == "eth1"
    assert autodetect.autodetect("interface=nope,eth.*", 4, items)[1] == "eth0"
    assert autodetect.autodetect("skip-interface=eth0", 4, items)[1] == "eth1"
    assert autodetect.autodetect("cidr=198.51.100.0/24", 4, items)[1] == "eth1"
    for bad, message in (
        ("interface=(", "invalid regular expression"),
        ("magic", "invalid IP autodetection method"),
        ("cidr=nope", "is not a CIDR"),
        ("interface=wlan.*", "found no IPv4 address"),
        ("kubernetes-internal-ip", "Kubernetes API server"),
    ):
        with pytest.raises(autodetect.AutodetectError, match=message.replace("(", r"\(")):
            autodetect.autodetect(bad, 4, items)


def test_vtep_mac_is_felixs_derivation() -> None:
    # "f" (0x66) then SHA-1(nodename)[:5]
    import hashlib

    digest = hashlib.sha1(b"node-1").digest()
    assert vxlan_mac("node-1") == "66:" + ":".join(f"{b:02x}" for b in digest[:5])
    assert vxlan_mac("node-1", 6) != vxlan_mac("node-1")


def test_configuration_errors_name_the_variable() -> None:
    for env, message in (
        ({"CALICO_NETWORKING_BACKEND": "gobgp"}, "CALICO_NETWORKING_BACKEND"),
        ({"DATASTORE_TYPE": "kubernetes"}, "Kubernetes API server"),
        ({"DATASTORE_TYPE": "etcdv3", "ETCD_ENDPOINTS": "ftp://x"}, "ETCD_ENDPOINTS"),
        ({"AS": "abc"}, "AS=abc"),
        ({"FELIX_PROMETHEUSMETRICSPORT": "99999"}, "FELIX_PROMETHEUSMETRICSPORT"),
        ({"NO_DEFAULT_POOLS": "true", "CALICO_IPV4POOL_CIDR": "10.0.0.0/16"}, "NO_DEFAULT_POOLS"),
    ):
        with pytest.raises(ConfigError, match=message):
            load(env)
    cfg = load({"NODENAME": "n1", "CALICO_VAR_RUN_DIR": "/tmp/x"})
    assert cfg.nodename == "n1" and cfg.bird_socket(4) == "/tmp/x/bird.ctl" and cfg.confd_dir == "/tmp/x/confd/config"
    assert cfg.mtu_file == "/var/lib/calico/mtu" and cfg.backend == "bird" and not cfg.metrics_enabled


def test_asn_and_bgp_resources_are_validated() -> None:
    assert parse_asn("64512") == 64512 and parse_asn("1.10") == 65546
    with pytest.raises(ValueError):
        parse_asn("4294967296")
    ok = validate_peer({"metadata": {"name": "p"}, "spec": {"peerIP": "10.0.0.1:179", "asNumber": "64513"}})
    assert ok["spec"]["asNumber"] == 64513 and ok["kind"] == "BGPPeer"
    for spec, field in (
        ({"peerIP": "10.0.0.1"}, "spec.asNumber"),
        ({"peerIP": "not-an-ip", "asNumber": 1}, "spec.peerIP"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "node": "a", "nodeSelector": "all()"}, "spec.nodeSelector"),
        ({"peerSelector": "x ==", "asNumber": 1}, "spec.peerSelector"),
        ({"peerIP": "10.0.0.1", "asNumber": 1, "colour": "red"}, "spec.colour"),
    ):
        with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
            validate_peer({"metadata": {"name": "p"}, "spec": spec})
    with pytest.raises(ValidationError, match=r"spec\.nodeToNodeMeshEnabled"):
        validate_config({"metadata": {"name": "default"}, "spec": {"nodeToNodeMeshEnabled": "yes"}})
    with pytest.raises(ValidationError, match=r"spec\.asNumber"):
        validate_config({"metadata": {"name": "node.a"}, "spec": {"asNumber": 65000}})


class _FakeBird(threading.Thread):
    """A control socket answering `show protocols` as BIRD 1.6 does."""

    REPLY = (
        "2002-name     proto    table    state  since       info\n"
        "1002-kernel1  Kernel   master   up     10:00:01\n"
        " device1  Device   master   up     10:00:01\n"
        " Mesh_172_17_8_102 BGP      master   up     10:00:05    Established\n"
        " Node_10_0_0_9_port_1790 BGP      master   start  10:00:05    Active        Socket: Connection refused\n"
        "0000 \n"
    )

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)

    def run(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            conn.sendall(b"0001 BIRD 1.6.8 ready.\n")
            conn.recv(100)
            conn.sendall(self.REPLY.encode())


def test_bird_control_protocol(tmp_path: Path) -> None:
    path = str(tmp_path / "bird.ctl")
    fake = _FakeBird(path)
    fake.start()
    peers = control.bgp_peers(path)
    assert [(p.address, p.kind, p.state, p.bgp_state, p.info) for p in peers] == [
        ("172.17.8.102", "node-to-node mesh", "up", "Established", ""),
        ("10.0.0.9", "node specific", "start", "Active", "Socket: Connection refused"),
    ]
    with pytest.raises(control.BirdError, match="unable to connect"):
        control.status(str(tmp_path / "nothing.ctl"))


class _Recorder:
    name = "recorder"
    prefixes: tuple[str, ...] = ("/calico/resources/v3/projectcalico.org/nodes/",)

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.resyncs = 0
        self.batches: list[list[str]] = []

    def resync(self, listing: Sequence[KV]) -> None:
        self.resyncs += 1
        self.keys = {kv.key for kv in listing}

    def on_events(self, events: Sequence[WatchEvent]) -> None:
        self.batches.append([e.key for e in events])
        for e in events:
            (self.keys.add if e.kind == "put" else self.keys.discard)(e.key)

    def reconcile(self) -> None:
        pass

    def ready(self) -> str:
        return ""

    def close(self, *, cleanup: bool = False) -> None:
        pass


def test_main_loop_lists_then_follows_one_watch_by_prefix(tmp_path: Path) -> None:
    path = str(tmp_path / "calico.db")
    store = SQLiteDatastore(path)
    nodes = "/calico/resources/v3/projectcalico.org/nodes/"
    store.create(nodes + "a", "{}")
    store.create("/calico/resources/v3/projectcalico.org/ippools/p", "{}")
    comp = _Recorder()
    ctx = NodeContext("a")
    loop = MainLoop(lambda: SQLiteDatastore(path), [comp], ctx, reconcile_interval=0.2, resync_interval=60)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not loop.synced.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert comp.keys == {nodes + "a"} and comp.resyncs == 1
        store.create(nodes + "b", "{}")
        store.create("/calico/resources/v3/projectcalico.org/ippools/q", "{}")  # not its prefix
        store.delete(nodes + "a")
        while comp.keys != {nodes + "b"} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert comp.keys == {nodes + "b"}
        assert all(k.startswith(nodes) for batch in comp.batches for k in batch)
        assert loop.problems() == [] and loop.live()
    finally:
        loop.stop()
        thread.join(10)
        store.close()


def test_calicoctl_bgp_kinds_and_node_delete_releases_its_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATASTORE_TYPE", "embedded")
    monkeypatch.setenv("DATASTORE_PATH", str(tmp_path / "calico.db"))
    docs = tmp_path / "bgp.yaml"
    docs.write_text(
        "kind: BGPConfiguration\napiVersion: projectcalico.org/v3\nmetadata: {name: default}\n"
        "spec: {logSeverityScreen: Info, nodeToNodeMeshEnabled: false, asNumber: 63400}\n---\n"
        "kind: BGPPeer\napiVersion: projectcalico.org/v3\nmetadata: {name: tor}\n"
        "spec: {peerIP: 192.0.2.1, asNumber: 64000}\n---\n"
        "kind: BGPPeer\napiVersion: projectcalico.org/v3\nmetadata: {name: mine}\n"
        "spec: {node: n1, peerIP: 192.0.2.2, asNumber: 64001}\n"
    )
    assert "Successfully created 3 'BGPConfiguration', 'BGPPeer' resource(s)" in calicoctl(["create", "-f", str(docs)])
    table = calicoctl(["get", "bgpconfig"]).splitlines()
    assert table[0].split() == ["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"]
    assert table[1].split() == ["default", "Info", "false", "63400"]
    peers = calicoctl(["get", "bgppeers"]).splitlines()
    assert peers[0].split() == ["NAME", "PEERIP", "NODE", "ASN"] and peers[2].split() == ["tor", "192.0.2.1", "(global)", "64000"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: BGPPeer\napiVersion: projectcalico.org/v3\nmetadata: {name: x}\nspec: {peerIP: 192.0.2.9}\n")
    from pycni.calico.calicoctl.main import CommandError

    with pytest.raises(CommandError, match=r"spec\.asNumber"):
        calicoctl(["apply", "-f", str(bad)])
    store = SQLiteDatastore(str(tmp_path / "calico.db"))
    try:
        Resources(store, NODE).create({"metadata": {"name": "n1"}, "spec": {"bgp": {"ipv4Address": "192.0.2.10/24"}}})
        ipam = IPAM(store)
        ipam.pools.create({"metadata": {"name": "p"}, "spec": {"cidr": "10.44.0.0/24", "blockSize": 26}})
        v4, _ = ipam.auto_assign(2, 0, "net.ctr1", {"node": "n1"}, "n1")
        assert v4 is not None and len(v4.ips) == 2
        assert ipam.affine_blocks("n1", 4)
        wide = calicoctl(["get", "nodes", "-o", "wide"]).splitlines()
        assert wide[1].split() == ["n1", "(63400)", "192.0.2.10/24"]
        assert "Successfully deleted 1 'Node' resource(s)" in calicoctl(["delete", "node", "n1"])
        assert ipam.affine_blocks("n1", 4) == []
        assert [b for b in ipam.blocks() if b.host == "n1"] == []
        assert "mine" not in calicoctl(["get", "bgppeers"])
    finally:
        store.close()
    os.environ.pop("DATASTORE_PATH", None)
