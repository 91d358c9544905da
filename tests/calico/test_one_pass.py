"""A calico call is one pass: in one process (as the agent runs it), calico and the calico-ipam
it delegates to share one parsed configuration, one datastore connection and one look at the
DEL journal."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pycni import skel
from pycni.calico import config
from pycni.calico.datastore.etcd import EtcdDatastore
from pycni.calico.datastore.sqlite import SQLiteDatastore
from pycni.calico.journal import Journal
from pycni.spec.config import PluginConf

from ..conftest import NetNS, unique, unique_subnet
from ..plugins.main.test_calico import calico_conf, k8s_args


def _counting(counts: Counter[str], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def counted(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return fn(*args, **kwargs)

    return counted


@pytest.mark.parametrize("store", ["embedded", "etcdv3"])
def test_one_configuration_connection_and_journal_look_per_call(
    store: str, plugin_dir: Path, netns: NetNS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    conf = calico_conf(tmp_path, ipam={"type": "calico-ipam", "assign_ipv6": "false"})
    if store == "etcdv3":
        conf.update(datastore_type="etcdv3", etcd_endpoints=request.getfixturevalue("etcd").endpoint)
    (tmp_path / "journal").mkdir()  # replay lists it only when it exists
    counts: Counter[str] = Counter()
    backend = EtcdDatastore if store == "etcdv3" else SQLiteDatastore
    monkeypatch.setattr(backend, "__init__", _counting(counts, "connections", backend.__init__))
    monkeypatch.setattr(Journal, "entries", _counting(counts, "journal listings", Journal.entries))
    monkeypatch.setattr(config, "parse", _counting(counts, "calico configurations", config.parse))
    monkeypatch.setattr(PluginConf, "parse", _counting(counts, "configurations", PluginConf.parse))
    env = {
        "CNI_CONTAINERID": unique("c", 40),
        "CNI_NETNS": netns.path,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(plugin_dir),  # calico-ipam is our launcher: it runs in this process
        "CNI_ARGS": k8s_args(unique("pod-", 12)),
        "CALICO_IPV4POOL_CIDR": unique_subnet(24),
    }
    stdin = json.dumps(conf).encode()
    one_pass = {"connections": 1, "journal listings": 1, "calico configurations": 1, "configurations": 1}
    out = skel.dispatch("calico", {**env, "CNI_COMMAND": "ADD"}, stdin)
    assert out.code == 0, out.stdout
    assert counts == one_pass
    counts.clear()
    check = json.dumps(dict(conf, prevResult=json.loads(out.stdout))).encode()
    assert skel.dispatch("calico", {**env, "CNI_COMMAND": "CHECK"}, check).code == 0
    assert counts == one_pass
    counts.clear()
    out = skel.dispatch("calico", {**env, "CNI_COMMAND": "DEL"}, stdin)
    assert out.code == 0, out.stdout
    assert counts == one_pass
