"""Netlink through pyroute2, opened in the host or inside a container namespace.

pyroute2's package `__init__` imports every protocol it supports (ndb, ipvs,
nl80211, conntrack...), about 80 ms more than the routing socket we use. A
plugin process pays that on every call when there is no resident agent, so we
load only `pyroute2.iproute` by registering the package without running its
`__init__`. If that ever fails (a pyroute2 layout change), we fall back to the
plain import: slower, never wrong.

pyroute2 would open a namespaced socket by forking a helper process, and creates
the namespace when it is missing; we open the socket ourselves on a thread inside
the namespace (`netns.socket_in`), which neither forks nor creates anything. Within a
plugin call, one socket per namespace serves every request (`nlsession`).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pycni.net import netns, nlsession

if TYPE_CHECKING:
    from pyroute2 import IPRoute as IPRoute

NETLINK_ROUTE = 0
_import_lock = threading.Lock()


def _load_pyroute2() -> Any:
    """The pyroute2 module that defines IPRoute, imported as lightly as possible."""
    import importlib
    import importlib.util
    import types

    with _import_lock:
        cached = sys.modules.get("pyroute2.iproute.linux")
        if cached is not None:
            return cached
        if "pyroute2" not in sys.modules:
            spec = importlib.util.find_spec("pyroute2")
            if spec is not None and spec.submodule_search_locations is not None:
                package = types.ModuleType("pyroute2")
                package.__path__ = list(spec.submodule_search_locations)
                package.__spec__ = spec
                package.__file__ = spec.origin
                sys.modules["pyroute2"] = package
                try:
                    return importlib.import_module("pyroute2.iproute.linux")
                except Exception:  # noqa: BLE001 - fall back to the full import below
                    for name in [m for m in sys.modules if m == "pyroute2" or m.startswith("pyroute2.")]:
                        del sys.modules[name]
        importlib.import_module("pyroute2")
        return importlib.import_module("pyroute2.iproute.linux")


def netlink_error() -> type[Exception]:
    _load_pyroute2()
    from pyroute2.netlink.exceptions import NetlinkError

    return NetlinkError  # type: ignore[no-any-return]


def error_code(exc: BaseException) -> int | None:
    """The errno a netlink call failed with, or None when it is not a netlink error."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def is_errno(exc: BaseException, *codes: int) -> bool:
    return error_code(exc) in codes


# -- one socket per namespace per call (see `nlsession`) ---------------------------------------


