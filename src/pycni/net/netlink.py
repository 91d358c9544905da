"""Netlink through pyroute2, opened in the host or inside a container namespace.

pyroute2's package `__init__` imports every protocol it supports (ndb, ipvs,
nl80211, conntrack...), about 80 ms more than the routing socket we use. A
plugin process pays that on every call when there is no resident agent, so we
load only `pyroute2.iproute` by registering the package without running its
`__init__`. If that ever fails (a pyroute2 layout change), we fall back to the
plain import: slower, never wrong.

pyroute2 would open a namespaced socket by forking a helper process, and creates
the namespace when it is missing; we open the socket ourselves on a thread inside
the namespace (`netns.socket_in`), which neither forks nor creates anything.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import os
import socket
import struct
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pycni.net import netns

if TYPE_CHECKING:
    from pyroute2 import IPRoute as IPRoute

NETLINK_ROUTE = 0
_import_lock = threading.Lock()


def _load_pyroute2() -> Any:
    """The pyroute2 module that defines IPRoute, imported as lightly as possible."""
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


@contextmanager
def route(ns_path: str | None = None) -> Iterator[IPRoute]:
    """An IPRoute talking to the namespace at `ns_path` (the host's when None)."""
    linux = _load_pyroute2()
    sock = netns.socket_in(ns_path, socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    try:
        ipr = linux.IPRoute(use_socket=sock)
    except BaseException:
        sock.close()
        raise
    ipr.pycni_ns = ns_path  # where `filtered_dump` opens its socket
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


def _filtered_dump(ipr: IPRoute, msg_type: int, header: bytes, attrs: bytes = b"") -> list[Any]:
    return _exchange(ipr, msg_type, NLM_F_DUMP, header + attrs)


def get_one(ipr: IPRoute, msg_type: int, body: bytes) -> Any | None:
    """The one object the kernel looks up by the key in `body` (a request without NLM_F_DUMP,
    e.g. RTM_GETQDISC by link and parent): its message, or None when there is none (ENOENT).
    NLM_F_ECHO: tc answers such a request as a notification, to the asker only when echo is asked."""
    try:
        found = _exchange(ipr, msg_type, NLM_F_ACK | NLM_F_ECHO, body)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return None
        raise
    return found[0] if found else None


def _exchange(ipr: IPRoute, msg_type: int, flags: int, body: bytes) -> list[Any]:
    """Send one request (a dump, or a lookup with NLM_F_ACK) in `ipr`'s namespace and decode
    the messages of the reply's type (pyroute2's classes)."""
    _load_pyroute2()
    from pyroute2.netlink.rtnl.marshal import MarshalRtnl

    kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    sock = netns.socket_in(getattr(ipr, "pycni_ns", None), socket.AF_NETLINK, kind, NETLINK_ROUTE)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        sock.bind((0, 0))
        sock.send(struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | flags, 1, 0) + body)
        chunks = []
        while True:
            data = sock.recv(1 << 17)
            offset, done = 0, False
            while offset < len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == NLMSG_DONE:
                    done = True
                elif kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    done = True
                offset += (length + 3) & ~3
            chunks.append(data)
            if done:
                break
    finally:
        sock.close()
    marshal = MarshalRtnl()
    return [msg for chunk in chunks for msg in marshal.parse(chunk) if msg["header"]["type"] == msg_type - 2]


def attr(kind: int, value: bytes) -> bytes:
    """One netlink attribute (type-length-value, padded to 4 bytes)."""
    return struct.pack("=HH", 4 + len(value), kind) + value + b"\0" * (-len(value) % 4)


_attr = attr


def request(ns_path: str | None, msg_type: int, flags: int, body: bytes) -> None:
    """Send one request we encode ourselves (for attributes pyroute2 does not know) in the
    namespace at `ns_path` and wait for its acknowledgement; OSError with the kernel's errno."""
    kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
    with netns.socket_in(ns_path, socket.AF_NETLINK, kind, NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        sock.send(struct.pack("=IHHII", 16 + len(body), msg_type, flags | NLM_F_REQUEST | NLM_F_ACK, 1, 0) + body)
        reply = sock.recv(65536)
    kind = struct.unpack_from("=H", reply, 4)[0]
    code = -struct.unpack_from("=i", reply, 16)[0] if kind == NLMSG_ERROR else 0
    if code:
        raise OSError(code, os.strerror(code))


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
