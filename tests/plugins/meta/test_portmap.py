"""portmap with real traffic: a TCP server in a container reached through its host port."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from pycni.plugins.meta import _portmap_records as records
from pycni.plugins.meta._portmap_iptables import chain_name
from pycni.plugins.meta._portmap_nft import network_prefix
from pycni.runtime import RuntimeConf
from pycni.spec.errors import CNIError

from ...conftest import NetNS, run_plugin, unique
from .conftest import MAIN_IMPLS, ask, free_port, nft_mentions, nft_ruleset, portmap_elements, sh


def portmap(**extra: Any) -> dict[str, Any]:
    return {"type": "portmap", "capabilities": {"portMappings": True}, **extra}


@pytest.mark.parametrize("main", MAIN_IMPLS)
@pytest.mark.difference("portmap-nftables")
def test_reached_from_loopback_host_address_client_and_neighbour(
    main: str, make_network: Any, make_netns: Any, tcp_server: Any, client_ns: Any
) -> None:
    network = make_network([portmap()], main=main)
    web, neighbour = make_netns(), make_netns()
    port = free_port()
    mappings = {"portMappings": [{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}]}
    att = network.attach(web, mappings)
    other = network.attach(neighbour)
    tcp_server(web, 8080)
    client = client_ns()
    gateway = network.gateway
    # From the host's loopback: masqueraded to the bridge address (route_localnet + SNAT).
    assert ask("127.0.0.1", port) == gateway
    # From a host address we own: the host's own address.
    assert ask(gateway, port) == gateway
    # From another machine (a namespace behind its own link): its address, unchanged.
    assert ask(client.host_address, port, ns=client.ns) == client.address
    # From a neighbour on the same bridge: masqueraded, or its reply would bypass the host.
    assert ask(gateway, port, ns=neighbour) == gateway
    # Hairpin: the container to its own host port.
    assert ask(gateway, port, ns=web) == gateway
    network.check(att)
    network.detach(att)
    assert nft_mentions(att.rt.container_id) == []
    with pytest.raises(OSError):
        ask(gateway, port, timeout=0.5)
    network.detach(other)


def mapping(port: int, **extra: Any) -> dict[str, Any]:
    return {"portMappings": [{"hostPort": port, "containerPort": 8080, "protocol": "tcp", **extra}]}


@pytest.mark.parametrize("main", MAIN_IMPLS)
def test_dual_stack_and_check_per_family(main: str, make_network: Any, make_netns: Any, tcp_server: Any) -> None:
    network = make_network([portmap()], main=main, dual_stack=True)
    web = make_netns()
    port = free_port()
    att = network.attach(web, mapping(port))
    tcp_server(web, 8080)
    assert ask(network.gateway, port) == network.gateway
    # IPv6 addresses are usable once duplicate address detection is over: allow it time.
    assert ask(network.gateway6, port, timeout=10) == network.gateway6
    network.check(att)
    network.detach(att)
    assert nft_mentions(att.rt.container_id) == []


def test_host_ip_mappings(make_network: Any, make_netns: Any, tcp_server: Any, client_ns: Any) -> None:
    client = client_ns()
    network = make_network([portmap()], dual_stack=True)
    web, port = make_netns(), free_port()
    on = [{"hostPort": port, "containerPort": 8080, "protocol": "tcp", "hostIP": ip} for ip in (client.host_address, "")]
    on[1]["hostIP"] = network.gateway6
    att = network.attach(web, {"portMappings": on})
    tcp_server(web, 8080)
    assert ask(client.host_address, port, ns=client.ns) == client.address
    with pytest.raises(OSError):  # another host address: not mapped
        ask(network.gateway, port, timeout=1)
    assert ask(network.gateway6, port, timeout=10) == network.gateway6
    network.check(att)
    assert {name for _, name, _ in portmap_elements(att.rt.container_id)} >= {"hostip_targets", "hostip_hairpins"}
    network.detach(att)
    assert portmap_elements(att.rt.container_id) == []


def test_check_on_an_ipv4_only_container(make_network: Any, make_netns: Any) -> None:
    """The reference's CHECK fails here (it looks for IPv6 rules the container cannot have)."""
    network = make_network([portmap()])
    att = network.attach(make_netns(), mapping(free_port()))
    network.check(att)