def _open(ns_path: str | None) -> tuple[Any, socket.socket]:
    linux = _load_pyroute2()
    sock = netns.socket_in(ns_path, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    try:
        ipr = linux.IPRoute(use_socket=sock)
    except BaseException:
        sock.close()
        raise
    ipr.pycni_ns = ns_path  # where our own requests for this IPRoute go
    ipr.pycni_sock = sock  # ... and through which socket (`_exchange`)
    return ipr, sock


@contextmanager
def route(ns_path: str | None = None) -> Iterator[IPRoute]:
    """An IPRoute talking to the namespace at `ns_path` (the host's when None): the session's
    when one is open, else one of its own, closed on exit."""
    shared = nlsession.current()
    if shared is not None:
        if ns_path not in shared:
            shared[ns_path] = _open(ns_path)
        yield shared[ns_path][0]
        return
    ipr, sock = _open(ns_path)
    try:
        yield ipr
    finally:
        ipr.close()
        sock.close()


# -- dumps the kernel filters ----------------------------------------------------------------
#
# pyroute2 filters dumps in Python: listing one link's addresses, or one interface's routes,
# decodes every address or route of the namespace (60 ms for 1,000 addresses, most of a
# bridge ADD on a host with a few hundred pods). With NETLINK_GET_STRICT_CHK the kernel
# filters address dumps by interface and route dumps by table and output interface itself;
# only what it returns is decoded (by pyroute2's message classes).

SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12
NLM_F_REQUEST, NLM_F_ACK, NLM_F_ECHO, NLM_F_DUMP = 0x1, 0x4, 0x8, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETADDR, RTM_GETROUTE = 22, 26
RTA_OIF, RTA_TABLE = 4, 15


_SEQ = 0x7E000000  # our own requests' sequence numbers: far from pyroute2's counter
_REPLY_TIMEOUT = 10.0


def _exchange(sock: socket.socket, msg_type: int, flags: int, body: bytes) -> list[bytes]:
    """Send one message we encoded on `sock` and read its whole answer: the datagrams up to its
    NLMSG_DONE or NLMSG_ERROR (an acknowledgement is an NLMSG_ERROR of code 0); OSError with the
    kernel's errno when it refused. `sock` may be an IPRoute's: its event loop reads it only inside
    pyroute2's own calls, so between them the socket is ours; it is read here with a timeout and
    left non-blocking, as pyroute2 keeps it. Whatever else it holds (another sequence number) is
    not ours to answer and is skipped."""
    sock.send(struct.pack("=IHHII", 16 + len(body), msg_type, flags | NLM_F_REQUEST, _SEQ, 0) + body)
    chunks: list[bytes] = []
    error = 0
    timeout = sock.gettimeout()
    sock.settimeout(_REPLY_TIMEOUT)
    try:
        done = False
        while not done:
            data = sock.recv(1 << 17)
            offset = 0
            while offset < len(data):
                length, kind, _flags, seq = struct.unpack_from("=IHHI", data, offset)
                if seq == _SEQ and kind == NLMSG_DONE:
                    done = True
                elif seq == _SEQ and kind == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", data, offset + 16)[0]
                    done = True
                offset += (length + 3) & ~3
            chunks.append(data)
    finally:
        sock.settimeout(timeout)
    if error:
        raise OSError(error, os.strerror(error))
    return chunks


@contextmanager
def _socket_for(ns_path: str | None, ipr: Any = None) -> Iterator[socket.socket]:
    """The socket our own messages to `ns_path` go through: `ipr`'s, the session's for that
    namespace, or one of their own."""
    shared = nlsession.current()
    if ipr is None and shared is not None and ns_path in shared:
        ipr = shared[ns_path][0]
    sock = getattr(ipr, "pycni_sock", None)
    if sock is not None:
        yield sock
        return
    with netns.socket_in(ns_path, socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as own:
        own.bind((0, 0))
        yield own


def _filtered_dump(ipr: IPRoute, msg_type: int, header: bytes, attrs: bytes = b"") -> list[Any]:
    return _request(ipr, msg_type, NLM_F_DUMP, header + attrs)


def get_one(ipr: IPRoute, msg_type: int, body: bytes) -> Any | None:
    """The one object the kernel looks up by the key in `body` (a request without NLM_F_DUMP,
    e.g. RTM_GETQDISC by link and parent): its message, or None when there is none (ENOENT).
    NLM_F_ECHO: tc answers such a request as a notification, to the asker only when echo is asked."""
    try:
        found = _request(ipr, msg_type, NLM_F_ACK | NLM_F_ECHO, body)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return None
        raise
    return found[0] if found else None


def _request(ipr: IPRoute, msg_type: int, flags: int, body: bytes) -> list[Any]:
    """Send one request (a kernel-filtered dump, or a lookup with NLM_F_ACK) in `ipr`'s namespace
    and decode the messages of the reply's type (pyroute2's classes)."""
    _load_pyroute2()
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl

    with _socket_for(getattr(ipr, "pycni_ns", None), ipr) as sock:
        # Strict checking only for this request: pyroute2's own requests on the socket expect none.
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        try:
            chunks = _exchange(sock, msg_type, flags, body)
        finally:
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 0)
    marshal = MarshalRtnl()
    return [
        msg
        for chunk in chunks
        for msg in marshal.parse(chunk)
        if msg["header"]["type"] == msg_type - 2 and msg["header"]["sequence_number"] == _SEQ
    ]


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute (type-length-value, padded to 4 bytes)."""
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


_attr = attr


def request(ns_path: str | None, msg_type: int, flags: int, body: bytes) -> None:
    """Send one request we encode ourselves (for attributes pyroute2 does not know) in the
    namespace at `ns_path` and wait for its acknowledgement; OSError with the kernel's errno."""
    with _socket_for(ns_path) as sock:
        _exchange(sock, msg_type, flags | NLM_F_ACK, body)


RTA_DST = 1
RTM_NEWROUTE = 24


def route_oif(ns_path: str | None, address: str) -> int | None:
    """The output interface of the route to `address` (`ip route get`), or None when the
    route has none. Encoded here, not by pyroute2: portmap needs only this, and a plugin
    process that makes no other netlink call then never imports pyroute2 (~70 ms)."""
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    header = struct.pack("=BBBBBBBBI", family, ip.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
    with _socket_for(ns_path) as sock:
        chunks = _exchange(sock, RTM_GETROUTE, NLM_F_ACK, header + attr(RTA_DST, ip.packed))
    for data in chunks:
        offset = 0
        while offset < len(data):
            length, kind, _flags, seq = struct.unpack_from("=IHHI", data, offset)
            if kind == RTM_NEWROUTE and seq == _SEQ:
                at, end = offset + 16 + 12, offset + length  # after the netlink and rtmsg headers
                while at + 4 <= end:
                    size, rta = struct.unpack_from("=HH", data, at)
                    if rta == RTA_OIF:
                        return int(struct.unpack_from("=I", data, at + 4)[0])
                    at += (max(size, 4) + 3) & ~3
            offset += (length + 3) & ~3
    return None


def link_addresses(ipr: IPRoute, index: int, family: int = socket.AF_UNSPEC) -> list[Any]:
    """The address messages of one link (RTM_NEWADDR), filtered by the kernel."""
    return _filtered_dump(ipr, RTM_GETADDR, struct.pack("=BBBBI", family, 0, 0, 0, index))


def routes(ipr: IPRoute, family: int, table: int | None = None, oif: int | None = None) -> list[Any]:
    """The route messages of a family (RTM_NEWROUTE), filtered by the kernel on table and
    output interface when given (a multipath route is returned whole, whatever its hops)."""
    attrs = b""
    if table is not None:
        attrs += _attr(RTA_TABLE, struct.pack("=I", table))
    if oif is not None:
        attrs += _attr(RTA_OIF, struct.pack("=I", oif))
    header = struct.pack("=BBBBBBBBI", family, 0, 0, 0, 0 if table is None else min(table, 255), 0, 0, 0, 0)
    return _filtered_dump(ipr, RTM_GETROUTE, header, attrs)


ENOENT = errno.ENOENT
EEXIST = errno.EEXIST
ENODEV = errno.ENODEV
ESRCH = errno.ESRCH
EOPNOTSUPP = errno.EOPNOTSUPP
