"""Datastore faults: calico and calico-ipam on a three-member etcd cluster (etcdv3, all three
endpoints), run as a runtime runs them (the plugin executables, served by the agent).

- The etcd leader is killed (SIGKILL) while concurrent ADDs run: every ADD succeeds, no
  address is given twice, and after DEL `calicoctl ipam check` finds no problem.
- Every member is stopped: ADD fails with code 11 within its datastore timeout and leaves
  nothing behind; DEL removes the dataplane, journals the release and succeeds. Once the
  cluster is back, the next call replays the journal and `calicoctl ipam check` finds no leak.

`make test` runs the leader kill once (100 concurrent ADDs, about 12 s); `make fuzz` five
times (PYCNI_FUZZ_SCALE >= 10).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pycni import launcher

from ..conftest import NetNS, PluginRun, _delete_netns, _make_netns, run_plugin, unique_subnet
from .conftest import SCALE
from .etcd_cluster import ETCDCTL, Cluster

CONCURRENT_ADDS = 100
ROUNDS = 5 if SCALE >= 10 else 1
DATASTORE_TIMEOUT = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    root = tmp_path / "etcd"
    root.mkdir()
    c = Cluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def served_plugins() -> Iterator[Path]:
    """The plugin executables, served by a `pycni agent` of this test's own."""
    directory = Path(tempfile.mkdtemp(prefix="pct-etcd-", dir="/tmp"))  # a socket path is short
    sock = directory / "agent.sock"
    launcher.install(str(directory / "bin"), agent_socket=str(sock))
    argv = [sys.executable, "-m", "pycni.cli.main", "agent", "--socket", str(sock), "--log-file", str(directory / "agent.log")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.05)
        yield directory / "bin"
    finally:
        proc.terminate()
        proc.wait(60)
        subprocess.run(["rm", "-rf", str(directory)], check=False)


def _conf(tmp: Path, endpoints: str) -> dict[str, Any]:
    return {
        "cniVersion": "1.1.0",
        "name": "pctetcd",
        "type": "calico",
        "nodename": "pct-node",
        "nodename_file_optional": True,
        "datastore_type": "etcdv3",
        "etcd_endpoints": endpoints,
        "datastore_timeout": DATASTORE_TIMEOUT,
        "journal_dir": str(tmp / "journal"),
        "ipam_lock_file": str(tmp / "ipam.lock"),
        "log_file_path": str(tmp / "calico.log"),
        "mtu_file": str(tmp / "mtu"),
        "ipam": {"type": "calico-ipam"},
    }


