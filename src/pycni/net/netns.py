"""Network namespaces, entered without touching the calling thread.

Code that must run inside a container's namespace (a sysctl write, opening a
socket) runs on a fresh worker thread that calls setns(2) and then ends, so the
caller's thread, and every other plugin call sharing the process, stays where it
was. Netlink work does not even need that: a socket opened inside a namespace
keeps talking to it (`socket_in`).
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pycni.spec.errors import CNIError, Code

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"


class NetNSNotFound(CNIError):
    """The namespace path does not exist (DEL treats this as already clean)."""

    def __init__(self, path: str) -> None:
        super().__init__(Code.INVALID_ENVIRONMENT_VARIABLES, f"network namespace {path} does not exist")
        self.path = path


@functools.cache
def _libc() -> Any:
    # ctypes is imported here, not with the module: a call that works only in the host's own
    # namespace never enters another (~3 ms of a plugin process).
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    libc = _libc()
    if libc.setns(fd, CLONE_NEWNET) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_fd(path: str) -> int:
    """An fd for the namespace at `path`; NetNSNotFound when it is gone, code 4 when it is not a netns."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetNSNotFound(path) from None
    except OSError as exc:
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"cannot open network namespace {path}: {exc.strerror}") from None
    return fd


def exists(path: str) -> bool:
    """True when `path` is an existing network namespace (a bind mount or /proc/<pid>/ns/net)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        # NS_GET_NSTYPE (0xb703) answers CLONE_NEWNET only for a network namespace.
        import fcntl

        return fcntl.ioctl(fd, 0xB703) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def run_in(path: str, fn: Callable[[], T]) -> T:
    """Call `fn` on a worker thread inside the namespace at `path`, and return its value."""
    fd = open_fd(path)
    try:
        if not exists(path):
            raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"{path} is not a network namespace")
        box: dict[str, object] = {}

        def worker() -> None:
            try:
                _setns(fd)
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                box["error"] = exc

        thread = threading.Thread(target=worker, name=f"netns:{os.path.basename(path)}")
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def socket_in(path: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket opened inside the namespace at `path` (the caller's own when None)."""
    if path is None:
        return socket.socket(family, kind, proto)
    return run_in(path, lambda: socket.socket(family, kind, proto))


# -- named namespaces (what `ip netns add` makes) --------------------------------


def named_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def create_named(name: str) -> str:
    """Create /run/netns/<name>, as `ip netns add` does (iproute2 does the mount dance)."""
    if "/" in name or name in ("", ".", ".."):
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"invalid namespace name {name!r}")
    path = named_path(name)
    if os.path.exists(path):
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"network namespace {name} already exists")
    import subprocess  # only the runtime and tests name namespaces

    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CNIError(Code.IO_FAILURE, f"ip netns add {name}: {proc.stderr.strip()}")
    return path


def delete_named(name: str) -> bool:
    """Remove a named namespace; False when there was none."""
    if "/" in name or name in ("", ".", ".."):
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"invalid namespace name {name!r}")
    if not os.path.exists(named_path(name)):
        return False
    import subprocess

    proc = subprocess.run(["ip", "netns", "delete", name], capture_output=True, text=True, check=False)
    if proc.returncode != 0 and os.path.exists(named_path(name)):
        raise CNIError(Code.IO_FAILURE, f"ip netns delete {name}: {proc.stderr.strip()}")
    return True


def is_missing_error(exc: BaseException) -> bool:
    return isinstance(exc, NetNSNotFound) or (isinstance(exc, OSError) and exc.errno == errno.ENOENT)
