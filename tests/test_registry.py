"""Plugins are found through entry points (group `pycni.plugins`): pycni's own, and a third
party's; a missing extra is an error that names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycni import extras, launcher, registry, skel
from pycni.spec.errors import CNIError

SHIPPED = {"bridge", "ptp", "macvlan", "ipvlan", "vlan", "host-device", "loopback", "tap", "dummy"}
SHIPPED |= {"host-local", "static", "portmap", "bandwidth", "tuning", "firewall", "calico", "calico-ipam", "flannel"}

THIRD_PARTY = """
from pycni.spec.result import Result


def add(call):
    return Result(cni_version=call.cni_version)


def delete(call):
    return None


def check(call):
    return None
"""


def test_pycni_declares_its_plugins() -> None:
    found = registry.discover()
    assert set(found) >= SHIPPED
    assert found["host-local"] == "pycni.plugins.ipam.host_local" and found["bridge"] == "pycni.plugins.main.bridge"
    with pytest.raises(CNIError) as exc:
        registry.module_name("pct-nonexistent")
    assert exc.value.code == 7 and "bridge" in exc.value.details


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A distribution that declares the plugin type `pct-third` (its module on sys.path)."""
    (tmp_path / "pct_third_plugin.py").write_text(THIRD_PARTY)
    dist = tmp_path / "pct_third-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pct-third\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[pycni.plugins]\npct-third = pct_third_plugin\nbridge = pct_third_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "pct-third"
    monkeypatch.undo()
    registry.discover(refresh=True)


def test_a_third_party_adds_a_plugin(third_party: str, tmp_path: Path) -> None:
    found = registry.discover(refresh=True)
    assert found[third_party] == "pct_third_plugin"
    assert found["bridge"] == "pycni.plugins.main.bridge", "pycni's own types cannot be taken over"
    (written,) = launcher.install(str(tmp_path / "bin"), [third_party])
    assert "main('pct-third', '/run/pycni/agent.sock', 'pct_third_plugin')" in Path(written).read_text()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0"}
    out = skel.dispatch(third_party, env, b'{"cniVersion": "1.0.0", "name": "n", "type": "pct-third"}')
    assert out.code == 0 and b'"cniVersion": "1.0.0"' in out.stdout


def test_a_missing_extra_is_named() -> None:
    with pytest.raises(extras.MissingExtra) as exc:
        extras.require("pct_no_such_module", "etcd", "the etcdv3 datastore")
    assert str(exc.value) == (
        "the etcdv3 datastore needs the Python module 'pct_no_such_module', which is not installed: "
        "install pycni with the 'etcd' extra (pip install 'pycni[etcd]')"
    )
