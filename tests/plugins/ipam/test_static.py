"""static IPAM: the reference's results for every way of naming addresses, clear errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pycni import skel

from ...conftest import REFERENCE_DIR, normalize_result, run_plugin


def conf(version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "pctstatic", "type": "bridge", "ipam": {"type": "static", **ipam}}


def call(command: str, config: dict[str, Any], args: str = "") -> Any:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_ARGS": args}
    out = skel.dispatch("static", env, json.dumps(config).encode())
    return json.loads(out.stdout) if out.stdout else None


ADDRESSES = [{"address": "10.10.0.5/24", "gateway": "10.10.0.1"}, {"address": "3ffe:ffff:0:1ff::1/64"}]
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "addresses, routes, dns": (
        conf(
            addresses=ADDRESSES,
            routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.0.254"}, {"dst": "3ffe:ffff:0:1ff::1/64"}],
            dns={"nameservers": ["8.8.8.8"], "domain": "example.com", "search": ["example.com"]},
        ),
        "",
    ),
    "CNI_ARGS IP and GATEWAY": (conf(), "IP=10.10.0.9/24,fd00::9/64;GATEWAY=10.10.0.1"),
    "CNI_ARGS added to addresses": (conf(addresses=ADDRESSES[:1]), "IP=10.10.1.9/24"),
    "args.cni.ips replace addresses": (dict(conf(addresses=ADDRESSES), args={"cni": {"ips": ["10.10.2.2/24"]}}), ""),
    "ips capability replaces addresses": (dict(conf(addresses=ADDRESSES), runtimeConfig={"ips": ["10.10.3.3/24"]}), ""),
    "legacy version": (conf("0.3.1", addresses=ADDRESSES), ""),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", list(CASES))
def test_same_result_as_reference(case: str) -> None:
    config, args = CASES[case]
    ref = run_plugin(Path(REFERENCE_DIR) / "static", "ADD", config, netns="/x", cni_args=args)
    assert ref.returncode == 0, ref.stdout
    assert normalize_result(call("ADD", config, args)) == normalize_result(ref.json)


@pytest.mark.parametrize(
    ("config", "args", "code", "fragment"),
    [
        (conf(addresses=[{"address": "10.10.0.5"}]), "", 7, "invalid CIDR '10.10.0.5' in ipam.addresses[0]"),
        (conf(addresses=[{"address": "10.10.0.5/24", "gateway": "x"}]), "", 7, "invalid gateway address 'x'"),
        (conf(), "IP=10.10.0.5", 4, "invalid CIDR '10.10.0.5' in CNI_ARGS IP"),
        (conf(), "GATEWAY=nope", 4, "invalid gateway address 'nope' in CNI_ARGS GATEWAY"),
        (conf(), "MAC=x", 4, "unknown key 'MAC'"),
        (conf("0.2.0", addresses=[{"address": "10.1.0.5/24"}, {"address": "10.2.0.5/24"}]), "", 7, "more than 1 address"),
        ({"cniVersion": "1.0.0", "name": "x"}, "", 7, "IPAM config missing 'ipam' key"),
    ],
)
def test_bad_input(config: dict[str, Any], args: str, code: int, fragment: str) -> None:
    err = call("ADD", config, args)
    assert err["code"] == code and fragment in err["msg"], err


def test_check_and_del() -> None:
    config = conf(addresses=ADDRESSES)
    result = call("ADD", config)
    assert call("CHECK", dict(config, prevResult=result)) is None
    other = dict(result, ips=[dict(result["ips"][0], gateway="10.10.0.2"), result["ips"][1]])
    assert "Failed to match addr 10.10.0.5" in call("CHECK", dict(config, prevResult=other))["msg"]
    assert "is not in the prevResult" in call("CHECK", dict(config, prevResult=dict(result, ips=[])))["msg"]
    assert call("DEL", config) is None
