"""bandwidth: token-bucket limits on a container's traffic (the `bandwidth` capability).

Ingress (toward the container) is shaped by a tbf on the host side of its veth;
egress by redirecting what that veth receives to an ifb device and shaping there.
Rates are bits per second and bursts bits, as in the reference; a limit written
in the configuration wins over the runtime's `bandwidth` capability, entirely.

Better than the reference: the ifb name includes the interface (two attachments
of one container to a network no longer collide; eth0 keeps the reference's name,
so either plugin can delete what the other made), the ifb carries the attachment
in its alias (GC finds stale ones), and DEL removes the qdiscs as well.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from pycni import faults, gcreport
from pycni.net import links, netlink, netns, tc
from pycni.plugins.meta import _chained
from pycni.skel import CmdArgs
from pycni.spec import gokeys
from pycni.spec.config import Fields
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Interface, Result

ABOUT = "CNI bandwidth plugin (pycni)"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
log = logging.getLogger("pycni.plugin.bandwidth")

IFB_PREFIX = "bwp"
MAX_IFNAME = 15
ALIAS_PREFIX = "pycni-bandwidth "
MAX_BURST_BYTES = 0xFFFFFFFF  # the kernel's bucket is 32 bits of bytes: under 4 GB
UINT64_MAX = 2**64 - 1
FIELDS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")


@dataclass
class Limits:
    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    @property
    def shapes_ingress(self) -> bool:
        return self.ingress_rate > 0 and self.ingress_burst > 0

    @property
    def shapes_egress(self) -> bool:
        return self.egress_rate > 0 and self.egress_burst > 0


def _uint64(fields: Fields, key: str) -> int:
    """A uint64 as encoding/json reads one: a JSON integer from 0 to 2**64-1 (no fraction,
    no exponent, no string)."""
    value = fields.raw(key, 0)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= UINT64_MAX:
        return value
    where = f"{fields.where}.{key}" if fields.where else key
    raise CNIError(
        Code.INVALID_NETWORK_CONFIG, f"invalid value for {where!r}: {value!r} is not an integer from 0 to {UINT64_MAX}"
    )


def _limits_from(fields: Fields) -> Limits:
    """The reference's validateRateAndBurst: rate and burst together, the burst under 4 GB."""
    values = {key: _uint64(fields, key) for key in FIELDS}
    for direction in ("ingress", "egress"):
        rate, burst = values[f"{direction}Rate"], values[f"{direction}Burst"]
        where = f" in {fields.where}" if fields.where else ""
        if rate and not burst:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{direction}Rate is set but {direction}Burst is not{where}: set both")
        if burst and not rate:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{direction}Burst is set but {direction}Rate is not{where}: set both")
        if burst // 8 >= MAX_BURST_BYTES:
            raise CNIError(
                Code.INVALID_NETWORK_CONFIG, f"{direction}Burst {burst} is too large{where}: a burst must be under 4 GB"
            )
    return Limits(values["ingressRate"], values["ingressBurst"], values["egressRate"], values["egressBurst"])


def parse_limits(call: CmdArgs) -> Limits:
    """The static configuration if it names any limit (even as null: Go then allocates the
    embedded BandwidthEntry), else the runtime's `bandwidth` capability."""
    fields = call.conf.fields
    if any(gokeys.mentions(fields.data, key) for key in FIELDS):
        return _limits_from(fields)
    runtime = call.conf.runtime_config
    if "bandwidth" in runtime:
        return _limits_from(runtime.get_obj("bandwidth"))
    return Limits()


def ifb_name(network: str, container_id: str, ifname: str) -> str:
    subject = network + container_id if ifname == "eth0" else f"{network}{container_id}/{ifname}"
    return (IFB_PREFIX + hashlib.sha512(subject.encode()).hexdigest())[:MAX_IFNAME]


