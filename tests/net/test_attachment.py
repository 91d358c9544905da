"""The attachment model: one description applied (with rollback), compared and removed."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator

import pytest

from pycni.net import attachment, sysctl
from pycni.net.attachment import Address, Attachment, BridgePort, Creation, Link, Route, Settings, Sysctl
from pycni.spec.errors import CNIError

from ..conftest import NetNS, delete_link, unique, unique_subnet


@pytest.fixture
def bridge_name() -> Iterator[str]:
    name = unique("pctbr")
    yield name
    delete_link(name)


def host_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(": ")[1].split("@")[0] for line in out.splitlines()}


def names_in(ns: NetNS) -> set[str]:
    return {link["ifname"] for link in ns.ip_json("link")}


def veth_on_bridge(bridge: str, ns: NetNS, subnet: str) -> tuple[Attachment, Link, Link, Link]:
    net = ipaddress.ip_network(subnet)
    att = Attachment()
    br = att.add(Link(bridge, kind="bridge", shared=True))
    host, cont = att.veth(Link("", port=BridgePort(br, {"mode": 1})), Link("eth0", ns=ns.path, settings=Settings(mtu=1400)))
    att.addresses.append(Address(cont, ipaddress.ip_interface(f"{net[2]}/{net.prefixlen}")))
    att.addresses.append(Address(br, ipaddress.ip_interface(f"{net[1]}/{net.prefixlen}"), shared=True, exclusive=True))
    att.routes.append(Route(ipaddress.ip_network("0.0.0.0/0"), gw=net[1], link=cont))
    att.sysctls.append(Sysctl(sysctl.conf_key(4, "{link}", "arp_notify"), "1", link=cont, check=True))
    return att, br, host, cont


def test_apply_compare_remove(netns: NetNS, bridge_name: str) -> None:
    subnet = unique_subnet()
    att, _br, host, cont = veth_on_bridge(bridge_name, netns, subnet)
    attachment.apply(att)
    assert host.name.startswith("veth") and len(host.name) == 12 and host.index and cont.actual_mac
    (link,) = netns.ip_json("link", "show", "eth0")
    assert link["mtu"] == 1400 and link["address"] == cont.actual_mac and "UP" in link["flags"]
    assert netns.ip_json("route", "show", "default")[0]["gateway"] == subnet.replace("0/24", "1")
    assert attachment.compare(att) == []
    # What a later plugin may change is not a difference: another address, another route.
    netns.run("ip", "addr", "add", "192.0.2.9/32", "dev", "eth0")
    netns.run("ip", "route", "add", "198.51.100.0/24", "dev", "eth0")
    assert attachment.compare(att) == []
    netns.run("ip", "route", "del", "default")
    netns.run("ip", "link", "set", "eth0", "down")
    netns.run("sysctl", "-w", "net.ipv4.conf.eth0.arp_notify=0")
    subprocess.run(["ip", "link", "set", host.name, "type", "bridge_slave", "hairpin", "off"], check=True)
    problems = attachment.compare(att)
    assert any("eth0 in" in p and "is down" in p for p in problems)
    assert any("route 0.0.0.0/0 via" in p for p in problems)
    assert any("arp_notify is 0, expected 1" in p for p in problems)
    assert any("bridge port hairpin is 0, expected 1" in p for p in problems)
    attachment.remove(att)
    assert host.name not in host_links() and bridge_name in host_links()  # the shared bridge stays
    assert "eth0" not in names_in(netns)
    attachment.remove(att)  # idempotent


def test_failed_step_rolls_back_what_this_call_created(netns: NetNS, bridge_name: str) -> None:
    subnet = unique_subnet()
    att, _br, _host, _cont = veth_on_bridge(bridge_name, netns, subnet)
    att.addresses.append(Address(att.links[0], ipaddress.ip_interface("192.0.2.77/32")))  # owned, on the shared bridge
    att.routes.append(Route(ipaddress.ip_network("203.0.113.0/24"), gw=ipaddress.ip_address("192.0.2.1"), link=att.links[2]))
    before = host_links()
    with pytest.raises(CNIError) as exc:
        attachment.apply(att)
    assert exc.value.code == 100 and "203.0.113.0/24" in exc.value.msg
    assert host_links() - before == {bridge_name}  # the veth is gone, the shared bridge stays
    assert "eth0" not in names_in(netns)
    addresses = {a["local"] for a in subprocess_json("addr", "show", bridge_name)[0]["addr_info"]}
    assert "192.0.2.77" not in addresses  # added to the shared bridge by this call: removed again


def subprocess_json(*argv: str) -> list[dict[str, object]]:
    import json

    return json.loads(subprocess.run(["ip", "-j", *argv], capture_output=True, text=True, check=True).stdout)


def test_existing_container_interface_is_a_conflict_and_left_untouched(netns: NetNS, bridge_name: str) -> None:
    netns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other")
    netns.run("ip", "addr", "add", "192.0.2.5/24", "dev", "eth0")
    att, *_ = veth_on_bridge(bridge_name, netns, unique_subnet())
    before = host_links()
    with pytest.raises(CNIError) as exc:
        attachment.apply(att)
    assert exc.value.code == 102 and "'eth0' already exists" in exc.value.msg
    assert host_links() - before == {bridge_name}
    (link,) = netns.ip_json("addr", "show", "eth0")
    assert [a["local"] for a in link["addr_info"]] == ["192.0.2.5"]


def test_a_gateway_address_conflict_is_refused_unless_forced(netns: NetNS, bridge_name: str) -> None:
    subprocess.run(["ip", "link", "add", bridge_name, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "192.0.2.1/24", "dev", bridge_name], check=True)
    att, br, *_ = veth_on_bridge(bridge_name, netns, unique_subnet())
    with pytest.raises(CNIError, match="already has an IP address different from"):
        attachment.apply(att)
    for address in att.addresses:
        address.force = address.link is br
    attachment.apply(att)
    addresses = [a["local"] for a in subprocess_json("addr", "show", bridge_name)[0]["addr_info"] if a["family"] == "inet"]
    assert addresses == [str(att.addresses[1].address.ip)]
    attachment.remove(att)


def test_link_with_a_parent_is_created_inside_the_namespace(netns: NetNS) -> None:
    """macvlan and friends: made from a host link, created directly in the container."""
    parent = unique("pctpar")
    subprocess.run(["ip", "link", "add", parent, "type", "bridge"], check=True)
    try:
        att = Attachment()
        making = Creation(parent=parent, create={"macvlan_mode": "bridge"})
        mv = att.add(Link("net1", ns=netns.path, kind="macvlan", creation=making))
        att.addresses.append(Address(mv, ipaddress.ip_interface("192.0.2.10/24")))
        attachment.apply(att)
        (link,) = netns.ip_json("-d", "link", "show", "net1")
        assert link["linkinfo"]["info_kind"] == "macvlan" and link["linkinfo"]["info_data"]["mode"] == "bridge"
        assert attachment.compare(att) == []
        attachment.remove(att)
        assert "net1" not in names_in(netns)
    finally:
        delete_link(parent)


def test_remove_with_the_namespace_gone(make_netns: object) -> None:
    att = Attachment()
    att.veth(Link(""), Link("eth0", ns="/run/netns/pct-gone-" + unique()))
    attachment.remove(att)


def test_veth_created_from_the_container_side(netns: NetNS, bridge_name: str) -> None:
    """The pair may be created from either end: here the container's, with the peer in the host."""
    att = Attachment()
    br = att.add(Link(bridge_name, kind="bridge", shared=True))
    _cont, host = att.veth(Link("eth0", ns=netns.path), Link("", port=BridgePort(br)))
    attachment.apply(att)
    assert host.name in host_links() and "eth0" in names_in(netns)
    assert subprocess_json("link", "show", host.name)[0]["master"] == bridge_name
    assert attachment.compare(att) == []
    attachment.remove(att)
    assert host.name not in host_links()


