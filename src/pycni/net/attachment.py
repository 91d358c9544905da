"""What a plugin attaches to a container, described once; ADD applies it, CHECK compares
the kernel with it, DEL removes it.

The reference plugins write ADD and CHECK separately (bridge.go: 230 lines of setup,
120 of hand-written validators), so CHECK drifts from ADD. Here a plugin builds one
`Attachment` from its configuration and the result (the IPAM result at ADD, the
prevResult at CHECK, nothing at DEL) and hands it to:

- `apply(att)`: create and configure everything, in a fixed order (links, sysctls,
  link settings, addresses, routes, firewall rules). If a step fails, everything
  this call created is undone, in reverse, and the error is raised. A link that has
  an `index` exists already (an earlier `apply` of its links alone made it: the
  underlay plugins create the interface before they ask IPAM for addresses) and is
  only configured.
- `compare(att)`: every difference between the kernel and the description, as
  sentences (an empty list means CHECK passes). What a later plugin in a chain may
  legitimately change is not a difference: extra addresses and routes, MTU,
  sysctls (unless marked `check`), a MAC when the description does not give one
  (build it from the prevResult, which tuning updates).
- `remove(att)`: delete what the attachment owns; idempotent (a missing namespace,
  link, address or rule is already removed).

Every object is owned (created by ADD, removed by DEL and by a failed ADD) or
`shared` (ensured by ADD, never removed: a bridge, its gateway address). Addresses and
routes on an owned link go with the link; sysctls are set, never reverted. GC has
nothing to do for links (they go with their namespace); rule sets decide what is stale
across attachments, so their modules have the gc (`ipmasq.gc`, `spoofcheck.gc`).

Usage (a veth pair with the container end configured, as bridge, ptp and calico do):

    att = Attachment()
    br = att.add(Link("cni0", kind="bridge", shared=True))
    host, cont = att.veth(Link("", port=BridgePort(br)), Link("eth0", ns=netns_path))
    att.addresses.append(Address(cont, ip_interface("10.22.0.2/16")))
    att.routes.append(Route(ip_network("0.0.0.0/0"), gw=ip_address("10.22.0.1"), link=cont))
    att.sysctls.append(Sysctl("net/ipv4/conf/{link}/arp_notify", "1", link=cont))
    att.rules.append(ipmasq.IPMasq(...))          # anything with apply/remove/differences
    apply(att)                                    # fills host.name, .index, .actual_mac

calico's attachment (`pycni.calico.dataplane`) is the same pair without a bridge: /32
routes to the container through the host end that no other device may have
(`Route(..., scope=253, link=host, exclusive=True)`), proxy_arp on the host end
(`Sysctl("net/ipv4/conf/{link}/proxy_arp", "1", link=host)`) and, in the container, a
link-scoped route to 169.254.1.1, a default route via it and an IPv6 default route via
the host end's link-local address (`Route(..., link=cont, via_link_local=host)`). Its
host end has a fixed name, and a leftover of an earlier sandbox is replaced
(`Link(..., creation=Creation(replace=True))`).

A `Link` says which link it is (name, namespace, kind, shared or owned, its veth peer and
owner alias), how ADD makes it (`Creation`), what ADD sets on it and CHECK compares
(`Settings`: MTU, MAC, up, promiscuous...), the bridge it is a port of (`BridgePort`), and,
once applied, what the kernel reported (index, MAC).

Links of other types (macvlan, ipvlan, vlan, dummy) are a `Link` with `kind` and a
`Creation` with `parent` (the host link they are made from, looked up in the host namespace,
or in `ns` itself with `parent_in_ns`, the reference's linkInContainer) and kind-specific
`create` attributes (pyroute2 keywords, e.g. {"macvlan_mode": "bridge"}); they are created
from the host socket directly in `ns`, under their final name. A setting pyroute2 cannot send
at creation (macvlan's bcqueuelen) is a `finish` step, run once the link exists. host-device
is a `Link` whose `Creation` has `device` (an existing host interface): ADD moves it into
`ns` under `name` in one request (its host name kept as its alias), DEL and a failed ADD move
it back under `device`. A link netlink cannot create (a tap needs an ioctl inside the
namespace) gets a `maker`; its `mtu` and `mac` are then set as any link's are at creation.

One netlink socket is opened per namespace per call; namespaced sysctls are written on
one worker thread per namespace (`pycni.net.netns.run_in`). There is no module state:
calls run concurrently in one process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pycni import faults
from pycni.net import addrs, links, netlink, netns, sysctl
from pycni.net.addrs import IPInterface, RouteFields
from pycni.spec.errors import CNIError, Code

if TYPE_CHECKING:
    from pycni.net.netlink import IPRoute

log = logging.getLogger("pycni.net.attachment")
NAME_ATTEMPTS = 10
HOST_NS = "/proc/self/ns/net"  # plugin threads stay in the host namespace (pycni.net.netns)


@dataclass
class Creation:
    """How ADD makes a link that is not there: a veth pair in one request (`Link.peer`), a
    link made from a `parent` (macvlan, ipvlan, vlan), a host `device` moved in, or a
    `maker` for what netlink cannot create (a tap)."""

    parent: str = ""  # macvlan/ipvlan/vlan: the host link it is made from
    parent_in_ns: bool = False  # the parent is in `ns`, not in the host (linkInContainer)
    create: dict[str, Any] = field(default_factory=dict)  # kind-specific RTM_NEWLINK attributes
    device: str = ""  # host-device: the host interface that is moved in as this link
    maker: Callable[[Link], None] | None = None  # creates the link when netlink cannot
    finish: Callable[[Link], None] | None = None  # settings netlink cannot send at creation
    replace: bool = False  # a link of this name and kind already there is deleted first (a leftover)


@dataclass
class Settings:
    """What ADD sets on the device, and CHECK compares."""

    mtu: int = 0  # at creation; 0 leaves the kernel's
    check_mtu: bool = False  # CHECK compares the MTU (off by default: tuning may change it)
    mac: str = ""  # at creation, and what CHECK expects; "" leaves the kernel's
    up: bool = True
    promisc: bool = False  # turned on, never off (a shared bridge)
    pin_mac: bool = False  # keep the MAC it had before ADD: a bridge stops following its ports' MACs
    settle: bool = False  # wait for IPv6 duplicate address detection before adding routes
    wait_up: bool = False  # ADD waits for operstate UP (a bridge port whose peer is up)


@dataclass
class BridgePort:
    """A link that is a port of a bridge in its namespace."""

    master: Link
    flags: dict[str, int] = field(default_factory=dict)  # links.PORT_FLAGS keys
    vlans: list[tuple[int, bool, bool]] = field(default_factory=list)  # (vid, pvid, untagged)
    drop_default_vlan: bool = False  # remove the port's VLANs before adding `vlans`


@dataclass(eq=False)
class Link:
    """A network interface: which one it is (name, namespace, kind, owner), how ADD makes it,
    its device settings, the bridge it is a port of, and what the kernel reported for it.
    `name=""` asks ADD to generate one ("veth" + 8 hex digits)."""

    # Which link this is.
    name: str
    ns: str | None = None  # namespace path; None is the host
    kind: str = "veth"  # the type it is created as and must have; "" accepts any
    shared: bool = False  # ensured (created when missing), never removed
    peer: Link | None = None  # veth: the other end, created in the same request
    # Whose link this is ("<tag> <owner>"), set right after creation (the kernel ignores an alias in
    # RTM_NEWLINK). `replace` spares a leftover whose alias has the same tag and another owner:
    # that is another attachment whose generated name collides with this one's.
    alias: str = ""
    creation: Creation = field(default_factory=Creation)
    settings: Settings = field(default_factory=Settings)
    port: BridgePort | None = None
    # What the kernel reports, filled by apply():
    index: int = 0
    actual_mac: str = ""
    replaced: bool = False  # a leftover of this name was deleted

    def where(self) -> str:
        return f"{self.name or self.kind} in {self.ns}" if self.ns else f"{self.name or self.kind}"

    @property
    def master(self) -> Link | None:
        return self.port.master if self.port is not None else None


@dataclass(eq=False)
class Address:
    link: Link
    address: IPInterface
    shared: bool = False  # kept by DEL (a gateway address on a shared bridge)
    exclusive: bool = False  # no other IPv4 address, or overlapping IPv6 one, may be on the link...
    force: bool = False  # ...unless it is replaced (the reference's forceAddress)
    noprefixroute: bool = False


@dataclass(eq=False)
class Route(RouteFields):
    """A route through `link` (its `oif` is the link's, once the link exists)."""

    link: Link = field(kw_only=True)
    shared: bool = field(default=False, kw_only=True)
    # The destination is reached through `link` only: a route to it through another device
    # is a conflict naming that device at ADD, and a difference at CHECK.
    exclusive: bool = field(default=False, kw_only=True)
    # The gateway is that link's IPv6 link-local address, which the kernel assigns only
    # once the link is up: looked up at ADD (waiting for it) and at CHECK.
    via_link_local: Link | None = field(default=None, kw_only=True)

    def fields(self) -> RouteFields:
        self.oif = self.link.index
        return self


@dataclass
class Sysctl:
    """A sysctl; with `link`, `key` may name it as "{link}" (a generated name is known only at ADD)."""

    key: str
    value: str
    ns: str | None = None  # with `link`, the link's namespace
    link: Link | None = None
    strict: bool = False  # a failure fails ADD (the reference ignores most sysctl errors)
    check: bool = False  # CHECK compares it (off by default: tuning may change sysctls)

    def path(self) -> str:
        return self.key.format(link=self.link.name) if self.link is not None else self.key

    def namespace(self) -> str | None:
        return self.link.ns if self.link is not None else self.ns


class Rules(Protocol):
    """A firewall rule set the attachment owns (ipMasq, macspoofchk, port mappings...)."""

    what: str

    def apply(self) -> None: ...
    def remove(self) -> None: ...
    def differences(self) -> list[str]: ...


@dataclass
class Attachment:
    links: list[Link] = field(default_factory=list)
    addresses: list[Address] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    sysctls: list[Sysctl] = field(default_factory=list)
    rules: list[Rules] = field(default_factory=list)

    def add(self, link: Link) -> Link:
        self.links.append(link)
        return link

    def veth(self, first: Link, second: Link) -> tuple[Link, Link]:
        """A veth pair, created from `first`'s namespace with `second` placed in its own.

        Both ends get a transmit queue length of 0 (`ip link` shows no qlen), as the reference's
        makeVethPair and Calico's DoNetworking make them: Go netlink's LinkAttrs literal has
        TxQLen 0, which it sends for both ends (the kernel's default would be 1000)."""
        first.kind = second.kind = "veth"
        first.peer, second.peer = second, first
        for end in (first, second):
            end.creation.create.setdefault("txqlen", 0)
        self.links += [first, second]
        return first, second

    def addresses_of(self, link: Link) -> list[Address]:
        return [a for a in self.addresses if a.link is link]


@dataclass
class VethAttachment:
    """An attachment made around a veth pair, with the two ends its result names (bridge, ptp,
    calico): their names and MACs are known once `apply` has run."""

    att: Attachment
    host: Link
    container: Link


def _undo(fn: Callable[..., object], *args: Any) -> Callable[[], None]:
    """A rollback step: `fn(*args)`, its result ignored (arguments bound now, not at undo time)."""

    def step() -> None:
        fn(*args)

    return step


class _Sockets:
    """One IPRoute per namespace for the whole call."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._open: dict[str | None, IPRoute] = {}

    def __call__(self, ns: str | None) -> IPRoute:
        if ns not in self._open:
            self._open[ns] = self._stack.enter_context(netlink.route(ns))
        return self._open[ns]


@contextmanager
def _sockets() -> Iterator[_Sockets]:
    with ExitStack() as stack:
        yield _Sockets(stack)


# -- ADD -------------------------------------------------------------------------


def apply(att: Attachment) -> None:
    """Create and configure everything; on failure undo what this call created and raise.
    A fault-injection test may kill the call between two steps (`pycni.faults`:
    link-created, sysctls-written, addressed, routes-added, rules-applied)."""
    undo: list[Callable[[], None]] = []
    with _sockets() as sock:
        try:
            _apply(att, sock, undo)
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:
                    log.exception("rollback step failed")
            raise


def _apply(att: Attachment, sock: _Sockets, undo: list[Callable[[], None]]) -> None:
    for link in att.links:
        if link.shared and link.name:
            _ensure_shared(sock, link)
    created: set[int] = set()
    for link in att.links:
        if not link.shared and not link.index and id(link) not in created:
            _create(sock, link, undo)
            created.update({id(link), id(link.peer)})
            faults.checkpoint("link-created")
    _write_sysctls(att.sysctls)
    if att.sysctls:  # a step that did nothing is no boundary
        faults.checkpoint("sysctls-written")
    for link in att.links:
        if link.index:  # a shared link's peer that was there already is left alone
            _configure(sock(link.ns), link)
    for address in att.addresses:
        _add_address(sock(address.link.ns), address, undo)
    if att.addresses:
        faults.checkpoint("addressed")
    for link in att.links:
        if link.settings.pin_mac:
            _pin_mac(sock(link.ns), link)
    for link in att.links:
        if link.settings.settle and any(a.address.version == 6 for a in att.addresses_of(link)):
            addrs.settle(sock(link.ns), link.index, link.name)
    for route in att.routes:
        via = route.via_link_local
        if via is not None:
            route.gw = addrs.wait_link_local(sock(via.ns), via.index, via.where())
        addrs.add_route(sock(route.link.ns), route.fields(), route.link.name, route.exclusive)
        if not route.shared and route.link.shared:
            undo.append(_undo(_delete_route, sock, route))
    if att.routes:
        faults.checkpoint("routes-added")
    for link in att.links:
        if not link.index:
            continue
        ipr = sock(link.ns)
        msg = links.wait_oper_up(ipr, link.index) if link.settings.wait_up else links.by_index(ipr, link.index)
        if msg is not None:
            link.actual_mac = links.mac(msg)
            if link.settings.wait_up and not links.oper_up(msg):
                state = msg.get_attr("IFLA_OPERSTATE")
                raise CNIError(Code.KERNEL, f"bridge port in error state: {state} ({link.where()})")
    for rules in att.rules:
        rules.apply()
        undo.append(rules.remove)
        faults.checkpoint("rules-applied")


def _lookup(ipr: IPRoute, link: Link) -> Any:
    msg = links.get(ipr, link.name)
    if msg is not None:
        link.index = msg["index"]
        link.actual_mac = links.mac(msg)
    return msg


def _ensure_shared(sock: _Sockets, link: Link) -> None:
    """Find a shared link, creating it (and its veth peer) when missing."""
    ipr = sock(link.ns)
    msg = _lookup(ipr, link)
    if msg is None and link.kind:
        _create(sock, link, [])  # shared: never undone, another attachment may use it already
        msg = _lookup(ipr, link)
    if msg is None:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"link {link.where()} does not exist")
    if link.kind and links.kind(msg) != link.kind:
        raise CNIError(Code.CONFLICT, f"{link.name!r} already exists but is not a {link.kind}")


def _create_spec(ipr: IPRoute, link: Link) -> dict[str, Any]:
    spec: dict[str, Any] = {"ifname": link.name, "kind": link.kind, **link.creation.create}
    if link.settings.mtu:
        spec["mtu"] = link.settings.mtu
    if link.settings.mac:
        spec["address"] = link.settings.mac
    if link.master is not None and link.master.index:
        spec["master"] = link.master.index
    if link.creation.parent:
        parent = links.get(ipr, link.creation.parent)
        if parent is None:
            where = link.ns if link.creation.parent_in_ns else "the host"
            msg = f"parent link {link.creation.parent!r} of {link.where()} does not exist in {where}"
            raise CNIError(Code.INVALID_NETWORK_CONFIG, msg)
        spec["link"] = parent["index"]
    return spec


def _create(sock: _Sockets, link: Link, undo: list[Callable[[], None]]) -> None:
    """Create an owned link (a veth pair in one request) and register its removal."""
    if link.creation.device:
        _take_device(sock, link, undo)
        return
    if link.creation.maker is not None:
        link.creation.maker(link)
        ipr = sock(link.ns)
        if _lookup(ipr, link) is None:
            raise CNIError(Code.KERNEL, f"link {link.where()} was not created")
        undo.append(_undo(_destroy, ipr, link))
        attrs = {k: v for k, v in (("mtu", link.settings.mtu), ("address", link.settings.mac)) if v}
        if attrs:
            links.set_attrs(ipr, link.index, f"failed to set the mtu/mac of {link.where()}", **attrs)
        _finish(link)
        return
    for end in (link, link.peer):
        if end is not None and end.creation.replace and end.name:
            _replace(sock(end.ns), end)
    from_ns = None if link.creation.parent and not link.creation.parent_in_ns else link.ns
    ipr = sock(from_ns)
    generated = [end for end in (link, link.peer) if end is not None and not end.name]
    for _attempt in range(NAME_ATTEMPTS):
        for end in generated:
            end.name = links.random_veth_name()
        spec = _create_spec(ipr, link)
        peer_ns = None
        if link.peer is not None:
            peer = link.peer
            spec["peer"] = {
                "ifname": peer.name,
                **peer.creation.create,
                **({"mtu": peer.settings.mtu} if peer.settings.mtu else {}),
            }
            if peer.settings.mac:
                spec["peer"]["address"] = peer.settings.mac
            if peer.ns != link.ns:  # placed by IFLA_NET_NS_FD; the host is this process's namespace
                peer_ns = peer.ns if peer.ns is not None else HOST_NS
        try:
            if link.creation.parent and link.ns is not None and link.ns != from_ns:
                _create_in(ipr, spec, link.ns, link)
            else:
                links.create(ipr, spec, peer_ns, what=f"failed to make {link.kind} {link.where()}")
            break
        except CNIError:
            raise
        except Exception:  # noqa: BLE001 - EEXIST: find out which name is taken
            taken = _taken_name(sock, link)
            if taken in generated:
                continue
            if taken is link and link.shared:
                return  # created concurrently by another call: fine for a shared link
            raise CNIError(
                Code.CONFLICT,
                f"an interface named {taken.name!r} already exists in {taken.ns or 'the host namespace'}",
                "the existing interface was left untouched",
            ) from None
    else:
        raise CNIError(Code.CONFLICT, f"failed to find a unique name for a {link.kind} link")
    for created in (link, link.peer):
        if created is not None and _lookup(sock(created.ns), created) is None:
            raise CNIError(Code.KERNEL, f"link {created.where()} vanished right after it was created")
    undo.append(_undo(_destroy, sock(link.ns), link))
    for end in (link, link.peer):
        if end is not None and end.alias:
            links.set_attrs(sock(end.ns), end.index, f"failed to set the alias of {end.where()}", ifalias=end.alias)
    _finish(link)


def _destroy(ipr: IPRoute, link: Link) -> None:
    """Undo a creation: delete the link (a veth's peer goes with it) and forget its index, so
    that the attachment can be applied again."""
    links.delete(ipr, link.index)
    for end in (link, link.peer):
        if end is not None:
            end.index = 0


def _finish(link: Link) -> None:
    if link.creation.finish is not None:
        link.creation.finish(link)


def _replace(ipr: IPRoute, link: Link) -> None:
    """Delete a leftover link of the name and kind this one is about to be created with."""
    old = links.get(ipr, link.name)
    if old is not None and link.alias:
        alias = str(old.get_attr("IFLA_IFALIAS") or "")
        tag = link.alias.split(" ", 1)[0] + " "
        if alias.startswith(tag) and alias != link.alias:
            raise CNIError(
                Code.CONFLICT,
                f"{link.where()} belongs to {alias[len(tag) :]!r}, not {link.alias[len(tag) :]!r}",
                "the two attachments' generated interface names collide; nothing was changed",
            )
    if old is not None and (not link.kind or links.kind(old) == link.kind):
        log.info("deleting leftover %s %s", link.kind, link.where())
        link.replaced = links.delete(ipr, old["index"])


def _take_device(sock: _Sockets, link: Link, undo: list[Callable[[], None]]) -> None:
    """Move a host interface into the link's namespace under the link's name, in one request."""
    host = sock(None)
    msg = links.get(host, link.creation.device)
    if msg is None:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"host device {link.creation.device!r} does not exist")
    if link.ns is not None and links.get(sock(link.ns), link.name) is not None:
        raise CNIError(Code.CONFLICT, f"an interface named {link.name!r} already exists in {link.ns}")
    _move(
        host,
        msg["index"],
        link.ns or HOST_NS,
        link.name,
        f"moving {link.creation.device} into {link.ns}",
        alias=link.creation.device,
    )
    if _lookup(sock(link.ns), link) is None:
        raise CNIError(Code.KERNEL, f"{link.creation.device} did not arrive in {link.ns} as {link.name}")
    undo.append(_undo(_give_back, sock, link))


def _move(ipr: IPRoute, index: int, ns: str, name: str, what: str, alias: str = "") -> None:
    links.set_attrs(ipr, index, what, state="down")
    fd = netns.open_fd(ns)
    try:
        links.set_attrs(ipr, index, what, net_ns_fd=fd, ifname=name, **({"ifalias": alias} if alias else {}))
    finally:
        os.close(fd)


def _give_back(sock: _Sockets, link: Link) -> None:
    """Move a host-device link back to the host under its host name, `device` (a container
    may change the alias; a plugin that no longer knows the name reads it from there)."""
    ipr = sock(link.ns)
    msg = links.get(ipr, link.name)
    if msg is not None:
        _move(ipr, msg["index"], HOST_NS, link.creation.device, f"giving {link.name} back to the host as {link.creation.device}")
    link.index = 0


def _create_in(ipr: IPRoute, spec: dict[str, Any], ns: str, link: Link) -> None:
    """Create a link from the host socket directly inside `ns` (macvlan & co. need their parent)."""
    fd = netns.open_fd(ns)
    try:
        links.create(ipr, dict(spec, net_ns_fd=fd), what=f"failed to make {link.kind} {link.where()}")
    finally:
        os.close(fd)


def _taken_name(sock: _Sockets, link: Link) -> Link:
    """Which end's name made a creation fail with EEXIST."""
    for end in (link, link.peer):
        if end is not None and links.get(sock(end.ns), end.name) is not None:
            return end
    return link


def _write_sysctls(items: list[Sysctl]) -> None:
    by_ns: dict[str | None, list[Sysctl]] = {}
    for item in items:
        by_ns.setdefault(item.namespace(), []).append(item)
    for ns, group in by_ns.items():

        def write_all(group: list[Sysctl] = group) -> None:
            for item in group:
                try:
                    sysctl.write_many([(item.path(), item.value)])
                except CNIError:
                    if item.strict:
                        raise
                    log.debug("ignoring failed sysctl %s=%s", item.path(), item.value)

        if ns is None:
            write_all()
        else:
            netns.run_in(ns, write_all)


def _configure(ipr: IPRoute, link: Link) -> None:
    """Settings applied after creation (and to shared links every time, as the reference does)."""
    msg = links.by_index(ipr, link.index)
    if msg is None:
        raise CNIError(Code.KERNEL, f"link {link.where()} disappeared")
    if link.port is not None:
        _configure_port(ipr, link, link.port, msg)
    if link.settings.promisc and not links.is_promisc(msg):
        what = f"could not set promiscuous mode on {link.name!r}"
        links.set_attrs(ipr, link.index, what, flags=links.IFF_PROMISC, change=links.IFF_PROMISC)
    if link.settings.up and not links.is_up(msg):
        links.set_attrs(ipr, link.index, f"failed to set {link.name!r} up", state="up")


def _configure_port(ipr: IPRoute, link: Link, port: BridgePort, msg: Any) -> None:
    if links.master(msg) != port.master.index:
        what = f"failed to connect {link.name!r} to bridge {port.master.name}"
        links.set_attrs(ipr, link.index, what, master=port.master.index)
    if port.flags:
        links.set_port_flags(ipr, link.index, port.flags, f"failed to set bridge port flags of {link.name!r}")
    if port.drop_default_vlan:
        links.remove_vlans(ipr, link.index, f"failed to remove default vlan on interface {link.name!r}")
    for vid, pvid, untagged in port.vlans:
        links.add_vlan(ipr, link.index, vid, pvid, untagged, f"failed to setup vlan tag on interface {link.name!r}")


def _add_address(ipr: IPRoute, address: Address, undo: list[Callable[[], None]]) -> None:
    link = address.link
    if address.exclusive:
        for present in addrs.list_addresses(ipr, link.index):
            if present == address.address or present.version != address.address.version or present.ip.is_link_local:
                continue
            overlap = present.network.overlaps(address.address.network)
            if address.address.version == 4 or overlap:
                if not address.force:
                    raise CNIError(Code.CONFLICT, f"{link.name!r} already has an IP address different from {address.address}")
                addrs.delete_address(ipr, link.index, present)
    added = addrs.add_address(ipr, link.index, address.address, link.name, address.noprefixroute)
    if added and link.shared and not address.shared:
        undo.append(_undo(addrs.delete_address, ipr, link.index, address.address))


def _pin_mac(ipr: IPRoute, link: Link) -> None:
    """Set the MAC the link had when this call found it (as the reference does): a bridge
    keeps its own address instead of taking its lowest port's."""
    mac = link.actual_mac
    if not mac or mac == "00:00:00:00:00:00":
        # A bridge whose last port went has no address until a port comes: take the new port's.
        msg = links.by_index(ipr, link.index)
        mac = links.mac(msg) if msg is not None else ""
    if mac and mac != "00:00:00:00:00:00":
        links.set_attrs(ipr, link.index, f"could not set {link.name!r}'s mac", address=mac)


def _delete_route(sock: _Sockets, route: Route) -> None:
    addrs.delete_route(sock(route.link.ns), route.fields())


# -- CHECK -----------------------------------------------------------------------


def compare(att: Attachment) -> list[str]:
    """Every difference between the kernel and the description (empty: CHECK passes)."""
    problems: list[str] = []
    with _sockets() as sock:
        found: dict[int, Any] = {}
        for link in att.links:
            if not link.name:
                continue
            try:
                msg = _lookup(sock(link.ns), link)
            except netns.NetNSNotFound as exc:
                problems.append(str(exc))
                continue
            if msg is None:
                problems.append(f"{link.where()} was not found")
                continue
            found[id(link)] = msg
            problems += _link_differences(link, msg)
        for link in att.links:
            msg = found.get(id(link))
            if msg is None:
                continue
            if link.master is not None and links.master(msg) != link.master.index:
                problems.append(f"{link.where()} is not a port of {link.master.name}")
            if link.peer is not None and id(link.peer) in found and links.peer_index(msg) != link.peer.index:
                problems.append(f"{link.where()} is not the veth peer of {link.peer.where()}")
            if link.creation.parent:
                problems += _parent_differences(sock(link.ns if link.creation.parent_in_ns else None), link, msg)
        for address in att.addresses:
            present = addrs.list_addresses(sock(address.link.ns), address.link.index) if id(address.link) in found else None
            if present is not None and address.address not in present:
                problems.append(f"{address.link.where()} does not have address {address.address}")
        for route in att.routes:
            if id(route.link) in found:
                problems += _route_differences(sock, route, found)
    for item in att.sysctls:
        if item.check:
            try:
                value = sysctl.read(item.path(), item.namespace())
            except CNIError as exc:
                problems.append(str(exc))
                continue
            if value != item.value:
                problems.append(f"sysctl {item.path()} is {value}, expected {item.value}")
    for rules in att.rules:
        problems += rules.differences()
    return problems


def _parent_differences(ipr: IPRoute, link: Link, msg: Any) -> list[str]:
    parent = links.get(ipr, link.creation.parent)
    where = link.ns if link.creation.parent_in_ns else "the host"
    if parent is None:
        return [f"parent link {link.creation.parent} of {link.where()} does not exist in {where}"]
    if links.peer_index(msg) != parent["index"]:
        return [f"{link.where()} is not made from {link.creation.parent} in {where}"]
    return []


def _route_differences(sock: _Sockets, route: Route, found: dict[int, Any]) -> list[str]:
    via = route.via_link_local
    if via is not None:
        route.gw = addrs.link_local(sock(via.ns), via.index) if id(via) in found else None
        if route.gw is None:
            return [f"{via.where()} has no IPv6 link-local address to route {route.dst} via"]
    ipr = sock(route.link.ns)
    if route.exclusive:
        if addrs.find_route(ipr, route.fields()) is not None:
            return []
        owner = addrs.route_owner(ipr, route.fields())
        if owner and owner != route.link.name:
            return [f"route {route.dst} goes to {owner}, not {route.link.name}"]
    else:
        # Any table, any device: a later plugin may move routes (sbr) or name them for
        # another interface of the chain; what matters is that the destination is reached.
        wanted = dataclasses.replace(route.fields(), oif=0)
        if addrs.find_route(ipr, wanted, any_table=True) is not None:
            return []
    gw = f" via {route.gw}" if route.gw else ""
    return [f"route {route.dst}{gw} dev {route.link.name} is missing in {route.link.ns or 'the host'}"]


def _link_differences(link: Link, msg: Any) -> list[str]:
    out = []
    if link.kind and links.kind(msg) != link.kind:
        out.append(f"{link.where()} is a {links.kind(msg) or 'device'}, not a {link.kind}")
    elif link.creation.create:  # what it was created with, as the kernel reports it (a macvlan's mode)
        data = links.info_data(msg)
        for key, want in link.creation.create.items():
            got = data.get_attr("IFLA_" + key.upper()) if data is not None else None
            if got is not None and got != want:
                out.append(f"{link.where()}: {key} is {got}, expected {want}")
    if link.settings.mac and links.mac(msg).lower() != link.settings.mac.lower():
        out.append(f"{link.where()} has MAC {links.mac(msg)}, expected {link.settings.mac}")
    mtu = int(msg.get_attr("IFLA_MTU") or 0)
    if link.settings.check_mtu and link.settings.mtu and mtu != link.settings.mtu:
        out.append(f"{link.where()} has MTU {mtu}, expected {link.settings.mtu}")
    if link.settings.up and not links.is_up(msg):
        out.append(f"{link.where()} is down")
    if link.settings.promisc and not links.is_promisc(msg):
        out.append(f"{link.where()} is not in promiscuous mode")
    actual = links.port_flags(msg)
    for key, want in (link.port.flags if link.port is not None else {}).items():
        if actual.get(key, 0) != want:
            out.append(f"{link.where()}: bridge port {links.PORT_FLAGS[key]} is {actual.get(key, 0)}, expected {want}")
    return out


# -- DEL -------------------------------------------------------------------------


def remove(att: Attachment) -> None:
    """Delete what the attachment owns; what is already gone is fine. A fault-injection
    test may kill the call after a link or a rule set is removed (as for `apply`)."""
    with _sockets() as sock:
        gone: set[int] = set()
        for link in att.links:
            if link.shared or not link.name or id(link) in gone:
                continue
            if link.ns is not None and not netns.exists(link.ns):
                continue
            ipr = sock(link.ns)
            msg = links.get(ipr, link.name)
            if msg is None:
                continue
            if link.kind and links.kind(msg) != link.kind:
                log.warning("not deleting %s: it is a %s, not a %s", link.where(), links.kind(msg), link.kind)
                continue
            if link.creation.device:
                _give_back(sock, link)
                continue
            links.delete(ipr, msg["index"])
            gone.update({id(link), id(link.peer)})
            faults.checkpoint("link-removed")
        for address in att.addresses:
            if address.link.shared and not address.shared:
                msg = links.get(sock(address.link.ns), address.link.name)
                if msg is not None:
                    addrs.delete_address(sock(address.link.ns), msg["index"], address.address)
        for route in att.routes:
            if route.link.shared and not route.shared:
                msg = links.get(sock(route.link.ns), route.link.name)
                if msg is not None:
                    route.link.index = msg["index"]
                    addrs.delete_route(sock(route.link.ns), route.fields())
    for rules in att.rules:
        rules.remove()
        faults.checkpoint("rules-removed")
