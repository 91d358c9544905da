"""Many rtnetlink requests in a few datagrams, every one acknowledged.

Programming a node's view of a large cluster is hundreds of neighbour, FDB and route changes.
One request and one round trip each is slow, and a socket too small for what comes back fails
with ENOBUFS (flannel's users see `AddFDB failed: no buffer space available` past ~30 nodes).
Here the requests are packed into datagrams of at most `CHUNK` bytes (the kernel handles the
messages of one datagram in order), each asks for an acknowledgement, and the socket's receive
buffer is sized for every answer of a chunk (SO_RCVBUFFORCE as root; NETLINK_CAP_ACK keeps error
answers short). A request that fails is reported with its errno; the others still run.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pycni.net import netns

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32
BUFFER = 8 << 20
CHUNK = 32 << 10
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWNEIGH, RTM_DELNEIGH = 24, 25, 28, 29
REPLACE = NLM_F_CREATE | NLM_F_REPLACE


@dataclass
class Request:
    msg: Any  # a pyroute2 message (rtmsg, ndmsg) with its fields and attrs set
    msg_type: int
    flags: int = 0
    what: str = ""  # for logs: "FDB 5e:.. -> 172.20.0.12"
    ignore: tuple[int, ...] = ()  # errnos that count as success (ENOENT when deleting)


@dataclass
class Failure:
    request: Request
    errno: int

    def __str__(self) -> str:
        return f"{self.request.what}: {os.strerror(self.errno)}"


def _socket(ns_path: str | None) -> socket.socket:
    sock = netns.socket_in(ns_path, socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    for forced, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER)
    try:
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
    except OSError:
        pass
    sock.bind((0, 0))
    return sock


def run(requests: Sequence[Request], ns_path: str | None = None) -> list[Failure]:
    """Send `requests` in order; the ones that failed (with an errno not in their `ignore`)."""
    if not requests:
        return []
    failures: list[Failure] = []
    sock = _socket(ns_path)
    try:
        pending: dict[int, Request] = {}
        chunk = bytearray()
        for seq, request in enumerate(requests, start=1):
            msg = request.msg
            msg["header"]["type"] = request.msg_type
            msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK | request.flags
            msg["header"]["sequence_number"] = seq
            msg.encode()
            data = bytes(msg.data[: msg["header"]["length"]])
            if chunk and len(chunk) + len(data) > CHUNK:
                _flush(sock, chunk, pending, failures)
                chunk = bytearray()
            chunk += data
            pending[seq] = request
        _flush(sock, chunk, pending, failures)
    finally:
        sock.close()
    return failures


def _flush(sock: socket.socket, chunk: bytearray, pending: dict[int, Request], failures: list[Failure]) -> None:
    if not chunk:
        return
    sock.send(bytes(chunk))
    while pending:
        data = sock.recv(BUFFER)
        offset = 0
        while offset + 16 <= len(data):
            length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, offset)
            if length < 16:
                break
            if kind == NLMSG_ERROR and seq in pending:
                (code,) = struct.unpack_from("=i", data, offset + 16)
                request = pending.pop(seq)
                if code and -code not in request.ignore:
                    failures.append(Failure(request, -code))
            offset += (length + 3) & ~3