def test_host_device_moves_in_and_back(netns: NetNS) -> None:
    device = unique("pctdev")
    subprocess.run(["ip", "link", "add", device, "type", "veth", "peer", "name", device[:-1] + "p"], check=True)
    try:
        att = Attachment()
        link = att.add(Link("net1", ns=netns.path, kind="", creation=Creation(device=device)))
        att.addresses.append(Address(link, ipaddress.ip_interface("192.0.2.20/24")))
        attachment.apply(att)
        assert device not in host_links() and "net1" in names_in(netns)
        assert attachment.compare(att) == []
        attachment.remove(att)
        assert device in host_links() and "net1" not in names_in(netns)
        # A failed ADD gives it back too.
        att.routes.append(Route(ipaddress.ip_network("203.0.113.0/24"), gw=ipaddress.ip_address("192.0.9.1"), link=link))
        with pytest.raises(CNIError):
            attachment.apply(att)
        assert device in host_links() and "net1" not in names_in(netns)
    finally:
        delete_link(device)


def test_a_link_netlink_cannot_make_has_a_maker(netns: NetNS) -> None:
    def make_tap(link: Link) -> None:
        netns.run("ip", "tuntap", "add", "dev", link.name, "mode", "tap")

    att = Attachment()
    att.add(Link("tap0", ns=netns.path, kind="tun", creation=Creation(maker=make_tap)))
    attachment.apply(att)
    assert attachment.compare(att) == []
    attachment.remove(att)
    assert "tap0" not in names_in(netns)


