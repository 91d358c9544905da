"""calico and calico-ipam against etcd: concurrent nodes, borrowing, strict affinity,
and an etcd that goes away (ADD fails fast with code 11, DEL journals and succeeds)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pycni.calico.datastore import DatastoreSettings, open_datastore
from pycni.calico.endpoints import Endpoints
from pycni.calico.ipam import IPAM
from pycni.calico.model import IPAMConfig

from ..conftest import NetNS, run_plugin, unique_subnet
from .conftest import EtcdServer

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"

NODES = ("node-a", "node-b", "node-c")


def _allocate(endpoint: str, node: str, count: int, results: dict[str, list[Any]], errors: list[str]) -> None:
    """One node's allocations: several threads, each with its own client, as separate plugin calls would.
    Whatever a thread raises is an error too (a thread's exception would otherwise only be printed)."""

    def worker(first: int, n: int) -> None:
        try:
            with open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=endpoint)) as store:
                ipam = IPAM(store)
                for i in range(first, first + n):
                    v4, _ = ipam.auto_assign(1, 0, f"net.{node}-{i}", {"node": node, "timestamp": "t"}, node)
                    if v4 is None:
                        errors.append("no IPv4 assignment")
                    elif v4.partial_error():
                        errors.append(v4.partial_error())
                    else:
                        results[node].extend(v4.ips)
        except Exception as exc:  # noqa: BLE001 - reported by the test's assertions
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(i * (count // 5), count // 5)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _pool(endpoint: str, cidr: str, block_size: int) -> None:
    with open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=endpoint)) as store:
        IPAM(store).pools.create({"metadata": {"name": "shared"}, "spec": {"cidr": cidr, "blockSize": block_size}})


def test_three_nodes_allocate_concurrently_and_borrow(etcd: EtcdServer) -> None:
    # Two /25 blocks for three nodes of 50 addresses: the third node finds no free block and borrows.
    cidr = unique_subnet(24)
    _pool(etcd.endpoint, cidr, 25)
    results: dict[str, list[Any]] = {n: [] for n in NODES}
    errors: list[str] = []
    nodes = [threading.Thread(target=_allocate, args=(etcd.endpoint, n, 50, results, errors)) for n in NODES]
    started = time.monotonic()
    for t in nodes:
        t.start()
    for t in nodes:
        t.join()
    elapsed = time.monotonic() - started
    assert errors == []
    every = [ip.ip for ips in results.values() for ip in ips]
    assert len(every) == 150 and len(set(every)) == 150, "an address was handed out twice"
    assert all(ip in ipaddress.ip_network(cidr) for ip in every)
    with open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=etcd.endpoint)) as store:
        ipam = IPAM(store)
        owners = {b.cidr: b.host for b in ipam.blocks()}
        assert len(owners) == 2 and len(set(owners.values())) == 2
        borrowers = set()
        for node, ips in results.items():
            outside = [ip for ip in ips if owners[ip.network] != node]
            if node in owners.values():
                assert outside == [], f"{node} has a block but used another node's"
            else:
                borrowers.add(node)
                assert len(outside) == 50
        assert len(borrowers) == 1
        # Every handle counts exactly its address, every block its allocations.
        handles = ipam.handles()
        assert len(handles) == 150 and all(sum(h.block.values()) == 1 for h, _ in handles.values())
        assert sum(b.in_use() for b in ipam.blocks()) == 150
    print(f"150 concurrent assignments on etcd in {elapsed:.1f}s")


def test_strict_affinity_gives_a_clear_exhaustion_error(etcd: EtcdServer) -> None:
    cidr = unique_subnet(24)
    _pool(etcd.endpoint, cidr, 25)
    with open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=etcd.endpoint)) as store:
        IPAM(store).set_config(IPAMConfig(strict_affinity=True, auto_allocate_blocks=True))
    results: dict[str, list[Any]] = {n: [] for n in NODES}
    errors: list[str] = []
    nodes = [threading.Thread(target=_allocate, args=(etcd.endpoint, n, 50, results, errors)) for n in NODES]
    for t in nodes:
        t.start()
    for t in nodes:
        t.join()
    assert sorted(len(v) for v in results.values()) == [0, 50, 50]
    assert len(errors) == 50
    assert set(errors) == {"Assigned 0 out of 1 requested IPv4 addresses; No more free affine blocks and strict affinity enabled"}