@pytest.mark.difference("portmap-conflict")
def test_conflict_names_both_and_changes_nothing(make_network: Any, make_netns: Any) -> None:
    network = make_network([portmap()])
    port = free_port()
    first = network.attach(make_netns(), mapping(port))
    second_ns = make_netns()
    extra = free_port()
    both = {"portMappings": [*mapping(extra)["portMappings"], *mapping(port)["portMappings"]]}
    with pytest.raises(CNIError) as exc:
        network.attach(second_ns, both, container_id="pctsecond")
    assert exc.value.code == 102
    assert first.rt.container_id in exc.value.msg and "pctsecond" in exc.value.msg and f"tcp/*:{port}" in exc.value.msg
    assert nft_mentions("pctsecond") == []  # not even the free port
    # The same port on another host address or protocol is no conflict.
    network.attach(make_netns(), {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "udp"}]})
    network.attach(make_netns(), mapping(port, hostIP="127.0.0.1"))


def test_repeated_add_replaces_its_own_entries(plugin_dir: Path, make_network: Any, make_netns: Any) -> None:
    network = make_network([portmap()])
    port, other_port = free_port(), free_port()
    att = network.attach(make_netns(), mapping(port), container_id="pctagain")
    first = portmap_elements("pctagain")
    assert len(first) == 3  # the claim (target), the network's membership, the hairpin
    conf = {
        "cniVersion": "1.0.0",
        "name": network.net.name,
        "type": "portmap",
        "runtimeConfig": mapping(other_port),
        "prevResult": att.result.to_dict(),
    }
    out = run_plugin(plugin_dir / "portmap", "ADD", conf, netns=att.ns.path, container_id="pctagain")
    assert out.returncode == 0, out.stdout
    again = portmap_elements("pctagain")
    assert len(again) == 3 and all(str(other_port) in key and str(port) not in key for _, _, key in again)
    # DEL with no portMappings at all: the attachment's record says what to remove.
    del conf["runtimeConfig"]
    out = run_plugin(plugin_dir / "portmap", "DEL", conf, netns=att.ns.path, container_id="pctagain")
    assert out.returncode == 0, out.stdout
    assert portmap_elements("pctagain") == []