def _peer_index(ns_path: str, ifname: str) -> int:
    """The host-side index of the container interface's veth peer."""
    try:
        with netlink.route(ns_path) as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise CNIError(Code.INVALID_NETWORK_CONFIG, f"container interface {ifname} not found in {ns_path}")
            link = ipr.get_links(found[0])[0]
            kind = link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            peer = link.get_attr("IFLA_LINK")
    except CNIError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise CNIError(Code.KERNEL, f"cannot read container interface {ifname}: {exc}") from None
    if kind != "veth" or not peer:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f"container interface {ifname} is a {kind or 'non-veth'} link, not a veth",
            "bandwidth shapes the host side of a veth pair",
        )
    return int(peer)


def host_interface(call: CmdArgs, prev: Result) -> tuple[int, str]:
    """Index and name of the host-side veth of the container interface."""
    _chained.container_interface_index(prev, call.ifname, call.netns)
    peer = _peer_index(call.netns, call.ifname)
    with netlink.route(None) as ipr:
        host_end = links.by_index(ipr, peer)
        if host_end is None:
            raise CNIError(
                Code.INVALID_NETWORK_CONFIG, f"the veth peer (index {peer}) of {call.ifname} is not in the host namespace"
            )
        name = str(host_end.get_attr("IFLA_IFNAME"))
    if not any(i.name == name and not i.sandbox for i in prev.interfaces):
        log.info("host veth %s of %s is not listed in prevResult; shaping it all the same", name, call.ifname)
    return peer, name


def _create_ifb(ipr: netlink.IPRoute, name: str, mtu: int, alias: str) -> int:
    try:
        # Queue length 0, as the reference's CreateIfb (Go netlink's LinkAttrs literal) makes it.
        ipr.link("add", ifname=name, kind="ifb", mtu=mtu, txqlen=0)
    except Exception as exc:  # noqa: BLE001
        if netlink.is_errno(exc, netlink.EEXIST):
            raise CNIError(Code.CONFLICT, f"ifb device {name} already exists", "is another attachment using this name?") from None
        if netlink.is_errno(exc, netlink.EOPNOTSUPP, 95):
            raise CNIError(Code.KERNEL_UNSUPPORTED, "this kernel has no ifb link type (module ifb)") from None
        raise CNIError(Code.KERNEL, f"cannot create ifb device {name}: {exc}") from None
    index = int(ipr.link_lookup(ifname=name)[0])
    ipr.link("set", index=index, ifalias=alias, state="up")
    return index


def _delete_ifb(ipr: netlink.IPRoute, name: str, tag: str) -> None:
    """Delete the attachment's ifb, never another attachment's: the name is a hash of network +
    container ID (as the reference names it), the same for network "n1" container "abc" and
    network "n" container "1abc"; our ifbs say whose they are in their alias. One without our
    alias (the reference's) is taken to be the caller's, as the reference's DEL takes it."""
    found = links.get(ipr, name)
    if found is None:
        return
    alias = str(found.get_attr("IFLA_IFALIAS") or "")
    if alias.startswith(ALIAS_PREFIX) and alias != ALIAS_PREFIX + tag:
        log.warning("ifb %s belongs to %s, not to %s: left alone", name, alias[len(ALIAS_PREFIX) :], tag)
        return
    links.delete(ipr, found["index"])


