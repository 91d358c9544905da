"""Calico test fixtures: a real etcd server on loopback, the embedded store, temp paths.

etcd is Debian's etcd-server (3.4), started once per session on free loopback ports
with a temporary data directory, and stopped at the end. Each test gets its own key
prefix through its own node and pool names, or wipes `/calico/` on a private server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EtcdServer:
    data_dir: Path
    client_port: int = 0
    peer_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self) -> None:
        if not self.client_port:
            self.client_port, self.peer_port = free_port(), free_port()
        log = open(self.data_dir.parent / f"etcd-{self.client_port}.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [
                ETCD,
                "--name", "pct",
                "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.endpoint,
                "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_port}",
                "--initial-cluster", f"pct=http://127.0.0.1:{self.peer_port}",
                "--log-level", "error",
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {log.name}")
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("etcd did not start listening within 20s")
        out = subprocess.run(
            ["etcdctl", "--endpoints", self.endpoint, "endpoint", "health"],
            capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, check=False, timeout=20,
        )  # fmt: skip
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"etcd is not healthy: {out.stderr}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def wipe(self) -> None:
        subprocess.run(
            ["etcdctl", "--endpoints", self.endpoint, "del", "--prefix", "/calico/"],
            capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}, check=True, timeout=20,
        )  # fmt: skip


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd(etcd_server: EtcdServer) -> EtcdServer:
    """The session's etcd, emptied of Calico data."""
    etcd_server.wipe()
    return etcd_server


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test's own, which the test may stop and restart."""
    server = EtcdServer(tmp_path / "etcd-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()
