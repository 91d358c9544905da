"""Network configuration lists and plugin configurations: parsing and validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pycni.spec.config import Fields, NetworkConfigList, PluginConf, load_network
from pycni.spec.errors import CNIError


def conflist(**extra: Any) -> bytes:
    doc = {"cniVersion": "1.0.0", "name": "net1", "plugins": [{"type": "bridge"}]}
    doc.update(extra)
    return json.dumps(doc).encode()


def test_basic_list() -> None:
    net = NetworkConfigList.from_bytes(conflist())
    assert (net.name, net.cni_version, net.plugin_types()) == ("net1", "1.0.0", ["bridge"])
    assert not net.disable_check and not net.disable_gc


@pytest.mark.parametrize(
    "cni_version, cni_versions, expected",
    [
        ("1.0.0", ["0.3.1", "0.4.0", "1.1.0"], "1.1.0"),
        ("0.4.0", ["0.3.1"], "0.4.0"),
        ("1.0.0", ["1.1.0", "9.0.0"], "1.1.0"),  # versions newer than ours are ignored
        ("", ["0.3.1", "1.0.0"], "1.0.0"),
    ],
)
def test_version_selection(cni_version: str, cni_versions: list[str], expected: str) -> None:
    net = NetworkConfigList.from_bytes(conflist(cniVersion=cni_version, cniVersions=cni_versions))
    assert net.cni_version == expected


@pytest.mark.parametrize("value, expected", [(True, True), ("true", True), ("TRUE", True), ("false", False), (False, False)])
def test_booleans_may_be_strings(value: Any, expected: bool) -> None:
    net = NetworkConfigList.from_bytes(conflist(disableCheck=value, disableGC=value))
    assert net.disable_check is expected and net.disable_gc is expected


@pytest.mark.parametrize(
    "doc, code, fragment",
    [
        (b"{not json", 6, "error parsing"),
        (b"[]", 6, "JSON object"),
        (conflist(name=""), 7, "missing network name"),
        (conflist(name="bad/name"), 7, "invalid characters"),
        (conflist(name="-leading"), 7, "invalid characters"),
        (conflist(name=".."), 7, "invalid characters"),
        (conflist(cniVersion="one"), 6, "invalid version"),
        (conflist(disableCheck="maybe"), 7, "disableCheck"),
        (conflist(plugins=[]), 7, "empty"),
        (conflist(plugins={"type": "x"}), 7, "plugins"),
        (conflist(plugins=[{"bridge": "cni0"}]), 7, "type"),
        (conflist(plugins=[{"type": "../../bin/sh"}]), 7, "not a path"),
        (conflist(plugins=[{"type": "bridge", "ipam": {"type": "a/b"}}]), 7, "ipam.type"),
        (conflist(plugins=[{"type": "bridge", "capabilities": {"portMappings": "yes"}}]), 7, "capabilities"),
        (json.dumps({"name": "n", "cniVersion": "1.0.0", "loadOnlyInlinedPlugins": True}).encode(), 7, "loadOnlyInlinedPlugins"),
    ],
)
def test_invalid_lists(doc: bytes, code: int, fragment: str) -> None:
    with pytest.raises(CNIError) as exc:
        NetworkConfigList.from_bytes(doc)
    assert exc.value.code == code
    assert fragment in str(exc.value)


def test_sibling_plugins_are_merged_unless_only_inlined(tmp_path: Path) -> None:
    (tmp_path / "10-net1.conflist").write_bytes(conflist())
    (tmp_path / "net1").mkdir()
    (tmp_path / "net1" / "b.conf").write_text(json.dumps({"type": "tuning"}))
    (tmp_path / "net1" / "a.conf").write_text(json.dumps({"type": "portmap"}))
    (tmp_path / "net1" / "ignored.json").write_text(json.dumps({"type": "nope"}))
    assert load_network(str(tmp_path), "net1").plugin_types() == ["bridge", "portmap", "tuning"]
    (tmp_path / "10-net1.conflist").write_bytes(conflist(loadOnlyInlinedPlugins="true"))
    assert load_network(str(tmp_path), "net1").plugin_types() == ["bridge"]


def test_list_of_only_sibling_plugins(tmp_path: Path) -> None:
    (tmp_path / "a.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "net2"}))
    (tmp_path / "net2").mkdir()
    (tmp_path / "net2" / "x.conf").write_text(json.dumps({"type": "loopback"}))
    assert load_network(str(tmp_path), "net2").plugin_types() == ["loopback"]


def test_single_conf_is_a_one_plugin_list(tmp_path: Path) -> None:
    seed = {"cniVersion": "1.0.0", "name": "mynet", "type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}
    (tmp_path / "bridge.conf").write_text(json.dumps(seed))
    net = load_network(str(tmp_path), "mynet")
    assert net.cni_version == "1.0.0"
    assert net.plugins == [seed]


def test_first_conflist_by_file_name_wins(tmp_path: Path) -> None:
    (tmp_path / "20-b.conflist").write_bytes(conflist(plugins=[{"type": "second"}]))
    (tmp_path / "10-a.conflist").write_bytes(conflist(plugins=[{"type": "first"}]))
    assert load_network(str(tmp_path), "net1").plugin_types() == ["first"]


def test_network_not_found(tmp_path: Path) -> None:
    with pytest.raises(CNIError, match="no net configurations found"):
        load_network(str(tmp_path), "x")
    (tmp_path / "a.conflist").write_bytes(conflist())
    with pytest.raises(CNIError, match='no net configuration with name "x"'):
        load_network(str(tmp_path), "x")


def test_plugin_conf_parsing() -> None:
    conf = PluginConf.parse(json.dumps({"cniVersion": "0.4.0", "name": "n", "type": "bridge"}).encode())
    assert (conf.cni_version, conf.name, conf.type) == ("0.4.0", "n", "bridge")
    # libcni: no cniVersion means 0.1.0
    assert PluginConf.parse(b'{"name": "n", "type": "x"}').cni_version == "0.1.0"


def test_fields_name_the_offending_key() -> None:
    fields = Fields({"mtu": "big", "isGateway": "yes", "ipam": {"subnet": "10.0.0.0/33"}})
    with pytest.raises(CNIError, match=r"'mtu'.*\"big\" is not an integer"):
        fields.get_int("mtu")
    with pytest.raises(CNIError, match="'isGateway'"):
        fields.get_bool("isGateway")
    with pytest.raises(CNIError, match=r"'ipam\.subnet'"):
        fields.get_obj("ipam").get_cidr("subnet")
    with pytest.raises(CNIError, match=r'missing required key "bridge"'):
        fields.get_str("bridge", required=True)
