"""Clusters shared by the tests of one module (building one costs seconds)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.harness import Cluster
from tests.flannel.flannelcluster import FlannelCluster, network_config

if shutil.which("etcd") is None:
    pytest.skip("etcd-server is not installed (make setup installs it)", allow_module_level=True)


def flannel_cluster(
    backend: str, nodes: int = 3, pods: int = 3, args: list[str] | None = None, subnets: int = 1, **config: Any
) -> Iterator[FlannelCluster]:
    """`nodes` nodes whose flanneld start at the same moment, `pods` pods on each."""
    with Cluster(nodes=nodes, subnets=subnets) as cluster:
        cluster.add_outside()  # a plain host on the underlay (made here: the leak check is per test)
        fc = FlannelCluster.create(cluster, network_config(backend, **config), args)
        try:
            for node in cluster.nodes:
                fc.start(node, wait=False)
            for node in cluster.nodes:
                fc.wait_ready(node)
            for _ in range(pods):
                for node in cluster.nodes:
                    fc.add_pod(node)
            yield fc
        finally:
            fc.close()
