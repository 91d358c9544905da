"""Wakes the reconcile loop when the kernel loses something flanneld made: a link deleted (its
VXLAN device), a route of its protocol deleted, a neighbour or FDB entry deleted on one of its
devices. Only deletions are followed: what flanneld adds itself must not wake it again. A
monitor that overflowed (ENOBUFS: events were lost) wakes it too; the reconcile compares
everything anyway, so nothing is missed.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
from collections.abc import Callable

from pycni.flannel.kernel import ROUTE_PROTO
from pycni.net import nlbatch

log = logging.getLogger("flanneld")

RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x4, 0x40, 0x400
RTM_DELLINK, RTM_DELROUTE, RTM_DELNEIGH = 17, 25, 29


class KernelMonitor:
    def __init__(self, wake: Callable[[], None], devices: Callable[[], set[int]]) -> None:
        self.wake = wake
        self.devices = devices
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, nlbatch.NETLINK_ROUTE)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, nlbatch.SO_RCVBUFFORCE, 4 << 20)
        except PermissionError:
            pass
        self.sock.bind((0, RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
        self.sock.settimeout(1.0)
        self._thread = threading.Thread(target=self._run, name="netlink-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _relevant(self, data: bytes) -> bool:
        offset = 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if length < 16:
                break
            body = offset + 16
            if kind == RTM_DELLINK:
                return True
            if kind == RTM_DELROUTE and len(data) >= body + 6 and data[body + 5] == ROUTE_PROTO:
                return True
            if kind == RTM_DELNEIGH and len(data) >= body + 8:
                (ifindex,) = struct.unpack_from("=i", data, body + 4)
                if ifindex in self.devices():
                    return True
            offset += (length + 3) & ~3
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.wake()  # events were lost: compare everything
                    continue
                if self._stop.is_set():
                    return
                log.warning("netlink monitor: %s", exc)
                self._stop.wait(1)
                continue
            if self._relevant(data):
                self.wake()
        self.sock.close()