def _calicoctl(cluster: Cluster, *argv: str) -> str:
    env = {**os.environ, "DATASTORE_TYPE": "etcdv3", "ETCD_ENDPOINTS": cluster.endpoints}
    out = subprocess.run([sys.executable, "-m", "pycni.calico.calicoctl.main", *argv], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _leader(cluster: Cluster) -> int:
    out = subprocess.run(
        [ETCDCTL, "--endpoints", cluster.endpoints, "endpoint", "status", "-w", "json"],
        capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, check=True, timeout=30,
    )  # fmt: skip
    statuses = json.loads(out.stdout)
    for index, status in enumerate(statuses):
        if status["Status"]["header"]["member_id"] == status["Status"]["leader"]:
            return index
    raise AssertionError(f"no leader: {statuses}")


class Namespaces:
    def __init__(self) -> None:
        self.made: list[NetNS] = []

    def make(self, count: int) -> list[NetNS]:
        fresh = [_make_netns() for _ in range(count)]
        self.made += fresh
        return fresh

    def remove(self) -> None:
        for ns in self.made:
            _delete_netns(ns)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    made = Namespaces()
    try:
        yield made
    finally:
        made.remove()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_concurrent_adds_survive_the_leader_killed(
    round_: int, cluster: Cluster, served_plugins: Path, namespaces: Namespaces, tmp_path: Path
) -> None:
    conf = _conf(tmp_path, cluster.endpoints)
    env = {"CALICO_IPV4POOL_CIDR": unique_subnet(22)}
    spaces = namespaces.make(CONCURRENT_ADDS)
    calico = served_plugins / "calico"
    done: list[float] = []
    started = time.monotonic()

    def add(i: int) -> PluginRun:
        out = run_plugin(calico, "ADD", conf, netns=spaces[i].path, container_id=f"pctetcd{i:03d}", env=env, timeout=180)
        done.append(time.monotonic() - started)
        return out

    killed: list[tuple[int, float, int]] = []

    def kill_leader() -> None:
        while len(done) < CONCURRENT_ADDS // 5 and time.monotonic() - started < 60:
            time.sleep(0.01)
        victim = _leader(cluster)
        killed.append((victim, time.monotonic() - started, len(done)))
        cluster.members[victim].kill()

    killer = threading.Thread(target=kill_leader)
    killer.start()
    with ThreadPoolExecutor(max_workers=CONCURRENT_ADDS) as pool:
        results = list(pool.map(add, range(CONCURRENT_ADDS)))
    killer.join()
    elapsed = time.monotonic() - started
    failed = [(i, r.stdout) for i, r in enumerate(results) if r.returncode != 0]
    assert not failed, f"{len(failed)} ADDs failed, e.g. {failed[:3]}"
    victim, at, before = killed[0]
    assert not cluster.members[victim].running
    assert before < CONCURRENT_ADDS, "the member was killed only after every ADD was done"
    addresses = [r.json["ips"][0]["address"] for r in results]
    assert len(set(addresses)) == CONCURRENT_ADDS, "an address was given twice"
    print(
        f"{CONCURRENT_ADDS} concurrent calico ADDs on 3 etcd members, leader m{victim} killed after {at:.1f}s "
        f"({before} done): all succeeded in {elapsed:.1f}s"
    )
    with ThreadPoolExecutor(max_workers=20) as pool:
        gone = list(
            pool.map(
                lambda i: run_plugin(calico, "DEL", conf, netns=spaces[i].path, container_id=f"pctetcd{i:03d}"),
                range(CONCURRENT_ADDS),
            )
        )
    assert [r.returncode for r in gone] == [0] * CONCURRENT_ADDS, [r.stdout for r in gone if r.returncode][:3]
    report = _calicoctl(cluster, "ipam", "check")
    assert "found 0 problems" in report, report
    assert "0 IPs that are allocated" in report and "0 handles with no matching IPs" in report


def test_all_members_down_add_fails_fast_and_del_journals(
    cluster: Cluster, plugin_dir: Path, namespaces: Namespaces, tmp_path: Path
) -> None:
    conf = _conf(tmp_path, cluster.endpoints)
    env = {"CALICO_IPV4POOL_CIDR": unique_subnet(24), "PYCNI_AGENT": "off"}
    calico = plugin_dir / "calico"
    up = namespaces.make(3)
    for i, ns in enumerate(up):
        out = run_plugin(calico, "ADD", conf, netns=ns.path, container_id=f"pctup{i}", env=env)
        assert out.returncode == 0, out.stdout
    cluster.stop()
    # ADD: code 11 within its datastore timeout, and nothing left behind.
    (down,) = namespaces.make(1)
    started = time.monotonic()
    out = run_plugin(calico, "ADD", conf, netns=down.path, container_id="pctdown", env=env)
    took = time.monotonic() - started
    assert out.returncode == 1 and out.json["code"] == 11, out.stdout
    assert took < 4 * DATASTORE_TIMEOUT + 5, f"ADD took {took:.1f}s with datastore_timeout {DATASTORE_TIMEOUT}"
    assert down.run("ip", "link", "show", "eth0", check=False).returncode != 0
    # DEL: the dataplane goes, the release is journaled, DEL succeeds (also the runtime's DEL of the failed ADD).
    for i, ns in enumerate(up):
        gone = run_plugin(calico, "DEL", conf, netns=ns.path, container_id=f"pctup{i}", env=env)
        assert gone.returncode == 0, gone.stdout
        assert ns.run("ip", "link", "show", "eth0", check=False).returncode != 0
    assert run_plugin(calico, "DEL", conf, netns=down.path, container_id="pctdown", env=env).returncode == 0
    journal = sorted((tmp_path / "journal").glob("*.json"))
    assert len(journal) >= 6  # per attachment: the WorkloadEndpoint (calico) and the handles (calico-ipam)
    # Back: the next call replays the journal; nothing leaked.
    cluster.start()
    status = run_plugin(calico, "STATUS", conf, env=env)
    assert status.returncode == 0, status.stdout
    assert sorted((tmp_path / "journal").glob("*.json")) == []
    report = _calicoctl(cluster, "ipam", "check")
    assert "found 0 problems" in report and "Found 0 workload IPs" in report, report
    assert json.loads(_calicoctl(cluster, "get", "workloadendpoints", "-A", "-o", "json") or "{}").get("items", []) == []
    print(f"all members down: ADD failed with code 11 in {took:.1f}s, {len(journal)} releases journaled and replayed")


def test_addresses_are_ipv4(cluster: Cluster) -> None:
    """The fixture itself: three members, one cluster."""
    out = subprocess.run(
        [ETCDCTL, "--endpoints", cluster.endpoints, "member", "list", "-w", "json"],
        capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, check=True,
    )  # fmt: skip
    members = json.loads(out.stdout)["members"]
    assert len(members) == 3
    assert all(ipaddress.ip_address(url.split("//")[1].split(":")[0]).version == 4 for m in members for url in m["clientURLs"])
