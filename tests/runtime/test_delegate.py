"""Delegation: the delegated plugin gets the caller's environment and bytes with CNI_COMMAND set."""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import pytest

from pycni import launcher, skel
from pycni.runtime import delegate, invoke
from pycni.spec.config import PluginConf
from pycni.spec.errors import CNIError

from ..conftest import NetNS
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


def _call_for(
    plugin_dir: Path, conf: dict[str, object], command: str, netns: str = "", mode: skel.CallMode = skel.IN_PROCESS
) -> skel.CmdArgs:
    stdin = json.dumps(conf).encode()
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "pct-deleg",
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(plugin_dir),
    }
    call = skel.parse_call("pct-main", types.ModuleType("pct_main"), env, stdin, mode)
    return call


def test_our_launcher_is_dispatched_in_process(plugin_dir: Path, netns: NetNS, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("delegation to our own launcher started a process")

    monkeypatch.setattr(invoke, "execute", no_process)
    conf = {"cniVersion": "1.0.0", "name": "pctnet", "type": "pct-main"}
    result = delegate.add(_call_for(plugin_dir, conf, "ADD", netns.path), "loopback")
    assert [str(ip.address) for ip in result.ips] == ["127.0.0.1/8", "::1/128"]
    assert "UP" in netns.run("ip", "link", "show", "lo").stdout
    delegate.delete(_call_for(plugin_dir, conf, "DEL", netns.path), "loopback")
    with pytest.raises(CNIError) as exc:  # errors come back as the launcher would print them
        delegate.add(_call_for(plugin_dir, conf, "ADD", "/run/netns/pct-missing"), "loopback")
    assert exc.value.code == 4 and exc.value.msg.startswith("loopback: network namespace")


def test_delegation_keeps_the_call_mode(plugin_dir: Path) -> None:
    conf = {"cniVersion": "1.1.0", "name": "pctnet", "type": "pct-main", "requireAgent": True}
    via_agent = skel.CallMode(via_agent=True, agent_socket="/run/pycni/agent.sock")
    delegate.status(_call_for(plugin_dir, conf, "STATUS", mode=via_agent), "loopback")
    with pytest.raises(CNIError) as exc:
        delegate.status(_call_for(plugin_dir, conf, "STATUS"), "loopback")
    assert exc.value.code == 50


@pytest.mark.reference
def test_other_executables_still_run_as_processes(reference_dir: Path, netns: NetNS) -> None:
    conf = {"cniVersion": "1.0.0", "name": "pctnet", "type": "pct-main"}
    assert launcher.runs_here(str(reference_dir / "loopback"), "loopback") is None
    result = delegate.add(_call_for(reference_dir, conf, "ADD", netns.path), "loopback")
    assert result.interfaces[0].name == "lo"
