"""Delegation: the delegated plugin gets the caller's environment and bytes with CNI_COMMAND set."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pycni import skel
from pycni.runtime import delegate
from pycni.spec.config import PluginConf
from pycni.spec.errors import CNIError

from .test_api import bin_dir, calls, log  # noqa: F401 - fixtures


def make_call(bin_dir: Path, log: Path, **conf_extra: object) -> skel.CmdArgs:  # noqa: F811
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "x", "log": str(log), **conf_extra}
    stdin = json.dumps(conf).encode()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir)}
    return skel.CmdArgs(
        command="ADD",
        container_id="c1",
        netns="/x",
        ifname="eth0",
        args="",
        path=[str(bin_dir)],
        stdin=stdin,
        conf=PluginConf.parse(stdin),
        env=env,
        plugin_type="x",
        log=logging.LoggerAdapter(logging.getLogger("test"), {}),
    )


def test_delegate_add_and_del(bin_dir: Path, log: Path) -> None:  # noqa: F811
    call = make_call(bin_dir, log, result={"ips": [{"address": "10.5.0.3/24"}]})
    result = delegate.add(call, "fake-ipam")
    assert result.cni_version == "1.0.0" and str(result.ips[0].address) == "10.5.0.3/24"
    delegate.delete(call, "fake-ipam")
    seen = calls(log)
    assert [c["command"] for c in seen] == ["ADD", "DEL"]
    assert seen[1]["env"]["CNI_CONTAINERID"] == "c1" and seen[1]["stdin"]["name"] == "n"


def test_delegate_error_names_the_plugin(bin_dir: Path, log: Path) -> None:  # noqa: F811
    call = make_call(bin_dir, log, failOn="ADD", failCode=103, failMsg="no addresses left")
    with pytest.raises(CNIError) as exc:
        delegate.add(call, "fake-ipam")
    assert exc.value.code == 103 and exc.value.msg == "fake-ipam: no addresses left"
    with pytest.raises(CNIError, match='failed to find plugin "nothere"'):
        delegate.add(call, "nothere")
