"""What chained (meta) plugins share: reading the previous result, naming an attachment.

A meta plugin acts on the attachment a main plugin made: the container interface
`CNI_IFNAME` inside `CNI_NETNS`, its addresses, and the host-side interface of a
veth pair. Every piece of kernel state a meta plugin creates is labelled with
the attachment's owner tag, so DEL and GC remove exactly that attachment's state.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from pycni.skel import CmdArgs
from pycni.spec import gc
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import IPInterface, Result

# nftables refuses comments longer than 128 characters; iptables allows 255.
MAX_TAG = 120
_SAFE_TAG = re.compile(r"^[A-Za-z0-9_.\-@+=]+\Z")


def owner_tag(network: str, container_id: str, ifname: str) -> str:
    """A printable label naming one attachment (network, container, interface).

    Readable when it fits; otherwise the network (shortened) and a digest of all three,
    so two attachments never share a tag."""
    tag = f"{network} {container_id} {ifname}"
    if len(tag) <= MAX_TAG and _SAFE_TAG.match(ifname):
        return tag
    digest = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()[:40]
    return f"{network[:60]} #{digest}"


def attachment_of(tag: str) -> str:
    """The attachment an owner tag names, as a report shows it: CONTAINERID/IFNAME, or the
    digest of a tag too long to be readable."""
    parts = tag.split(" ")
    return f"{parts[1]}/{parts[2]}" if len(parts) == 3 else parts[-1]


def call_tag(call: CmdArgs) -> str:
    return owner_tag(call.conf.name, call.container_id, call.ifname)


def valid_tags(call: CmdArgs) -> set[str]:
    """The owner tags of the attachments a GC call says are still valid (spec 1.1.0); each
    must name its interface, since the state is per interface."""
    tags: set[str] = set()
    for container_id, ifname in gc.valid_attachments(call.conf.raw):
        if not ifname:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{gc.VALID_ATTACHMENTS_KEY!r}: container {container_id!r} has no ifname")
        tags.add(owner_tag(call.conf.name, container_id, ifname))
    return tags


def require_prev_result(call: CmdArgs, plugin: str) -> Result:
    prev = call.prev_result
    if prev is None:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f"{plugin} must be called as a chained plugin: the configuration has no prevResult",
            f"put {plugin} after a main plugin (bridge, ptp, ...) in a network configuration list",
        )
    return prev


def container_addresses(prev: Result, ifname: str) -> dict[int, IPInterface]:
    """The first IPv4 and first IPv6 address of the container interface `ifname`.

    As the reference plugins do, addresses without an interface index are taken
    to belong to the container; those of a host-side or other interface are skipped."""
    found: dict[int, IPInterface] = {}
    for ip in prev.ips:
        if ip.family in found:
            continue
        if ip.interface is not None and 0 <= ip.interface < len(prev.interfaces):
            intf = prev.interfaces[ip.interface]
            if intf.name != ifname or not intf.sandbox:
                continue
        found[ip.family] = ip.address
    return found


def require_container_addresses(prev: Result, ifname: str, plugin: str) -> dict[int, IPInterface]:
    found = container_addresses(prev, ifname)
    if not found:
        names = ", ".join(f"{i.name}{' (sandbox)' if i.sandbox else ''}" for i in prev.interfaces) or "none"
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f'{plugin}: prevResult has no address on container interface "{ifname}"',
            f"interfaces in prevResult: {names}; chain {plugin} after the main plugin that creates {ifname} "
            "in the container namespace",
        )
    return found


def container_interface_index(prev: Result, ifname: str, netns: str) -> int:
    """Index (in prevResult) of the container interface; a clear error when there is none."""
    idx = prev.container_interface(ifname)
    if idx is None:
        names = ", ".join(f"{i.name}{' (sandbox)' if i.sandbox else ''}" for i in prev.interfaces) or "none"
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f'prevResult has no container interface "{ifname}" (an interface with a sandbox)',
            f"interfaces in prevResult: {names}; the previous plugin must report the container interface in {netns}",
        )
    return idx


LOCK_DIR = "/run/pycni"


@contextmanager
def host_lock(name: str) -> Iterator[None]:
    """Serialise a read-then-write sequence on host state across processes and threads.

    flock(2) locks belong to an open file description, so two calls in one agent
    process exclude each other exactly as two plugin processes do."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    fd = os.open(os.path.join(LOCK_DIR, f"{name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