def conf_with(netns: NetNS, mappings: Any, **extra: Any) -> dict[str, Any]:
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": netns.path}],
        "ips": [{"address": "10.99.0.2/24", "interface": 0}],
    }
    return {
        "cniVersion": "1.0.0",
        "name": "pmbad",
        "type": "portmap",
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": prev,
        **extra,
    }


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"hostPort": 0, "containerPort": 80, "protocol": "tcp"}, "hostPort"),
        ({"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}, "hostPort"),
        ({"hostPort": 8080, "containerPort": 0, "protocol": "tcp"}, "containerPort"),
        ({"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}, "protocol"),
        ({"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "nope"}, "hostIP"),
    ],
)
def test_bad_mappings_are_code_7(plugin_dir: Path, netns: NetNS, entry: dict[str, Any], needle: str) -> None:
    out = run_plugin(plugin_dir / "portmap", "ADD", conf_with(netns, [entry]), netns=netns.path)
    assert out.returncode == 1 and out.json["code"] == 7 and needle in out.json["msg"], out.stdout


def test_prev_result_without_container_interface(plugin_dir: Path, netns: NetNS) -> None:
    conf = conf_with(netns, [{"hostPort": free_port(), "containerPort": 80, "protocol": "tcp"}])
    conf["prevResult"] = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0"}],
        "ips": [{"address": "10.99.0.2/24", "interface": 0}],
    }
    out = run_plugin(plugin_dir / "portmap", "ADD", conf, netns=netns.path)
    assert out.returncode == 1 and out.json["code"] == 7 and 'no address on container interface "eth0"' in out.json["msg"]
    no_prev = {k: v for k, v in conf.items() if k != "prevResult"}
    out = run_plugin(plugin_dir / "portmap", "ADD", no_prev, netns=netns.path)
    assert out.returncode == 1 and "chained plugin" in out.json["msg"]


def gc_conf(network: Any, *valid: Any) -> dict[str, Any]:
    return {
        "cniVersion": "1.1.0",
        "name": network.net.name,
        "type": "portmap",
        "cni.dev/valid-attachments": [{"containerID": att.rt.container_id, "ifname": "eth0"} for att in valid],
    }


@pytest.mark.difference("gc-status")
def test_gc_removes_only_invalid_attachments(plugin_dir: Path, make_network: Any, make_netns: Any) -> None:
    network = make_network([portmap()])
    keep = network.attach(make_netns(), mapping(free_port()))
    stale = network.attach(make_netns(), mapping(free_port()))
    # A leak without a record (a crash, or an older pycni): found in the network's sets.
    unrecorded = network.attach(make_netns(), mapping(free_port()))
    Path(records.path(network.net.name, unrecorded.rt.container_id, "eth0")).unlink()
    out = run_plugin(plugin_dir / "portmap", "GC", gc_conf(network, keep))
    assert out.returncode == 0, out.stdout
    assert portmap_elements(stale.rt.container_id) == portmap_elements(unrecorded.rt.container_id) == []
    assert not Path(records.path(network.net.name, stale.rt.container_id, "eth0")).exists()
    assert len(portmap_elements(keep.rt.container_id)) == 3
    network.check(keep)
    # Nothing valid any more: the network's chains and its record directory go too.
    out = run_plugin(plugin_dir / "portmap", "GC", gc_conf(network))
    assert out.returncode == 0, out.stdout
    assert portmap_elements(keep.rt.container_id) == []
    assert network_prefix(network.net.name) not in nft_ruleset()
    assert not Path(records.network_dir(network.net.name)).exists()


def test_last_del_removes_the_network_chains(make_network: Any, make_netns: Any) -> None:
    network = make_network([portmap()], dual_stack=True)
    first = network.attach(make_netns(), mapping(free_port()))
    second = network.attach(make_netns(), mapping(free_port()))
    prefix = network_prefix(network.net.name)
    assert f"ip cni_hostport {prefix}" not in nft_ruleset()  # (ruleset listings name chains alone)
    assert nft_ruleset().count(prefix) >= 8  # 2 chains and 2 sets per family, and the dispatch rules
    network.detach(first)
    assert prefix in nft_ruleset()
    network.detach(second)
    assert prefix not in nft_ruleset()
    assert not Path(records.network_dir(network.net.name)).exists()


def test_a_changed_policy_gets_chains_of_its_own(make_network: Any, make_netns: Any, client_ns: Any, tcp_server: Any) -> None:
    """Containers keep the SNAT policy they were added with; the old chains go with the last of them."""
    client = client_ns()
    network = make_network([portmap()])
    web_old, web_new = make_netns(), make_netns()
    old_port, new_port = free_port(), free_port()
    old = network.attach(web_old, mapping(old_port))
    network.conf["plugins"][1]["masqAll"] = True
    new = network.attach(web_new, mapping(new_port))
    tcp_server(web_old, 8080)
    tcp_server(web_new, 8080)
    assert ask(client.host_address, old_port, ns=client.ns) == client.address
    assert ask(client.host_address, new_port, ns=client.ns) == network.gateway
    chains = [line for line in nft_ruleset().splitlines() if f"chain {network_prefix(network.net.name)}" in line]
    assert len(chains) == 2  # a hostports chain for each policy
    network.check(new)
    with pytest.raises(CNIError, match="missing"):  # CHECK compares with the configuration
        network.check(old)
    network.detach(old)
    assert ask(client.host_address, new_port, ns=client.ns) == network.gateway
    network.detach(new)
    assert network_prefix(network.net.name) not in nft_ruleset()


def test_table_deleted_behind_our_back(make_network: Any, make_netns: Any, tcp_server: Any) -> None:
    """A flushed ruleset (a firewall reload) loses every mapping; the next ADD declares the table
    again, and a stale record never lets DEL remove what now belongs to someone else."""
    network = make_network([portmap()])
    port = free_port()
    old = network.attach(make_netns(), mapping(port))
    sh("nft", "delete", "table", "ip", "cni_hostport")
    with pytest.raises(CNIError, match="lacks"):
        network.check(old)
    web = make_netns()
    new = network.attach(web, mapping(port))  # the same port, the same network and bridge
    tcp_server(web, 8080)
    assert ask(network.gateway, port) == network.gateway
    network.detach(old)  # its record lists the very keys the new container now holds
    assert len(portmap_elements(new.rt.container_id)) == 3
    assert ask(network.gateway, port) == network.gateway
    network.check(new)
    network.detach(new)
    assert network_prefix(network.net.name) not in nft_ruleset()


def test_del_after_a_refused_add_leaves_the_holder_alone(make_network: Any, make_netns: Any, tcp_server: Any) -> None:
    """The runtime cleans a failed ADD up with DEL: that DEL must not take the port's holder down."""
    network = make_network([portmap()])
    port = free_port()
    web = make_netns()
    holder = network.attach(web, mapping(port))
    tcp_server(web, 8080)
    loser_ns = make_netns()
    loser = RuntimeConf(container_id=unique("pctl", 20), netns=loser_ns.path, ifname="eth0", capability_args=mapping(port))
    with pytest.raises(CNIError) as exc:
        network.cni.add_network_list(network.net, loser)
    assert exc.value.code == 102 and holder.rt.container_id in exc.value.msg
    network.cni.del_network_list(network.net, loser)
    assert len(portmap_elements(holder.rt.container_id)) == 3
    assert ask(network.gateway, port) == network.gateway
    network.check(holder)


def test_masq_all_and_no_snat(make_network: Any, make_netns: Any, tcp_server: Any, client_ns: Any) -> None:
    client = client_ns()
    masq = make_network([portmap(masqAll=True)])
    web, port = make_netns(), free_port()
    masq.attach(web, mapping(port))
    tcp_server(web, 8080)
    # masqAll: every forwarded connection is masqueraded, even from another machine.
    assert ask(client.host_address, port, ns=client.ns) == masq.gateway
    assert ask("127.0.0.1", port) == masq.gateway
    plain = make_network([portmap(snat=False)])
    web2, port2 = make_netns(), free_port()
    att = plain.attach(web2, mapping(port2))
    tcp_server(web2, 8080)
    assert ask(client.host_address, port2, ns=client.ns) == client.address
    # Without SNAT the host's loopback cannot be answered (as the reference): not forwarded.
    with pytest.raises(OSError):
        ask("127.0.0.1", port2, timeout=1)
    plain.check(att)


def test_conditions_limit_what_is_forwarded(make_network: Any, make_netns: Any, tcp_server: Any, client_ns: Any) -> None:
    client = client_ns()
    network = make_network([portmap()], dual_stack=True)
    network.conf["plugins"][1]["conditionsV4"] = ["ip", "daddr", "!=", client.host_address]
    network.conf["plugins"][1]["conditionsV6"] = [f"ip6 saddr != {network.gateway6}"]
    web, neighbour = make_netns(), make_netns()
    port = free_port()
    att = network.attach(web, mapping(port))
    network.attach(neighbour)
    tcp_server(web, 8080)
    assert ask("127.0.0.1", port) == network.gateway
    assert ask(network.gateway, port, ns=neighbour) == network.gateway
    with pytest.raises(OSError):  # to the excluded host address: not forwarded, nothing listens there
        ask(client.host_address, port, ns=client.ns, timeout=1)
    assert ask(network.gateway6, port, ns=neighbour, timeout=10) == network.gateway6
    with pytest.raises(OSError):  # from the excluded IPv6 source (the host's bridge address)
        ask(network.gateway6, port, timeout=1)
    network.check(att)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"conditionsV4": ["bogus", "match"]}, "conditionsV4"),
        ({"conditionsV6": ["ip6 saddr ::1; flush ruleset"]}, "conditionsV6"),
        ({"conditionsV4": ["-s", "192.0.2.1"], "backend": "nftables"}, "iptables syntax"),
        ({"backend": "pf"}, "backend"),
        ({"markMasqBit": 32}, "markMasqBit"),
        ({"externalSetMarkChain": "X"}, "externalSetMarkChain"),
    ],
)
def test_bad_options_are_code_7_and_leave_nothing(plugin_dir: Path, netns: NetNS, extra: dict[str, Any], needle: str) -> None:
    before = nft_ruleset()
    conf = conf_with(netns, [{"hostPort": free_port(), "containerPort": 80, "protocol": "tcp"}], **extra)
    conf["name"] = unique("pct-pm-", 20)
    conf["prevResult"]["ips"].append({"address": "fd00:99::2/64", "interface": 0})
    out = run_plugin(plugin_dir / "portmap", "ADD", conf, netns=netns.path)
    assert out.returncode == 1 and out.json["code"] == 7 and needle in out.json["msg"], out.stdout
    assert network_prefix(conf["name"]) not in nft_ruleset() and nft_ruleset().count("cni_hostport") <= before.count(
        "cni_hostport"
    )
    assert not Path(records.network_dir(conf["name"])).exists()


