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
import socket
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
    try:
        yield ipr
    finally:
        ipr.close()
        sock.close()


ENOENT = errno.ENOENT
EEXIST = errno.EEXIST
ENODEV = errno.ENODEV
ESRCH = errno.ESRCH
EOPNOTSUPP = errno.EOPNOTSUPP