def add(call: CmdArgs) -> Result:
    limits = parse_limits(call)
    prev = call.prev_result
    if not (limits.shapes_ingress or limits.shapes_egress):
        return prev if prev is not None else Result(cni_version=call.cni_version)
    prev = _chained.require_prev_result(call, "bandwidth")
    index, _ = host_interface(call, prev)
    result = prev.copy()
    ifb = ifb_name(call.conf.name, call.container_id, call.ifname)
    with netlink.route(None) as ipr:
        try:
            if limits.shapes_ingress:
                tc.add_tbf(ipr, index, tc.TBF.from_bits(limits.ingress_rate, limits.ingress_burst))
                faults.checkpoint("ingress-qdisc-added")
            if limits.shapes_egress:
                mtu = int(ipr.get_links(index)[0].get_attr("IFLA_MTU"))
                ifb_index = _create_ifb(ipr, ifb, mtu, ALIAS_PREFIX + _chained.call_tag(call))
                faults.checkpoint("ifb-created")
                tc.add_ingress_redirect(ipr, index, ifb_index)
                faults.checkpoint("redirect-added")
                tc.add_tbf(ipr, ifb_index, tc.TBF.from_bits(limits.egress_rate, limits.egress_burst))
                faults.checkpoint("egress-qdisc-added")
                mac = str(ipr.get_links(ifb_index)[0].get_attr("IFLA_ADDRESS") or "")
                result.interfaces.append(Interface(name=ifb, mac=mac))
        except BaseException:
            # A failed ADD leaves nothing behind.
            tc.delete_root_tbf(ipr, index)
            tc.delete_ingress(ipr, index)
            if limits.shapes_egress:
                _delete_ifb(ipr, ifb, _chained.call_tag(call))  # not the one whose name we collided with
            raise
    return result


def check(call: CmdArgs) -> None:
    prev = _chained.require_prev_result(call, "bandwidth")
    limits = parse_limits(call)
    if not (limits.shapes_ingress or limits.shapes_egress):
        return
    index, host_if = host_interface(call, prev)
    with netlink.route(None) as ipr:
        if limits.shapes_ingress:
            want = tc.TBF.from_bits(limits.ingress_rate, limits.ingress_burst)
            got = tc.root_tbf(ipr, index)
            if not tc.matches(got, want):
                raise CNIError(Code.KERNEL, f"ingress limit on {host_if} is not as configured", f"want {want}, found {got}")
        if limits.shapes_egress:
            ifb = ifb_name(call.conf.name, call.container_id, call.ifname)
            found = ipr.link_lookup(ifname=ifb)
            if not found:
                raise CNIError(Code.KERNEL, f"ifb device {ifb} of {call.ifname} is missing")
            if not tc.has_ingress(ipr, index):
                raise CNIError(Code.KERNEL, f"the redirect of {host_if} to {ifb} is missing")
            want = tc.TBF.from_bits(limits.egress_rate, limits.egress_burst)
            got = tc.root_tbf(ipr, found[0])
            if not tc.matches(got, want):
                raise CNIError(Code.KERNEL, f"egress limit on {ifb} is not as configured", f"want {want}, found {got}")


def delete(call: CmdArgs) -> None:
    ifb = ifb_name(call.conf.name, call.container_id, call.ifname)
    host_index: int | None = None
    if call.netns and netns.exists(call.netns):
        try:
            host_index = _peer_index(call.netns, call.ifname)
        except CNIError as err:
            log.info("no host veth to clean for %s: %s", call.ifname, err)
    with netlink.route(None) as ipr:
        if host_index is not None and ipr.link_lookup(index=host_index):
            tc.delete_root_tbf(ipr, host_index)
            tc.delete_ingress(ipr, host_index)
            faults.checkpoint("qdiscs-deleted")
        _delete_ifb(ipr, ifb, _chained.call_tag(call))


def gc(call: CmdArgs) -> None:
    """Delete the ifb devices of this network's attachments that are not valid any more."""
    valid = _chained.valid_tags(call)
    # A tag starts with its network's name (shortened to 60 characters when the tag is hashed).
    own_network = {call.conf.name, call.conf.name[:60]}
    with netlink.route(None) as ipr:
        for link in ipr.get_links():
            if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") != "ifb":
                continue
            alias = link.get_attr("IFLA_IFALIAS") or ""
            if not alias.startswith(ALIAS_PREFIX):
                continue
            tag = alias[len(ALIAS_PREFIX) :]
            if tag.split(" ", 1)[0] in own_network and tag not in valid:
                links.delete(ipr, link["index"])
                gcreport.released("ifb device", link.get_attr("IFLA_IFNAME") or str(link["index"]))