@pytest.mark.difference("portmap-nftables")
def test_iptables_backend(make_network: Any, make_netns: Any, tcp_server: Any, client_ns: Any) -> None:
    network = make_network([portmap(backend="iptables")])
    web, neighbour = make_netns(), make_netns()
    port = free_port()
    att = network.attach(web, mapping(port))
    network.attach(neighbour)
    tcp_server(web, 8080)
    client = client_ns()
    assert ask("127.0.0.1", port) == network.gateway
    assert ask(client.host_address, port, ns=client.ns) == client.address
    assert ask(network.gateway, port, ns=neighbour) == network.gateway
    network.check(att)
    chain = chain_name(network.net.name, att.rt.container_id, "eth0")
    saved = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    assert f":{chain}" in saved and f'id: \\"{att.rt.container_id}\\"' in saved
    network.detach(att)
    saved = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True, check=True).stdout
    assert chain not in saved and att.rt.container_id not in saved


@pytest.mark.reference
@pytest.mark.parametrize("main", MAIN_IMPLS)
def test_reference_portmap_after_our_main_shows_the_same_sources(
    main: str, make_network: Any, make_netns: Any, tcp_server: Any, client_ns: Any
) -> None:
    """The sources the server sees, with the reference portmap and with ours."""
    seen = {}
    for impl in ("reference", "ours"):
        network = make_network([portmap()], main=main, impl=impl)
        web, neighbour = make_netns(), make_netns()
        port = free_port()
        att = network.attach(web, mapping(port))
        network.attach(neighbour)
        server = tcp_server(web, 8080)
        client = client_ns()
        sources = [
            ask("127.0.0.1", port),
            ask(network.gateway, port),
            ask(client.host_address, port, ns=client.ns),
            ask(network.gateway, port, ns=neighbour),
        ]
        seen[impl] = [s.replace(network.gateway, "GATEWAY").replace(client.address, "CLIENT") for s in sources]
        network.detach(att)
        server.proc.kill()
    assert seen["ours"] == seen["reference"] == ["GATEWAY", "GATEWAY", "CLIENT", "GATEWAY"]
