"""flanneld's and the flannel plugin's parts without a cluster: the network configuration
(flannel's defaults, errors naming the key), leases as flannel writes them in etcd, the command
line and FLANNELD_* variables, subnet.env, the nftables rules, and the delegate configuration
byte for byte as flannel-io/cni-plugin writes it."""

from __future__ import annotations

import ipaddress
import json

import pytest

from pycni.flannel import config, flags, lease, masq, subnetenv
from pycni.flannel.plugin import go_marshal

# -- the network configuration ---------------------------------------------------------------


def test_defaults_as_flannel() -> None:
    c = config.parse('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    assert (c.subnet_len, str(c.subnet_min), str(c.subnet_max)) == (24, "10.244.1.0", "10.244.255.0")
    assert (c.backend.type, c.backend.vni, c.backend.udp_port, c.backend.direct_routing) == ("vxlan", 1, 8472, False)
    small = config.parse('{"Network": "10.5.0.0/24", "Backend": {"Type": "host-gw"}}')
    assert (small.subnet_len, str(small.subnet_min), str(small.subnet_max)) == (26, "10.5.0.64", "10.5.0.192")


def test_keys_match_case_insensitively_as_go() -> None:
    c = config.parse('{"network": "10.1.0.0/16", "subnetlen": 20, "backend": {"type": "vxlan", "vni": 7, "directrouting": true}}')
    assert (c.subnet_len, c.backend.vni, c.backend.direct_routing) == (20, 7, True)


def test_dual_stack() -> None:
    c = config.parse('{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:1::/56", "Backend": {"Type": "vxlan"}}')
    assert (c.ipv6_subnet_len, str(c.ipv6_subnet_min)) == (64, "fd00:1:0:1::")


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        ({"Network": "10.1.0.0/16", "SubnetLen": 31}, "SubnetLen 31 is out of range"),
        ({"Network": "10.1.0.0/16", "SubnetLen": 17}, "SubnetLen 17 is out of range for Network 10.1.0.0/16"),
        (
            {"Network": "10.1.0.0/16", "SubnetMin": "10.1.200.0", "SubnetMax": "10.1.100.0"},
            "SubnetMin 10.1.200.0 is above SubnetMax",
        ),
        ({"Network": "10.1.0.0/16", "SubnetMin": "10.2.0.0"}, "SubnetMin 10.2.0.0 is not in the range"),
        ({"Network": "10.1.0.0/16", "SubnetMin": "10.1.0.128"}, "SubnetMin 10.1.0.128 is not on a SubnetLen boundary"),
        ({"Network": "10.1.0.0/29"}, "Network 10.1.0.0/29 is too small"),
        ({"SubnetLen": 24}, "Network is missing"),
        (
            {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1, "DirectRoute": True}},
            "unknown key 'DirectRoute' in Backend",
        ),
        ({"Network": "10.1.0.0/16", "SubnetLenght": 24}, "unknown key 'SubnetLenght'"),
        ({"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "VNI": "1"}}, "Backend.VNI must be an integer"),
        ({"Network": "10.1.0.0/16", "Backend": {"Type": "udp"}}, "Backend.Type 'udp' is not supported"),
        ({"Network": "10.1.0.0/16"}, "Backend.Type 'udp' is not supported"),  # flannel's default backend
        ({"Network": "10.1.0.0/16", "Backend": {"Type": "wireguard"}}, "supported backends: vxlan, host-gw"),
        (
            {"Network": "10.1.0.0/16", "Backend": {"Type": "ipip"}},
            "which this kernel lacks" if not config.kernel_has_ipip() else "the ipip backend is not implemented",
        ),
        ({"Network": "10.1.0.0/16", "EnableIPv6": True, "Backend": {"Type": "vxlan"}}, "IPv6Network is missing"),
        ({"Network": "fd00::/64", "Backend": {"Type": "vxlan"}}, "Network 'fd00::/64' is not an IPv4 network"),
    ],
)
@pytest.mark.difference("flanneld-strict-config")
def test_invalid_configurations_name_the_key(doc: dict[str, object], names: str) -> None:
    doc.setdefault("Backend", {"Type": "vxlan"}) if "udp" not in names else None
    with pytest.raises(config.ConfigError) as err:
        config.parse(json.dumps(doc))
    assert names in str(err.value)


# -- leases --------------------------------------------------------------------------------------


def test_lease_written_as_flannel_writes_it() -> None:
    held = lease.Lease(
        ipaddress.IPv4Network("10.244.3.0/24"),
        ipaddress.IPv4Address("172.20.0.11"),
        "vxlan",
        lease.VtepData(1, "5e:1a:0c:7f:33:21"),
    )
    assert held.key == "10.244.3.0-24"
    assert held.value() == (
        '{"PublicIP":"172.20.0.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"5e:1a:0c:7f:33:21"}}'
    )
    hostgw = lease.Lease(ipaddress.IPv4Network("10.244.4.0/24"), ipaddress.IPv4Address("172.20.0.12"), "host-gw")
    assert hostgw.value() == '{"PublicIP":"172.20.0.12","PublicIPv6":null,"BackendType":"host-gw"}'
    back = lease.from_kv("/coreos.com/network/subnets/10.244.3.0-24", held.value())
    assert back == held


