"""calico-ipam as a plugin: import cost, GC of stale handles, CHECK."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pycni.calico.datastore import DatastoreSettings, open_datastore

from ...conftest import run_plugin, unique_subnet

NS = "/run/netns/pct-unused"  # IPAM never enters the namespace


def conf(tmp: Path, **extra: Any) -> dict[str, Any]:
    out = {
        "cniVersion": "1.1.0",
        "name": "ipamnet",
        "type": "calico-ipam",
        "nodename": "node1",
        "datastore_path": str(tmp / "calico.db"),
        "journal_dir": str(tmp / "journal"),
        "ipam_lock_file": str(tmp / "ipam.lock"),
        "ipam": {"type": "calico-ipam"},
    }
    out.update(extra)
    return out


def test_embedded_store_does_not_import_grpc(tmp_path: Path) -> None:
    code = f"""
import json, sys
from pycni import skel
env = {{"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "imp1", "CNI_NETNS": "{NS}", "CNI_IFNAME": "eth0",
        "CNI_PATH": "/nonexistent", "CALICO_IPV4POOL_CIDR": "{unique_subnet(24)}"}}
out = skel.dispatch("calico-ipam", env, json.dumps({json.dumps(conf(tmp_path))}).encode())
assert out.code == 0, out.stdout
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("grpc", "pyetcd", "google", "yaml"))))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_gc_releases_only_stale_handles_of_this_node(plugin_dir: Path, tmp_path: Path) -> None:
    env = {"CALICO_IPV4POOL_CIDR": unique_subnet(24)}
    for cid in ("keep1", "stale1"):
        assert run_plugin(plugin_dir / "calico-ipam", "ADD", conf(tmp_path), netns=NS, container_id=cid, env=env).returncode == 0
    other = conf(tmp_path, nodename="node2")
    assert run_plugin(plugin_dir / "calico-ipam", "ADD", other, netns=NS, container_id="elsewhere1", env=env).returncode == 0
    gc_conf = conf(tmp_path, **{"cni.dev/valid-attachments": [{"containerID": "keep1", "ifname": "eth0"}]})
    out = run_plugin(plugin_dir / "calico-ipam", "GC", gc_conf)
    assert out.returncode == 0, out.stdout
    with open_datastore(DatastoreSettings(path=str(tmp_path / "calico.db"))) as store:
        handles = sorted(kv.key.rsplit("/", 1)[1] for kv in store.list("/calico/ipam/v2/handle/"))
    assert handles == ["ipamnet.elsewhere1", "ipamnet.keep1"]


def test_check_compares_the_handle_with_prev_result(plugin_dir: Path, tmp_path: Path) -> None:
    env = {"CALICO_IPV4POOL_CIDR": unique_subnet(24)}
    add = run_plugin(plugin_dir / "calico-ipam", "ADD", conf(tmp_path), netns=NS, container_id="chk1", env=env)
    assert add.returncode == 0, add.stdout
    ok = run_plugin(plugin_dir / "calico-ipam", "CHECK", conf(tmp_path, prevResult=add.json), netns=NS, container_id="chk1")
    assert ok.returncode == 0, ok.stdout
    assert run_plugin(plugin_dir / "calico-ipam", "DEL", conf(tmp_path), netns=NS, container_id="chk1").returncode == 0
    gone = run_plugin(plugin_dir / "calico-ipam", "CHECK", conf(tmp_path, prevResult=add.json), netns=NS, container_id="chk1")
    assert gone.returncode == 1 and "no addresses are allocated to handle ipamnet.chk1" in gone.json["msg"]


def test_gc_frees_stale_addresses_and_keeps_other_networks(plugin_dir: Path, tmp_path: Path) -> None:
    """GC gives a stale container's address back to its block (legacy `cni.dev/attachments`
    key, as libcni also sends it); another network's handles on the node are not its business."""
    from pycni.calico.ipam import IPAM

    env = {"CALICO_IPV4POOL_CIDR": unique_subnet(24)}
    got = {}
    for cid, c in (("keep1", conf(tmp_path)), ("stale1", conf(tmp_path)), ("mine1", conf(tmp_path, name="othernet"))):
        out = run_plugin(plugin_dir / "calico-ipam", "ADD", c, netns=NS, container_id=cid, env=env)
        assert out.returncode == 0, out.stdout
        got[cid] = ipaddress.ip_interface(out.json["ips"][0]["address"]).ip
    out = run_plugin(plugin_dir / "calico-ipam", "GC", conf(tmp_path, **{"cni.dev/attachments": [{"containerID": "keep1"}]}))
    assert out.returncode == 0, out.stdout
    with open_datastore(DatastoreSettings(path=str(tmp_path / "calico.db"))) as store:
        ipam = IPAM(store)
        assert ipam.assignment(got["stale1"]) is None
        held = [ipam.assignment(got[c]) for c in ("keep1", "mine1")]
        assert [h.handle_id if h else None for h in held] == ["ipamnet.keep1", "othernet.mine1"]
        assert sum(block.in_use() for block in ipam.blocks()) == 2
    bad = run_plugin(plugin_dir / "calico-ipam", "GC", conf(tmp_path, **{"cni.dev/valid-attachments": "keep1"}))
    assert bad.returncode == 1 and bad.json["code"] == 7 and "cni.dev/valid-attachments" in bad.json["msg"]
