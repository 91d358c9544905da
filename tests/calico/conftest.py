"""Calico test fixtures: a real etcd server on loopback, the embedded store, temp paths.

etcd is Debian's etcd-server (3.4), started once per session on free loopback ports
with a temporary data directory, and stopped at the end. Each test gets its own key
prefix through its own node and pool names, or wipes `/calico/` on a private server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..cluster.etcd import EtcdServer, free_port

__all__ = ["EtcdServer", "free_port"]


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
