"""Tap devices, made inside a namespace with the tun driver's ioctls.

Netlink cannot create a tun/tap device: /dev/net/tun is opened on a worker thread inside
the namespace (`pycni.net.netns.run_in`), TUNSETIFF names and creates the device, the
owner and group are set, and TUNSETPERSIST keeps it after the descriptor is closed. With
an SELinux context, `ip tuntap` is run under that context instead (the device takes the
label of the process that creates it), as the reference plugin does.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess

from pycni.net import netns
from pycni.spec.errors import CNIError, Code

TUN_DEVICE = "/dev/net/tun"
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000  # refuse a name that is taken (without it TUNSETIFF attaches to that device)
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
EXEC_CONTEXT = "/proc/thread-self/attr/exec"


def create_tap(ns: str, name: str, flags: int, owner: int | None, group: int | None) -> None:
    """A persistent tap called `name` in `ns`, with the tun `flags` (IFF_*) and owner/group."""

    def make() -> None:
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CNIError(
                Code.KERNEL_UNSUPPORTED, f"cannot create tap {name}: this kernel has no tun/tap device ({TUN_DEVICE}, CONFIG_TUN)"
            ) from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags | IFF_TUN_EXCL | IFF_TAP))
            if owner is not None:
                fcntl.ioctl(fd, TUNSETOWNER, owner)
            if group is not None:
                fcntl.ioctl(fd, TUNSETGROUP, group)
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        except OSError as exc:
            raise _error(name, ns, exc) from None
        finally:
            os.close(fd)

    netns.run_in(ns, make)


def _error(name: str, ns: str, exc: OSError) -> CNIError:
    if exc.errno == errno.EBUSY:
        return CNIError(Code.CONFLICT, f"an interface named {name!r} already exists in {ns}", "it was left untouched")
    return CNIError(Code.KERNEL, f"cannot create tap {name} in {ns}: {exc.strerror}")


def create_tap_labelled(ns: str, name: str, multi_queue: bool, owner: int | None, group: int | None, context: str) -> None:
    """A tap made by `ip tuntap` running under the SELinux `context` (pi and vnet_hdr off)."""
    argv = ["ip", "tuntap", "add", "mode", "tap", "name", name]
    argv += ["multi_queue"] if multi_queue else []
    argv += ["user", str(owner)] if owner is not None else []
    argv += ["group", str(group)] if group is not None else []

    def make() -> None:
        try:
            with open(EXEC_CONTEXT, "w") as fh:  # this worker thread's next exec only
                fh.write(context)
        except OSError as exc:
            code = Code.KERNEL_UNSUPPORTED if exc.errno in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP) else Code.KERNEL
            raise CNIError(
                code,
                f"cannot create tap {name} with SELinux context {context!r}: {exc.strerror}",
                '"selinuxContext" needs SELinux enabled in the kernel',
            ) from None
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CNIError(Code.KERNEL, f"cannot create tap {name} in {ns}: {proc.stderr.strip() or proc.stdout.strip()}")

    netns.run_in(ns, make)
