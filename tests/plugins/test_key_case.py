"""Every plugin reads its configuration keys as Go's encoding/json reads them into the
reference's structs: a key in another case has the same effect as in the documented case.

Each plugin's documented configuration sets every key it reads (in the configuration, its
`ipam`, `args`, `runtimeConfig` and `prevResult` sections) to a value that is not the
default; the same configuration with every struct key recased (Go's field-name spelling,
"HostPort", or upper case) must parse to the same settings, and the configuration without
those keys must not (so each key really had an effect). Map-typed sections (tuning's
`sysctl`, `capabilities`) keep their keys, as Go keeps a map's keys.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from pycni import registry
from pycni.calico import config as calico_config
from pycni.plugins import request
from pycni.plugins.ipam import static
from pycni.plugins.ipam.hostlocal import config as hostlocal_config
from pycni.plugins.main import bridge, host_device, ipvlan, macvlan, ptp, tap, vlan
from pycni.plugins.meta import _portmap_conf, bandwidth, firewall, tuning
from pycni.skel import CmdArgs, parse_call
from pycni.spec import gokeys

# Sections whose keys are a Go map's, not a struct's: kept as they are.
MAP_KEYS = {"sysctl", "capabilities", "dataplane_options"}

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "veth1", "mac": "0a:00:00:00:00:01"}, {"name": "eth0", "sandbox": "/run/netns/none"}],
    "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}],
    "dns": {"nameservers": ["10.1.2.53"], "search": ["example.test"]},
}
HOST_LOCAL = {
    "type": "host-local",
    "dataDir": "/run/pct-keys",
    "resolvConf": "",
    "ranges": [[{"subnet": "10.9.0.0/24", "rangeStart": "10.9.0.10", "rangeEnd": "10.9.0.20", "gateway": "10.9.0.1"}]],
    "routes": [{"dst": "192.0.2.0/24", "gw": "10.9.0.254"}],
}


def _base(plugin: str, **keys: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "keys", "type": plugin, **keys}


def _prev(call: CmdArgs) -> Any:
    return call.prev_result


def _with_dns(load: Callable[[CmdArgs], Any]) -> Callable[[CmdArgs], Any]:
    """A main plugin's configuration and its own `dns` (which overrides its IPAM's in the result)."""
    return lambda call: (load(call), request.conf_dns(call))


DNS = {"nameservers": ["10.0.0.53"], "domain": "example.test", "search": ["a.test"], "options": ["ndots:2"]}


Parser = Callable[[CmdArgs], Any]
# plugin type -> (what parses its configuration, its documented configuration)
CASES: dict[str, tuple[Parser, dict[str, Any]]] = {
    "bridge": (
        _with_dns(bridge.load_conf),
        _base(
            "bridge",
            bridge="br-keys",
            isDefaultGateway=True,
            forceAddress=True,
            ipMasq=True,
            mtu=1400,
            hairpinMode=True,
            vlanTrunk=[{"minID": 10, "maxID": 12}, {"id": 20}],
            preserveDefaultVlan=False,
            macspoofchk=True,
            enabledad=True,
            portIsolation=True,
            runtimeConfig={"mac": "0a:00:00:00:00:09"},
            args={"cni": {"mac": "0a:00:00:00:00:08"}},
            ipam={"type": "host-local"},
            dns=DNS,
        ),
    ),
    "ptp": (_with_dns(ptp.load_conf), _base("ptp", ipMasq=True, mtu=1400, ipam={"type": "host-local"}, dns=DNS)),
    "macvlan": (
        _with_dns(macvlan.load_conf),
        _base(
            "macvlan",
            master="eth9",
            mode="private",
            mtu=1400,
            linkInContainer=True,
            bcqueuelen=100,
            runtimeConfig={"mac": "0a:00:00:00:00:03"},
            ipam={"type": "static"},
            dns=DNS,
        ),
    ),
    "ipvlan": (
        _with_dns(ipvlan.load_conf),
        _base("ipvlan", master="eth9", mode="l3", mtu=1400, linkInContainer=True, ipam={"type": "static"}),
    ),
    "vlan": (
        _with_dns(vlan.load_conf),
        _base("vlan", master="eth9", vlanId=42, mtu=1400, linkInContainer=True, ipam={"type": "static"}),
    ),
    "tap": (
        _with_dns(tap.load_conf),
        _base(
            "tap",
            multiQueue=True,
            mtu=1400,
            mac="0a:00:00:00:00:07",
            owner=1000,
            group=1000,
            bridge="br0",
            runtimeConfig={"mac": "0a:00:00:00:00:06"},
            ipam={"type": "static"},
            dns=DNS,
        ),
    ),
    "host-device": (
        _with_dns(host_device.load_conf),
        _base("host-device", device="eth9", runtimeConfig={"deviceID": "0000:00:09.0"}, ipam={"type": "static"}, dns=DNS),
    ),
    "loopback": (_prev, _base("loopback", prevResult=PREV)),
    "host-local": (
        hostlocal_config.load,
        _base("host-local", ipam=HOST_LOCAL, args={"cni": {"ips": ["10.9.0.15"]}}, runtimeConfig={"ips": ["10.9.0.16"]}),
    ),
    "static": (
        static.add,
        _base(
            "static",
            ipam={
                "type": "static",
                "addresses": [{"address": "10.10.0.5/24", "gateway": "10.10.0.1"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.10.0.1"}],
                "dns": {"nameservers": ["10.10.0.53"], "domain": "example.test", "search": ["a.test"], "options": ["ndots:2"]},
            },
            args={"cni": {"ips": ["10.10.0.6/24"]}},
            runtimeConfig={"ips": ["10.10.0.7/24"]},
        ),
    ),
    "calico": (
        lambda call: calico_config.parse(call.conf),
        _base(
            "calico",
            datastore_type="etcdv3",
            etcd_endpoints="http://127.0.0.1:2379",
            etcd_key_file="/k",
            etcd_cert_file="/c",
            etcd_ca_cert_file="/ca",
            log_level="debug",
            log_file_path="/tmp/pct-keys.log",
            mtu=1400,
            num_queues=2,
            nodename="node9",
            nodename_file="/tmp/pct-nodename",
            nodename_file_optional=True,
            include_default_routes=True,
            container_settings={"allow_ip_forwarding": True},
            feature_control={"floating_ips": True, "ip_addrs_no_ipam": True},
            kubernetes={"kubeconfig": "/kc", "node_name": "n"},
            policy={"type": "k8s"},
            ipam={"type": "calico-ipam", "assign_ipv4": "false", "assign_ipv6": "true", "ipv6_pools": ["fd00::/64"]},
        ),
    ),
    "portmap": (
        _portmap_conf.parse,
        _base(
            "portmap",
            snat=False,
            masqAll=True,
            markMasqBit=5,
            runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "127.0.0.1"}]},
            prevResult=PREV,
        ),
    ),
    "bandwidth": (
        bandwidth.parse_limits,
        _base(
            "bandwidth",
            runtimeConfig={"bandwidth": {"ingressRate": 8000, "ingressBurst": 16000, "egressRate": 800, "egressBurst": 200}},
            prevResult=PREV,
        ),
    ),
    "tuning": (
        tuning.parse,
        _base(
            "tuning",
            sysctl={"net.ipv4.conf.IFNAME.arp_filter": "1"},
            mac="0a:00:00:00:00:05",
            promisc=True,
            mtu=1400,
            allmulti=True,
            txQLen=50,
            dataDir="/run/pct-tuning",
            runtimeConfig={"mac": "0a:00:00:00:00:04"},
            args={"cni": {"mtu": 1300, "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"}}},
            prevResult=PREV,
        ),
    ),
    "firewall": (firewall._conf, _base("firewall", ingressPolicy="same-bridge", markBit=7, prevResult=PREV)),
}

# Parsed as DEL: at ADD these look the master up, which does not exist here.
COMMAND = {"macvlan": "DEL", "ipvlan": "DEL", "vlan": "DEL"}


def recase(value: Any, style: Callable[[str], str]) -> Any:
    """`value` with every struct key spelled by `style` (map sections left alone)."""
    if isinstance(value, list):
        return [recase(v, style) for v in value]
    if not isinstance(value, dict):
        return value
    return {style(k): (v if k in MAP_KEYS else recase(v, style)) for k, v in value.items()}


def go_field_name(key: str) -> str:
    """containerd's spelling: Go's exported field name (HostPort for hostPort)."""
    return key[0].upper() + key[1:]


def comparable(value: Any) -> Any:
    """A parsed configuration as plain data, without the raw JSON it came from."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.name != "raw"}
    if isinstance(value, dict):
        return {str(k): comparable(v) for k, v in value.items() if k != "raw"}
    if isinstance(value, list | tuple):
        return [comparable(v) for v in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value if isinstance(value, int | float | str | bool | type(None)) else str(value)


def parse(plugin: str, conf: dict[str, Any]) -> Any:
    parser, _ = CASES[plugin]
    env = {
        "CNI_COMMAND": COMMAND.get(plugin, "ADD"),
        "CNI_CONTAINERID": "keys",
        "CNI_NETNS": "/run/netns/none",
        "CNI_IFNAME": "eth0",
    }
    module = importlib.import_module(registry.module_name(plugin))
    call = parse_call(plugin, module, env, json.dumps(conf).encode())
    return comparable((parser(call), call.prev_result))


def stripped(conf: dict[str, Any]) -> dict[str, Any]:
    """The configuration without the keys under test (only what every call needs)."""
    return {k: v for k, v in conf.items() if k in ("cniVersion", "name", "type")}


@pytest.mark.parametrize("style", [go_field_name, str.upper], ids=["GoFieldName", "UPPER"])
@pytest.mark.parametrize("plugin", list(CASES))
def test_a_key_in_another_case_has_the_same_effect(plugin: str, style: Callable[[str], str]) -> None:
    documented = CASES[plugin][1]
    recased = recase(documented, style)
    assert recased != documented
    # cniVersion, name and type are recased too (Go's skel and types.NetConf read them so).
    expected = parse(plugin, documented)
    assert parse(plugin, recased) == expected
    try:
        without = parse(plugin, stripped(documented))
    except Exception:  # noqa: BLE001 - refused without its keys: they had an effect
        return
    assert without != expected


def test_go_reads_keys_so() -> None:
    """encoding/json's rules, as gokeys implements them."""
    data = {"hostPort": 1, "HostPort": 2, "HOSTPORT": None}
    assert gokeys.get(data, "hostPort") == 2  # the last matching key with a value
    assert gokeys.get({"bandWidth": 5}, "bandwidth") == 5
    assert gokeys.get({"\u212aind": "k"}, "kind") == "k"  # the Kelvin sign folds onto k
    assert gokeys.get({"ho\u017ftPort": 3}, "hostPort") == 3  # the long s folds onto s
    assert gokeys.get({"h\u00f6stPort": 3}, "hostPort") is None
    assert gokeys.normalise({"Mtu": 1, "MTU": 2}, ("mtu", "MTU")) == {"mtu": 1, "MTU": 2}  # exact match first
    assert gokeys.mentions({"IngressRate": None}, "ingressRate") and not gokeys.has({"IngressRate": None}, "ingressRate")
