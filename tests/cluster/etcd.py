"""A single etcd server (Debian's etcd-server 3.4) for tests, benchmarks and demos.

It listens on `host` (loopback by default; the cluster harness puts it on the underlay
bridge's address so that every node can reach it) on free ports, with a temporary data
directory, and is stopped at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class EtcdServer:
    data_dir: Path
    client_port: int = 0
    peer_port: int = 0
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"etcd-{self.client_port}.log"

    def start(self) -> None:
        if not self.client_port:
            self.client_port, self.peer_port = free_port(self.host), free_port(self.host)
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [
                ETCD,
                "--name", "pct",
                "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.endpoint,
                "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", f"http://{self.host}:{self.peer_port}",
                "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_port}",
                "--initial-cluster", f"pct=http://{self.host}:{self.peer_port}",
                "--log-level", "error",
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection((self.host, self.client_port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError("etcd did not start listening within 20s")
        out = self.etcdctl("endpoint", "health", check=False)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"etcd is not healthy: {out.stderr}")

    def etcdctl(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ETCDCTL, "--endpoints", self.endpoint, *argv],
            capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, check=check, timeout=20,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def wipe(self, prefix: str = "/calico/") -> None:
        self.etcdctl("del", "--prefix", prefix)
