"""A three-member etcd cluster on loopback (Debian's etcd 3.4): random free ports, temporary
data directories; members can be killed, stopped and started again."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"


def free_ports(count: int) -> list[int]:
    """Distinct free ports (all bound at once, so none is handed out twice)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Member:
    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str, token: str) -> None:
        log = open(self.data_dir.parent / f"{self.name}.log", "ab")  # noqa: SIM115 - lives with the process
        self.proc = subprocess.Popen(
            [
                ETCD, "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", self.peer, "--initial-advertise-peer-urls", self.peer,
                "--initial-cluster", initial_cluster, "--initial-cluster-token", token,
                "--initial-cluster-state", "new", "--log-level", "error",
                # Faster elections than the defaults (100 ms, 1 s): all members are on loopback.
                "--heartbeat-interval", "50", "--election-timeout", "500",
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        log.close()

    def kill(self) -> None:
        self._stop(signal.SIGKILL)

    def stop(self) -> None:
        self._stop(signal.SIGTERM)

    def _stop(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    root: Path
    size: int = 3
    members: list[Member] = field(default_factory=list)
    token: str = field(default_factory=lambda: f"pct-{os.getpid()}-{time.monotonic_ns()}")

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.size)
        self.members = [Member(f"m{i}", self.root / f"m{i}", ports[2 * i], ports[2 * i + 1]) for i in range(self.size)]

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer}" for m in self.members)

    def start(self, *members: Member) -> None:
        for member in members or self.members:
            member.start(self.initial_cluster, self.token)
        self.wait_healthy(*members)

    def wait_healthy(self, *members: Member, timeout: float = 30) -> None:
        wanted = list(members or self.members)
        deadline = time.monotonic() + timeout
        while True:
            dead = [m.name for m in wanted if m.proc is not None and m.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"etcd members {dead} exited; see {self.root}/*.log")
            out = subprocess.run(
                [ETCDCTL, "--endpoints", ",".join(m.endpoint for m in wanted), "endpoint", "health"],
                capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, check=False, timeout=30,
            )  # fmt: skip
            if out.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"etcd cluster not healthy within {timeout}s: {out.stderr}")
            time.sleep(0.2)

    def stop(self) -> None:
        for member in self.members:
            member.stop()
