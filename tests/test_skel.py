"""The plugin entry: every error path gives a well-formed error, never a traceback."""

from __future__ import annotations

import json
import os
import threading
import types
from typing import Any

import pytest

from pycni import skel
from pycni.spec.errors import CNIError
from pycni.spec.result import IPConfig, Result

from .conftest import NetNS, run_plugin

CALLS: list[tuple[str, Any]] = []


def _make_plugin(**overrides: Any) -> types.ModuleType:
    module = types.ModuleType("pycni.plugins.main.fake_test")

    def add(call: skel.CmdArgs) -> Result:
        CALLS.append(("ADD", call))
        import ipaddress

        return Result(cni_version=call.cni_version, ips=[IPConfig(address=ipaddress.ip_interface("10.0.0.2/24"))])

    def check(call: skel.CmdArgs) -> None:
        CALLS.append(("CHECK", call))

    def delete(call: skel.CmdArgs) -> None:
        CALLS.append(("DEL", call))

    module.add = add  # type: ignore[attr-defined]
    module.check = check  # type: ignore[attr-defined]
    module.delete = delete  # type: ignore[attr-defined]
    for key, value in overrides.items():
        setattr(module, key, value)
    return module


def env(command: str = "ADD", **extra: str) -> dict[str, str]:
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "abc123",
        "CNI_NETNS": "/run/netns/nothere",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    }
    base.update(extra)
    return {k: v for k, v in base.items() if v != "-"}


def conf(**extra: Any) -> bytes:
    doc: dict[str, Any] = {"cniVersion": "1.0.0", "name": "net1", "type": "fake-test"}
    doc.update(extra)
    return json.dumps(doc).encode()


def error_of(outcome: skel.Outcome) -> dict[str, Any]:
    assert outcome.code != 0
    doc = json.loads(outcome.stdout)
    assert set(doc) <= {"cniVersion", "code", "msg", "details"}
    assert isinstance(doc["code"], int) and doc["msg"]
    assert b"Traceback" not in outcome.stdout
    return doc


def test_add_prints_result_in_config_version() -> None:
    for ver in ("0.2.0", "0.4.0", "1.1.0"):
        outcome = skel.dispatch(_make_plugin(), env(), conf(cniVersion=ver))
        assert outcome.code == 0, outcome.stdout
        out = json.loads(outcome.stdout)
        assert out["cniVersion"] == ver
        assert ("ip4" in out) == (ver == "0.2.0")


@pytest.mark.parametrize(
    "environment, stdin, code, fragment",
    [
        (env(CNI_COMMAND="-"), conf(), None, None),  # about text, success
        (env("FROB"), conf(), 4, "unknown CNI_COMMAND: FROB"),
        (env(CNI_CONTAINERID="-"), conf(), 4, "CNI_CONTAINERID"),
        (env(CNI_NETNS="-", CNI_IFNAME="-"), conf(), 4, "CNI_NETNS,CNI_IFNAME"),
        (env(), b"{", 6, "error parsing"),
        (env(), b"", 6, "error parsing"),
        (env(), conf(name=None), 7, "network name"),
        (env(), conf(name="a/b"), 7, "invalid characters"),
        (env(), conf(cniVersion="7.0.0"), 1, "incompatible CNI versions"),
        (env(), conf(cniVersion="x"), 6, "invalid version"),
        (env("CHECK"), conf(cniVersion="0.3.1"), 1, "does not allow CHECK"),
        (env("GC"), conf(cniVersion="1.0.0"), 1, "does not allow GC"),
        (env("STATUS"), conf(cniVersion="1.0.0"), 1, "does not allow STATUS"),
        (env(CNI_CONTAINERID="../../etc"), conf(), 4, "containerID"),
        (env(CNI_IFNAME="a" * 16), conf(), 4, "too long"),
        (env(CNI_IFNAME="a/b"), conf(), 4, "'/'"),
        (env(CNI_IFNAME=".."), conf(), 4, ". or .."),
        (env(CNI_ARGS="nonsense"), conf(), 4, "CNI_ARGS"),
        (env(), conf(prevResult={"cniVersion": "1.0.0", "ips": [{"address": "bogus"}]}), 6, "prevResult"),
        (env(CNI_NETNS="/proc/self/ns/net"), conf(), 4, "own (host) network namespace"),
    ],
)
def test_error_paths(environment: dict[str, str], stdin: bytes, code: int | None, fragment: str | None) -> None:
    CALLS.clear()
    outcome = skel.dispatch(_make_plugin(), environment, stdin)
    if code is None:
        assert outcome.code == 0 and b"CNI protocol versions supported" in outcome.stderr
        return
    doc = error_of(outcome)
    assert doc["code"] == code, doc
    assert fragment in doc["msg"] + doc.get("details", "")
    assert not CALLS, "the plugin must not run on invalid input"


def test_version_command() -> None:
    outcome = skel.dispatch(_make_plugin(SUPPORTED_VERSIONS=("0.4.0", "1.0.0")), env("VERSION"), b'{"cniVersion":"1.0.0"}')
    assert json.loads(outcome.stdout) == {"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}


def test_unexpected_exception_is_code_999_without_traceback() -> None:
    def boom(call: skel.CmdArgs) -> Result:
        raise ZeroDivisionError("division by zero")

    doc = error_of(skel.dispatch(_make_plugin(add=boom), env(), conf()))
    assert doc["code"] == 999
    assert "ZeroDivisionError" in doc["msg"]
    assert "plugin log" in doc["details"]


def test_plugin_error_keeps_its_code() -> None:
    def busy(call: skel.CmdArgs) -> None:
        raise CNIError(11, "datastore busy", "try again")

    doc = error_of(skel.dispatch(_make_plugin(delete=busy), env("DEL"), conf()))
    assert doc == {"cniVersion": "1.0.0", "code": 11, "msg": "datastore busy", "details": "try again"}


def test_gc_and_status_default_to_success() -> None:
    for command in ("GC", "STATUS"):
        outcome = skel.dispatch(_make_plugin(), env(command), conf(cniVersion="1.1.0"))
        assert outcome.code == 0 and outcome.stdout == b""


def test_del_needs_no_netns() -> None:
    CALLS.clear()
    outcome = skel.dispatch(_make_plugin(), env("DEL", CNI_NETNS="-"), conf())
    assert outcome.code == 0
    assert CALLS[0][0] == "DEL"


def test_prev_result_is_given_in_config_version() -> None:
    CALLS.clear()
    prev = {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.0.0.9/24"}]}
    skel.dispatch(_make_plugin(), env("CHECK"), conf(cniVersion="1.0.0", prevResult=prev))
    call = CALLS[0][1]
    assert call.prev_result.cni_version == "1.0.0"
    assert str(call.prev_result.ips[0].address) == "10.0.0.9/24"


def test_dispatch_changes_no_process_state() -> None:
    before = (dict(os.environ), os.getcwd(), threading.active_count())
    for command in ("ADD", "DEL", "CHECK", "VERSION", "FROB"):
        skel.dispatch(_make_plugin(), env(command), conf())
    assert (dict(os.environ), os.getcwd(), threading.active_count()) == before


def test_real_executable_error_output(plugin_dir: Any, netns: NetNS) -> None:
    """The installed loopback executable: no stdin JSON gives code 6 on stdout, exit 1."""
    run = run_plugin(plugin_dir / "loopback", "ADD", b"not json", netns=netns.path)
    assert run.returncode == 1
    doc = json.loads(run.stdout)
    assert doc["code"] == 6 and "Traceback" not in run.stdout + run.stderr
