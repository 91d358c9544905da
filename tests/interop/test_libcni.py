"""pycni and Go's libcni (Debian's, the library containerd, CRI-O and podman use) are
interchangeable: the same requests reach the plugins, the same cache is written, and
an attachment added by one is checked and deleted by the other."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from pycni.runtime import CNIConfig, RuntimeConf
from pycni.spec.config import load_network

from ..conftest import NetNS, delete_link, unique, unique_subnet
from ..runtime.test_api import bin_dir, calls, log, spec_example  # noqa: F401 - fixtures
from .conftest import drive

pytestmark = pytest.mark.reference


def without(doc: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in keys}


def test_same_requests_and_cache_as_libcni(libcni_driver: Path, bin_dir: Path, log: Path, tmp_path: Path) -> None:  # noqa: F811
    net = spec_example(log, version="1.0.0")  # Debian's libcni (1.1.2) speaks up to 1.0.0
    netdir = tmp_path / "net.d"
    netdir.mkdir()
    (netdir / "10-dbnet.conflist").write_bytes(net.raw_bytes)
    caps = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}], "mac": "00:11:22:33:44:66"}
    env = dict(
        os.environ,
        CNI_PATH=str(bin_dir),
        CNI_CACHE_DIR=str(tmp_path / "go-cache"),
        CNI_ARGS="argA=foo",
        CAP_ARGS=json.dumps(caps),
    )
    seen: dict[str, list[dict[str, Any]]] = {}
    for command in ("add", "check", "del"):
        drive(libcni_driver, command, netdir, "dbnet", "/var/run/netns/blue", "ctr1", env)
    seen["go"] = calls(log)
    log.unlink()

    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "py-cache"))
    rt = RuntimeConf("ctr1", "/var/run/netns/blue", "eth0", [("argA", "foo")], caps)
    loaded = load_network(str(netdir), "dbnet")
    cni.add_network_list(loaded, rt)
    ours_cache = json.loads((tmp_path / "py-cache" / "results" / "dbnet-ctr1-eth0").read_text())
    cni.check_network_list(loaded, rt)
    cni.del_network_list(loaded, rt)
    seen["py"] = calls(log)

    assert [c["command"] for c in seen["py"]] == [c["command"] for c in seen["go"]]
    for go_call, py_call in zip(seen["go"], seen["py"], strict=True):
        # The spec says a request must not carry `capabilities`; libcni 1.1 still passes them on.
        assert without(py_call["stdin"], "capabilities") == without(go_call["stdin"], "capabilities")
        protocol = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
        assert {k: py_call["env"].get(k) for k in protocol} == {k: go_call["env"].get(k) for k in protocol}

    # The cache: ADD again with libcni and compare the file it keeps with ours.
    drive(libcni_driver, "add", netdir, "dbnet", "/var/run/netns/blue", "ctr1", env)
    go_cache_during_add = json.loads((tmp_path / "go-cache" / "results" / "dbnet-ctr1-eth0").read_text())
    # libcni 1.1 does not record the namespace; newer libcni and pycni do.
    assert without(ours_cache, "netns") == go_cache_during_add
    assert ours_cache["netns"] == "/var/run/netns/blue"


@pytest.mark.parametrize("adder", ["libcni", "pycni"])
def test_attachments_cross_runtimes(
    adder: str, libcni_driver: Path, plugin_dir: Path, reference_dir: Path, netns: NetNS, tmp_path: Path
) -> None:
    """Our loopback after the reference bridge: one runtime adds, the other checks and deletes."""
    bin_dir = tmp_path / "bin"  # noqa: F811
    bin_dir.mkdir()
    for name in ("bridge", "host-local"):
        os.symlink(reference_dir / name, bin_dir / name)
    shutil.copy(plugin_dir / "loopback", bin_dir / "loopback")
    bridge = unique("pctbr")
    netdir = tmp_path / "net.d"
    netdir.mkdir()
    conf = {
        "cniVersion": "1.0.0",
        "name": "crossnet",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "ipam": {"type": "host-local", "subnet": unique_subnet(), "dataDir": str(tmp_path / "ipam")},
            },
            {"type": "loopback"},
        ],
    }
    (netdir / "10-cross.conflist").write_text(json.dumps(conf))
    cache_dir = tmp_path / "cache"
    env = dict(os.environ, CNI_PATH=str(bin_dir), CNI_CACHE_DIR=str(cache_dir))
    cni = CNIConfig([str(bin_dir)], cache_dir=str(cache_dir))
    net = load_network(str(netdir), "crossnet")
    rt = RuntimeConf("pctcross", netns.path, "eth0")
    try:
        if adder == "libcni":
            drive(libcni_driver, "add", netdir, "crossnet", netns.path, "pctcross", env)
            cni.check_network_list(net, rt)
            cni.del_network_list(net, rt)
        else:
            cni.add_network_list(net, rt)
            drive(libcni_driver, "check", netdir, "crossnet", netns.path, "pctcross", env)
            drive(libcni_driver, "del", netdir, "crossnet", netns.path, "pctcross", env)
        assert os.listdir(cache_dir / "results") == []
        assert "eth0" not in {link["ifname"] for link in netns.ip_json("link", "show")}
        assert [f for f in os.listdir(tmp_path / "ipam" / "crossnet") if f[0].isdigit()] == []
    finally:
        delete_link(bridge)
