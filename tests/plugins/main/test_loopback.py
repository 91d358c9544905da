"""loopback: the same result and kernel state as the reference plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ...conftest import NetNS, normalize_result, run_plugin

CONF = {"cniVersion": "1.0.0", "name": "lonet", "type": "loopback"}


def lo_state(ns: NetNS) -> tuple[bool, list[str]]:
    (link,) = ns.ip_json("addr", "show", "lo")
    addrs = sorted(f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"])
    return "UP" in link["flags"], addrs


@pytest.mark.reference
@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_same_result_and_state_as_reference(version: str, plugin_dir: Path, reference_dir: Path, make_netns) -> None:
    ours_ns, ref_ns = make_netns(), make_netns()
    conf = dict(CONF, cniVersion=version)
    ours = run_plugin(plugin_dir / "loopback", "ADD", conf, netns=ours_ns.path)
    ref = run_plugin(reference_dir / "loopback", "ADD", conf, netns=ref_ns.path)
    assert ours.returncode == ref.returncode == 0, ours.stdout
    expected = normalize_result(ref.json)
    if version != "1.0.0":
        # The reference labels a 1.0.0-shaped result with the older version; ours has the
        # `version` field those versions require.
        for ip in expected["ips"]:
            ip["version"] = "4" if "." in ip["address"] else "6"
    expected["interfaces"][0]["sandbox"] = ours_ns.path
    assert normalize_result(ours.json) == expected
    assert lo_state(ours_ns) == lo_state(ref_ns) == (True, ["127.0.0.1/8", "::1/128"])
    for executable, ns in ((plugin_dir / "loopback", ours_ns), (reference_dir / "loopback", ref_ns)):
        assert run_plugin(executable, "DEL", conf, netns=ns.path).returncode == 0
    assert lo_state(ours_ns)[0] is lo_state(ref_ns)[0] is False


def test_legacy_version_is_converted(plugin_dir: Path, netns: NetNS) -> None:
    # The reference prints a 1.0.0-shaped result labelled 0.2.0; we print a real 0.2.0 result.
    out = run_plugin(plugin_dir / "loopback", "ADD", dict(CONF, cniVersion="0.2.0"), netns=netns.path)
    assert out.json == {"cniVersion": "0.2.0", "ip4": {"ip": "127.0.0.1/8"}, "ip6": {"ip": "::1/128"}, "dns": {}}


def test_prev_result_is_passed_through(plugin_dir: Path, netns: NetNS) -> None:
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": netns.path}],
        "ips": [{"address": "10.1.0.2/24", "interface": 0}],
    }
    out = run_plugin(plugin_dir / "loopback", "ADD", dict(CONF, prevResult=prev), netns=netns.path)
    assert out.json == dict(prev, dns={})


def test_check(plugin_dir: Path, netns: NetNS) -> None:
    conf = dict(CONF, prevResult={"cniVersion": "1.0.0"})
    down = run_plugin(plugin_dir / "loopback", "CHECK", conf, netns=netns.path)
    assert down.returncode == 1 and "loopback interface is down" in down.json["msg"]
    run_plugin(plugin_dir / "loopback", "ADD", CONF, netns=netns.path)
    assert run_plugin(plugin_dir / "loopback", "CHECK", conf, netns=netns.path).returncode == 0


def test_del_of_missing_namespace_succeeds(plugin_dir: Path) -> None:
    out = run_plugin(plugin_dir / "loopback", "DEL", CONF, netns="/run/netns/pct-does-not-exist")
    assert out.returncode == 0, out.stdout


def test_add_to_missing_namespace_is_a_clear_error(plugin_dir: Path) -> None:
    out = run_plugin(plugin_dir / "loopback", "ADD", CONF, netns="/run/netns/pct-does-not-exist")
    assert out.returncode == 1
    assert out.json["code"] == 4 and "/run/netns/pct-does-not-exist does not exist" in out.json["msg"]
    assert json.loads(out.stdout)["cniVersion"] == "1.0.0"