def _conf(tmp: Path, endpoint: str) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "etcdnet",
        "type": "calico",
        "nodename": "node1",
        "nodename_file_optional": True,
        "datastore_type": "etcdv3",
        "etcd_endpoints": endpoint,
        "datastore_timeout": 2,
        "journal_dir": str(tmp / "journal"),
        "ipam_lock_file": str(tmp / "ipam.lock"),
        "log_file_path": str(tmp / "cni.log"),
        "mtu_file": str(tmp / "mtu"),
        "ipam": {"type": "calico-ipam"},
    }


def test_unreachable_etcd_add_fails_fast_and_del_is_journaled(
    plugin_dir: Path, make_netns: Any, tmp_path: Path, private_etcd: EtcdServer
) -> None:
    conf = _conf(tmp_path, private_etcd.endpoint)
    env = {"CALICO_IPV4POOL_CIDR": unique_subnet(24)}
    ns: NetNS = make_netns()
    out = run_plugin(plugin_dir / "calico", "ADD", conf, netns=ns.path, container_id="up1", env=env)
    assert out.returncode == 0, out.stdout
    address = out.json["ips"][0]["address"].split("/")[0]
    private_etcd.stop()
    # ADD: code 11 within a bounded time, and nothing left behind.
    other: NetNS = make_netns()
    started = time.monotonic()
    down = run_plugin(plugin_dir / "calico", "ADD", conf, netns=other.path, container_id="down1", env=env)
    assert down.returncode == 1 and down.json["code"] == 11, down.stdout
    assert time.monotonic() - started < 15
    assert other.run("ip", "link", "show", "eth0", check=False).returncode != 0
    # DEL: the dataplane goes, the release is journaled, DEL succeeds.
    gone = run_plugin(plugin_dir / "calico", "DEL", conf, netns=ns.path, container_id="up1")
    assert gone.returncode == 0, gone.stdout
    assert ns.run("ip", "link", "show", "eth0", check=False).returncode != 0
    journal = sorted((tmp_path / "journal").glob("*.json"))
    assert len(journal) == 2  # the WorkloadEndpoint (calico) and the handles (calico-ipam)
    # etcd is back: the next call replays the journal and nothing has leaked.
    private_etcd.start()
    status = run_plugin(plugin_dir / "calico", "STATUS", dict(conf, cniVersion="1.1.0"))
    assert status.returncode == 0, status.stdout
    assert sorted((tmp_path / "journal").glob("*.json")) == []
    with open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=private_etcd.endpoint)) as store:
        assert Endpoints(store).list() == []
        assert store.list("/calico/ipam/v2/handle/") == []
        assert IPAM(store).assignment(ipaddress.ip_address(address)) is None


def test_status_reports_an_unreachable_datastore(plugin_dir: Path, tmp_path: Path) -> None:
    from .conftest import free_port

    conf = dict(_conf(tmp_path, f"http://127.0.0.1:{free_port()}"), cniVersion="1.1.0")
    out = run_plugin(plugin_dir / "calico", "STATUS", conf)
    assert out.returncode == 1 and out.json["code"] == 50 and "unavailable" in out.json["msg"]