def test_dual_stack_key() -> None:
    key = lease.subnet_key(ipaddress.IPv4Network("10.244.3.0/24"), ipaddress.IPv6Network("fd00:1:0:3::/64"))
    assert key == "10.244.3.0-24&fd00:1:0:3::-64"
    assert lease.parse_key("/coreos.com/network/subnets/" + key) == (
        ipaddress.IPv4Network("10.244.3.0/24"),
        ipaddress.IPv6Network("fd00:1:0:3::/64"),
    )
    assert lease.parse_key("/coreos.com/network/config") is None


# -- the command line ------------------------------------------------------------------------


def test_go_flag_syntax_and_env() -> None:
    opts = flags.parse(["--etcd-endpoints", "http://a:2379", "-iface=eth1", "--iface", "10.0.0.5", "-ip-masq", "-v=2"], {})
    assert (opts["etcd-endpoints"], opts["iface"], opts["ip-masq"], opts["v"]) == ("http://a:2379", ["eth1", "10.0.0.5"], True, 2)
    assert opts["etcd-prefix"] == "/coreos.com/network" and opts["subnet-file"] == "/run/flannel/subnet.env"
    assert opts["subnet-lease-renew-margin"] == 60
    env = {
        "FLANNELD_ETCD_PREFIX": "/my/net",
        "FLANNELD_IP_MASQ": "true",
        "FLANNELD_IFACE": "eth2",
        "FLANNELD_ETCD_ENDPOINTS": "x",
    }
    opts = flags.parse(["--etcd-endpoints=http://b:2379"], env)
    assert (opts["etcd-prefix"], opts["ip-masq"], opts["iface"], opts["etcd-endpoints"]) == (
        "/my/net",
        True,
        ["eth2"],
        "http://b:2379",
    )


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--no-such-flag"], {}, "flag provided but not defined: -no-such-flag"),
        (["--healthz-port"], {}, "flag needs an argument: -healthz-port"),
        (["--healthz-port=http"], {}, "invalid value 'http' for flag -healthz-port"),
        ([], {"FLANNELD_IP_MASQ": "yes"}, "invalid boolean value 'yes' for FLANNELD_IP_MASQ"),
    ],
)
def test_bad_flags(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(flags.FlagError) as err:
        flags.parse(argv, env)
    assert message in str(err.value)


# -- subnet.env ----------------------------------------------------------------------------------


def test_subnet_env_as_flanneld_writes_it(tmp_path: object) -> None:
    c = config.parse('{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}')
    text = subnetenv.render(c, False, ipaddress.IPv4Network("10.244.3.0/24"), None, 1450)
    assert text == "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
    c6 = config.parse(
        '{"Network": "10.1.0.0/16", "EnableIPv6": true, "IPv6Network": "fd00:1::/56", "Backend": {"Type": "vxlan"}}'
    )
    text = subnetenv.render(c6, True, ipaddress.IPv4Network("10.1.3.0/24"), ipaddress.IPv6Network("fd00:1:0:3::/64"), 1450)
    assert text.splitlines() == [
        "FLANNEL_NETWORK=10.1.0.0/16",
        "FLANNEL_SUBNET=10.1.3.1/24",
        "FLANNEL_IPV6_NETWORK=fd00:1::/56",
        "FLANNEL_IPV6_SUBNET=fd00:1:0:3::1/64",
        "FLANNEL_MTU=1450",
        "FLANNEL_IPMASQ=true",
    ]
    values = {"FLANNEL_SUBNET": "10.1.3.1/24"}
    assert subnetenv.previous_subnet(values, "FLANNEL_SUBNET", 4) == ipaddress.IPv4Network("10.1.3.0/24")


# -- the nftables rules ---------------------------------------------------------------------------


def test_masquerade_rules_are_flannels() -> None:
    text = masq.script(masq.Plan(ipaddress.IPv4Network("10.244.0.0/16"), ipaddress.IPv4Network("10.244.3.0/24"), True, True))
    rules = [line.split(" postrtg ", 1)[1] for line in text.splitlines() if line.startswith("add rule ip flannel-ipv4 postrtg")]
    assert rules == [
        "meta mark 0x4000 return",
        "ip saddr 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
        "ip saddr 10.244.0.0/16 ip daddr 10.244.3.0/24 return",
        "ip saddr != 10.244.3.0/24 ip daddr 10.244.0.0/16 return",
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random",
    ]


# -- the delegate configuration, as Go marshals it -------------------------------------------------


def test_go_marshal_sorts_maps_and_escapes_as_go() -> None:
    assert go_marshal({"b": 1, "a": [True, None, 1.0, 0.5, "<&>"]}) == '{"a":[true,null,1,0.5,"\\u003c\\u0026\\u003e"],"b":1}'
