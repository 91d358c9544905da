"""Results of every version: the spec's examples parse and print unchanged, and
conversions follow libcni's rules."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pycni.spec import jsonfmt
from pycni.spec.errors import CNIError
from pycni.spec.result import DNS, Interface, IPConfig, Result, Route

# The spec's ADD example (Appendix), the result the bridge plugin returns.
SPEC_BRIDGE_RESULT: dict[str, Any] = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "cni0", "mac": "00:11:22:33:44:55"},
        {"name": "veth3243", "mac": "55:44:33:22:11:11"},
        {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"},
    ],
    "ips": [{"interface": 2, "address": "10.1.0.5/16", "gateway": "10.1.0.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {"nameservers": ["10.1.0.1"]},
}

# What the Go reference bridge printed for the seed's bridge.conf (cniVersion 1.0.0).
REFERENCE_100 = """{
    "cniVersion": "1.0.0",
    "interfaces": [
        {
            "name": "cni0",
            "mac": "9a:c3:4a:89:0b:cd"
        },
        {
            "name": "veth4e538a9b",
            "mac": "ea:c0:dc:47:d2:08"
        },
        {
            "name": "eth0",
            "mac": "46:49:95:ad:65:03",
            "sandbox": "/var/run/netns/test-cni"
        }
    ],
    "ips": [
        {
            "interface": 2,
            "address": "10.22.0.2/16",
            "gateway": "10.22.0.1"
        }
    ],
    "routes": [
        {
            "dst": "0.0.0.0/0"
        }
    ],
    "dns": {}
}"""

V040 = {
    "cniVersion": "0.4.0",
    "interfaces": [{"name": "eth0", "mac": "4e:61:5d:2c:cf:5b", "sandbox": "/var/run/netns/fxns"}],
    "ips": [
        {"version": "4", "interface": 0, "address": "10.77.0.2/24", "gateway": "10.77.0.1"},
        {"version": "6", "interface": 0, "address": "fd00::2/64", "gateway": "fd00::1"},
        {"version": "4", "interface": 0, "address": "10.88.0.2/24"},
    ],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}, {"dst": "192.168.0.0/16", "gw": "10.77.0.254"}],
    "dns": {"nameservers": ["10.77.0.1"], "domain": "example.org", "search": ["a.example.org"], "options": ["ndots:2"]},
}

V020 = {
    "cniVersion": "0.2.0",
    "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]},
    "ip6": {"ip": "fd00::5/64", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
    "dns": {"nameservers": ["10.1.0.1"]},
}


def test_spec_example_round_trips() -> None:
    assert Result.from_dict(SPEC_BRIDGE_RESULT).to_dict() == SPEC_BRIDGE_RESULT


def test_reference_output_is_reproduced_byte_for_byte() -> None:
    parsed = Result.from_dict(json.loads(REFERENCE_100))
    assert jsonfmt.dumps_indent(parsed.to_dict()) == REFERENCE_100


@pytest.mark.parametrize("doc", [V040, V020])
def test_each_shape_round_trips(doc: dict[str, Any]) -> None:
    assert Result.from_dict(doc).to_dict() == doc


def test_v1_fields_are_kept_in_1_1_0_and_dropped_for_0_4_0() -> None:
    doc = {
        "cniVersion": "1.1.0",
        "interfaces": [
            {
                "name": "eth0",
                "mac": "aa:bb:cc:dd:ee:ff",
                "mtu": 1450,
                "sandbox": "/x",
                "socketPath": "/s",
                "pciID": "0000:00:01.0",
            }
        ],
        "ips": [{"interface": 0, "address": "10.0.0.2/24"}],
        "routes": [
            {"dst": "10.1.0.0/16", "gw": "10.0.0.1", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 100, "scope": 0}
        ],
        "dns": {},
    }
    result = Result.from_dict(doc)
    assert result.to_dict() == doc
    as040 = result.to_dict("0.4.0")
    assert as040["interfaces"] == [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/x"}]
    assert as040["ips"] == [{"version": "4", "interface": 0, "address": "10.0.0.2/24"}]
    # libcni's Route is one type for every version: 0.4.0 keeps the route fields.
    assert as040["routes"] == doc["routes"]
    assert result.to_dict("1.0.0")["interfaces"][0]["mtu"] == 1450


def test_down_to_0_2_0_keeps_first_address_of_each_family() -> None:
    legacy = Result.from_dict(V040).to_dict("0.2.0")
    assert legacy == {
        "cniVersion": "0.2.0",
        "ip4": {
            "ip": "10.77.0.2/24",
            "gateway": "10.77.0.1",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.77.0.254"}],
        },
        "ip6": {"ip": "fd00::2/64", "gateway": "fd00::1", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
        "dns": V040["dns"],
    }


def test_down_to_0_2_0_drops_routes_of_a_missing_family() -> None:
    doc = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}], "routes": [{"dst": "::/0"}, {"dst": "0.0.0.0/0"}]}
    assert Result.from_dict(doc).to_dict("0.1.0")["ip4"] == {"ip": "10.0.0.2/24", "routes": [{"dst": "0.0.0.0/0"}]}


@pytest.mark.parametrize("target", ["0.1.0", "0.2.0"])
def test_down_to_legacy_without_addresses_fails(target: str) -> None:
    result = Result.from_dict({"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}]})
    with pytest.raises(CNIError) as exc:
        result.to_dict(target)
    assert "no valid IP addresses" in exc.value.msg


def test_up_from_0_2_0() -> None:
    result = Result.from_dict(V020)
    assert result.to_dict("1.0.0") == {
        "cniVersion": "1.0.0",
        "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1"}, {"address": "fd00::5/64"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}],
        "dns": {"nameservers": ["10.1.0.1"]},
    }
    assert result.to_dict("0.3.1")["ips"][0] == {"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1"}


def test_host_bits_are_kept() -> None:
    # Go's types.ParseCIDR keeps the address, not the network.
    assert Result.from_dict({"cniVersion": "1.0.0", "routes": [{"dst": "10.1.2.3/16"}]}).to_dict()["routes"] == [
        {"dst": "10.1.2.3/16"}
    ]


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1"}]}, "CIDR"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]}, "10.0.0.300"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.1/24", "gateway": "nope"}]}, "gateway"),
        ({"cniVersion": "1.0.0", "routes": [{"gw": "10.0.0.1"}]}, "dst"),
        ({"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]}, "name"),
        ({"cniVersion": "1.0.0", "ips": {"address": "10.0.0.1/24"}}, "list"),
        ({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mtu": -1}]}, "mtu"),
    ],
)
def test_invalid_results_are_decoding_errors(doc: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CNIError) as exc:
        Result.from_dict(doc)
    assert exc.value.code == 6
    assert fragment in exc.value.msg


def test_unknown_version_is_code_1() -> None:
    with pytest.raises(CNIError) as exc:
        Result.from_dict({"cniVersion": "9.9.9"})
    assert exc.value.code == 1


# -- properties ---------------------------------------------------------------------------

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)


@st.composite
def interfaces(draw: st.DrawFn) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    if draw(st.booleans()):
        return ipaddress.ip_interface(f"{draw(ipv4)}/{draw(st.integers(0, 32))}")
    return ipaddress.ip_interface(f"{draw(ipv6)}/{draw(st.integers(0, 128))}")


names = st.text(alphabet="abcdefghij0123456789", min_size=1, max_size=15)
opt_ip = st.one_of(st.none(), st.ip_addresses())


@st.composite
def results(draw: st.DrawFn) -> Result:
    intfs = draw(
        st.lists(
            st.builds(
                Interface,
                name=names,
                mac=st.sampled_from(["", "aa:bb:cc:dd:ee:ff"]),
                sandbox=st.sampled_from(["", "/run/netns/x"]),
            ),
            max_size=3,
        )
    )
    ips = draw(
        st.lists(
            st.builds(
                IPConfig,
                address=interfaces(),
                gateway=opt_ip,
                interface=st.one_of(st.none(), st.integers(0, max(len(intfs) - 1, 0))) if intfs else st.none(),
            ),
            max_size=4,
        )
    )
    routes = draw(st.lists(st.builds(Route, dst=interfaces(), gw=opt_ip), max_size=4))
    dns = draw(st.builds(DNS, nameservers=st.lists(ipv4, max_size=2), domain=st.sampled_from(["", "example.org"])))
    return Result(cni_version="1.1.0", interfaces=intfs, ips=ips, routes=routes, dns=dns)


@given(results(), st.sampled_from(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]))
def test_conversion_between_current_shapes_is_lossless(result: Result, target: str) -> None:
    # 1.1.0-only fields are not generated here, so every shape since 0.3.0 holds it all.
    back = result.convert(target).convert("1.1.0")
    assert back.to_dict() == result.to_dict()


@given(results())
def test_json_round_trip(result: Result) -> None:
    text = jsonfmt.dumps(result.to_dict())
    assert Result.from_dict(json.loads(text)).to_dict() == result.to_dict()


@given(results(), st.sampled_from(["0.1.0", "0.2.0"]))
def test_legacy_conversion_keeps_first_of_each_family_or_fails(result: Result, target: str) -> None:
    families = {ip.family for ip in result.ips}
    if not families:
        with pytest.raises(CNIError):
            result.to_dict(target)
        return
    legacy = result.to_dict(target)
    for family, key in ((4, "ip4"), (6, "ip6")):
        first = next((ip for ip in result.ips if ip.family == family), None)
        assert (key in legacy) == (first is not None)
        if first is not None:
            assert legacy[key]["ip"] == str(first.address)