def test_calico_ipam_plugin_on_etcd(plugin_dir: Path, etcd: EtcdServer, tmp_path: Path) -> None:
    conf = dict(_conf(tmp_path, etcd.endpoint), type="calico-ipam")
    env = {"CALICO_IPV4POOL_CIDR": unique_subnet(24)}
    ns = "/run/netns/pct-unused"  # IPAM never enters it
    out = run_plugin(plugin_dir / "calico-ipam", "ADD", conf, netns=ns, container_id="ipam1", env=env)
    assert out.returncode == 0, out.stdout
    address = out.json["ips"][0]["address"]
    assert address.endswith("/26")
    fixed = str(ipaddress.ip_interface(address).ip + 5)
    out2 = run_plugin(plugin_dir / "calico-ipam", "ADD", conf, netns=ns, container_id="ipam2", cni_args=f"IP={fixed}", env=env)
    assert out2.returncode == 0 and out2.json["ips"][0]["address"] == f"{fixed}/32", out2.stdout
    for cid in ("ipam1", "ipam2"):
        assert run_plugin(plugin_dir / "calico-ipam", "DEL", conf, container_id=cid).returncode == 0
    with open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=etcd.endpoint)) as store:
        assert store.list("/calico/ipam/v2/handle/") == []


def test_three_nodes_through_the_plugin_borrow_then_strict_affinity_refuses(
    plugin_dir: Path, etcd: EtcdServer, tmp_path: Path
) -> None:
    """The acceptance through calico-ipam processes: three nodes (each its own host lock, as
    three hosts) ADD 50 containers each, concurrently, from a pool of two blocks. No address
    twice, the two nodes that claimed a block use only it, the third borrows; then with
    strictAffinity on (set with calicoctl on etcd) the third node's ADD is a clear exhaustion error."""
    cidr = unique_subnet(24)
    _pool(etcd.endpoint, cidr, 25)
    per_node = 50

    def add(node: str, i: int) -> tuple[str, Any]:
        # 150 processes on a loaded machine: a slow etcd round trip is not what this test is about.
        conf = dict(
            _conf(tmp_path, etcd.endpoint),
            type="calico-ipam",
            nodename=node,
            ipam_lock_file=str(tmp_path / node),
            datastore_timeout=10,
        )
        out = run_plugin(plugin_dir / "calico-ipam", "ADD", conf, netns="/run/netns/pct-unused", container_id=f"{node}-{i}")
        return node, out

    with ThreadPoolExecutor(max_workers=6) as pool:
        runs = list(pool.map(lambda job: add(*job), [(n, i) for i in range(per_node) for n in NODES]))
    failed = [out.stdout for _, out in runs if out.returncode != 0]
    assert failed == []
    got: dict[str, list[Any]] = {n: [] for n in NODES}
    for node, out in runs:
        got[node].append(ipaddress.ip_interface(out.json["ips"][0]["address"]).ip)
    every = [ip for ips in got.values() for ip in ips]
    assert len(set(every)) == len(every) == 3 * per_node
    with open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=etcd.endpoint)) as store:
        owners = {b.cidr: b.host for b in IPAM(store).blocks()}
    assert len(owners) == 2 and len(set(owners.values())) == 2
    (borrower,) = set(NODES) - set(owners.values())
    for node, ips in got.items():
        used = {owners[next(cidr for cidr in owners if ip in cidr)] for ip in ips}  # whose blocks the node used
        assert used == {node} if node != borrower else borrower not in used
    ctl = subprocess.run(
        [str(VENV_BIN / "calicoctl"), "ipam", "configure", "--strictaffinity=true"],
        env={"PATH": os.environ.get("PATH", ""), "DATASTORE_TYPE": "etcdv3", "ETCD_ENDPOINTS": etcd.endpoint},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ctl.returncode == 0, ctl.stderr
    _, refused = add(borrower, per_node)
    assert refused.returncode == 1 and refused.json["code"] == 103, refused.stdout
    assert refused.json["msg"] == (
        "failed to request IPv4 addresses: Assigned 0 out of 1 requested IPv4 addresses; "
        "No more free affine blocks and strict affinity enabled"
    )
    owner = next(iter(set(owners.values())))
    _, still = add(owner, per_node)
    assert still.returncode == 0, still.stdout  # a node with a block of its own is not affected