def test_links_applied_first_are_only_configured_later(netns: NetNS) -> None:
    """The underlay plugins create the interface, then ask IPAM, then configure it: a link with
    an index exists already and is not made again; a late failure leaves it to the caller."""
    parent = unique("pctpar")
    subprocess.run(["ip", "link", "add", parent, "type", "veth", "peer", "name", parent[:-1] + "q"], check=True)
    try:
        link = Link("net1", ns=netns.path, kind="macvlan", creation=Creation(parent=parent, create={"macvlan_mode": "private"}))
        bare = Attachment(links=[link])
        attachment.apply(bare)
        assert link.index and "net1" in names_in(netns)
        full = Attachment(links=[link], addresses=[Address(link, ipaddress.ip_interface("192.0.2.30/24"))])
        full.routes.append(Route(ipaddress.ip_network("203.0.113.0/24"), gw=ipaddress.ip_address("192.0.9.1"), link=link))
        with pytest.raises(CNIError):
            attachment.apply(full)
        assert "net1" in names_in(netns)  # the failed stage undid only its own steps
        full.routes.clear()
        attachment.apply(full)
        assert attachment.compare(full) == []
        subprocess.run(["ip", "-n", netns.name, "link", "set", "net1", "type", "macvlan", "mode", "bridge"], check=True)
        subprocess.run(["ip", "link", "set", parent, "name", parent[:-1] + "r"], check=True)
        problems = attachment.compare(full)
        assert any("macvlan_mode is bridge, expected private" in p for p in problems)
        assert any(f"parent link {parent} of net1" in p and "does not exist in the host" in p for p in problems)
        attachment.remove(bare)
        assert "net1" not in names_in(netns)
    finally:
        delete_link(parent)
        delete_link(parent[:-1] + "r")


def routed_pair(ns: NetNS, host_name: str, address: str) -> tuple[Attachment, Link, Link]:
    """calico's shape: a /32 routed to the container through the host end, which no other
    device may route; the container's IPv6 default route via the host end's link-local address."""
    att = Attachment()
    queues = {"num_tx_queues": 3, "num_rx_queues": 3}
    cont, host = att.veth(
        Link("eth0", ns=ns.path, creation=Creation(create=dict(queues)), settings=Settings(mtu=1400, check_mtu=True)),
        Link(
            host_name,
            creation=Creation(create=dict(queues), replace=True),
            settings=Settings(mtu=1400, mac="ee:ee:ee:ee:ee:ee", check_mtu=True),
        ),
    )
    att.addresses.append(Address(cont, ipaddress.ip_interface(f"{address}/32")))
    att.addresses.append(Address(cont, ipaddress.ip_interface("fd00:5::5/128")))
    att.sysctls.append(Sysctl(sysctl.conf_key(6, "{link}", "accept_dad"), "0", link=host))
    att.routes.append(Route(ipaddress.ip_network("::/0"), link=cont, via_link_local=host))
    att.routes.append(Route(ipaddress.ip_network(f"{address}/32"), scope=253, link=host, exclusive=True))
    return att, cont, host


def test_an_exclusive_route_owned_by_another_device_is_a_conflict_naming_it(netns: NetNS) -> None:
    address = str(ipaddress.ip_network(unique_subnet())[5])
    host_name, other = unique("pcth"), unique("pcto")
    subprocess.run(["ip", "link", "add", other, "type", "veth", "peer", "name", other[:-1] + "p"], check=True)
    try:
        subprocess.run(["ip", "link", "set", other, "up"], check=True)
        subprocess.run(["ip", "route", "add", f"{address}/32", "dev", other], check=True)
        att, *_ = routed_pair(netns, host_name, address)
        with pytest.raises(CNIError) as exc:
            attachment.apply(att)
        assert exc.value.code == 102 and f"it goes to {other}" in exc.value.msg
        assert host_name not in host_links() and "eth0" not in names_in(netns)  # rolled back
        subprocess.run(["ip", "route", "del", f"{address}/32", "dev", other], check=True)
        att, *_ = routed_pair(netns, host_name, address)
        attachment.apply(att)
        assert attachment.compare(att) == []
        # CHECK: the route now goes elsewhere (where a non-exclusive route would still count).
        subprocess.run(["ip", "route", "replace", f"{address}/32", "dev", other], check=True)
        assert f"route {address}/32 goes to {other}, not {host_name}" in attachment.compare(att)
        attachment.remove(att)
    finally:
        delete_link(other)
        delete_link(host_name)


def test_route_via_link_local_mtu_queues_and_a_replaced_leftover(netns: NetNS) -> None:
    address = str(ipaddress.ip_network(unique_subnet())[7])
    host_name = unique("pcth")
    subprocess.run(["ip", "link", "add", host_name, "type", "veth", "peer", "name", host_name[:-1] + "p"], check=True)
    try:
        att, cont, host = routed_pair(netns, host_name, address)
        attachment.apply(att)
        assert host.replaced and cont.actual_mac
        assert host_name[:-1] + "p" not in host_links()  # the leftover pair is gone
        (default,) = netns.ip_json("-6", "route", "show", "default")
        (ll,) = [a["local"] for a in subprocess_json("addr", "show", host_name)[0]["addr_info"] if a["scope"] == "link"]
        assert default["gateway"] == ll == "fe80::ecee:eeff:feee:eeee"
        (link,) = netns.ip_json("-d", "link", "show", "eth0")
        assert link["num_tx_queues"] == link["num_rx_queues"] == 3
        assert subprocess_json("-d", "link", "show", host_name)[0]["num_tx_queues"] == 3
        assert attachment.compare(att) == []
        netns.run("ip", "-6", "route", "del", "default")
        netns.run("ip", "link", "set", "eth0", "mtu", "1300")
        problems = attachment.compare(att)
        assert any(p.startswith(f"eth0 in {netns.path} has MTU 1300, expected 1400") for p in problems), problems
        assert any(p.startswith("route ::/0 via fe80::ecee:eeff:feee:eeee dev eth0 is missing") for p in problems), problems
        attachment.remove(att)
        assert host_name not in host_links()
    finally:
        delete_link(host_name)
