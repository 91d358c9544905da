"""nftables through libnftables' JSON API, in-process (no `nft` process per call).

`run` applies a list of commands as one transaction: all of it or none of it,
which is what lets a plugin's ADD or DEL never leave half its rules behind.
libnftables contexts are not thread-safe; calls in one process are serialised
on a lock (a transaction takes well under a millisecond).

A context keeps the netlink socket it opened on first use, in the network
namespace of the thread that used it: the kept one serves only threads in the
process's own namespace (the agent's host), and a thread inside another
namespace (`netns.run_in`) gets a context of its own for that one command.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pycni.spec.errors import CNIError, Code

_lock = threading.Lock()
_ctx: Any = None


def _new_context() -> Any:
    import nftables

    ctx = nftables.Nftables()
    ctx.set_json_output(True)
    ctx.set_handle_output(True)
    return ctx


def _in_own_namespace() -> bool:
    return os.stat("/proc/thread-self/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino


@contextmanager
def _context() -> Iterator[Any]:
    """A libnftables context bound to the calling thread's network namespace."""
    global _ctx
    if not _in_own_namespace():
        yield _new_context()  # freed with the object
        return
    with _lock:
        if _ctx is None:
            _ctx = _new_context()
        yield _ctx


class NftError(CNIError):
    def __init__(self, what: str, error: str) -> None:
        super().__init__(Code.KERNEL, f"nftables: {what} failed", error.strip())
        self.error = error


def run(commands: list[dict[str, Any]], what: str = "transaction") -> None:
    """Apply `commands` (libnftables JSON objects, e.g. {"add": {"table": {...}}}) atomically."""
    if not commands:
        return
    payload = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
    with _context() as ctx:
        rc, _out, err = ctx.cmd(payload)
    if rc != 0:
        raise NftError(what, err)


def run_text(script: str, what: str = "transaction") -> None:
    """Apply an nft script (the `nft -f` language) atomically."""
    with _context() as ctx:
        rc, _out, err = ctx.cmd(script)
    if rc != 0:
        raise NftError(what, err)


def run_text_new_rules(script: str, table: str, chain: str, what: str = "transaction") -> list[tuple[int, str]]:
    """`run_text`, returning (handle, comment) of each rule it added to `chain` of `table`, in
    the order added. libnftables' echo (`set_echo_output`) fetches the whole ruleset first to
    print what it echoes, a cost that grows with every rule and element on the host; the
    kernel announces each new rule to the listeners of NFNLGRP_NFTABLES, handle and comment
    included, before it acknowledges the transaction: a socket listening during the
    transaction reads them. None of the rules found (another process's changes overflowed
    the socket): an empty list, and the caller does without handles."""
    listener = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK, NETLINK_NETFILTER)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        listener.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
        run_text(script, what)
        found: list[tuple[int, str]] = []
        while True:
            try:
                data = listener.recv(1 << 16)
            except BlockingIOError:
                return sorted(found)
            except OSError:  # ENOBUFS: some announcements were lost
                return []
            found += _new_rules(data, table, chain)
    finally:
        listener.close()


def _new_rules(data: bytes, table: str, chain: str) -> list[tuple[int, str]]:
    """(handle, comment) of the NFT_MSG_NEWRULE messages in `data` for `chain` of `table`."""
    out = []
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE:
            attrs = _attrs(data[offset + 20 : offset + length])
            names = (attrs.get(NFTA_RULE_TABLE, b"").rstrip(b"\0"), attrs.get(NFTA_RULE_CHAIN, b"").rstrip(b"\0"))
            if names == (table.encode(), chain.encode()) and NFTA_RULE_HANDLE in attrs:
                (handle,) = struct.unpack("!Q", attrs[NFTA_RULE_HANDLE])
                out.append((handle, _comment(attrs.get(NFTA_RULE_USERDATA, b""))))
        offset += (length + 3) & ~3
    return out


def list_objects(target: str) -> list[dict[str, Any]]:
    """`nft -j list <target>` as a list of objects (table, chain, rule, set, map, element...).

    A target that does not exist gives an empty list."""
    with _context() as ctx:
        rc, out, err = ctx.cmd(f"list {target}")
    if rc != 0:
        if "No such file or directory" in err or "does not exist" in err:
            return []
        raise NftError(f"list {target}", err)
    data = json.loads(out) if out else {"nftables": []}
    return [item for item in data.get("nftables", []) if "metainfo" not in item]


def table_exists(family: str, name: str) -> bool:
    return bool(list_objects(f"table {family} {name}"))


def list_ruleset(family: str) -> list[dict[str, Any]]:
    """Tables, chains, rules and sets of one family, without set elements (`nft -t -j list ruleset`).

    Its cost follows the number of rules, not of elements: listing a table or a chain
    makes libnftables fetch every element of every set the table holds."""
    with _context() as ctx:
        ctx.set_terse_output(True)
        try:
            rc, out, err = ctx.cmd(f"list ruleset {family}")
        finally:
            ctx.set_terse_output(False)
    if rc != 0:
        raise NftError(f"list ruleset {family}", err)
    data = json.loads(out) if out else {"nftables": []}
    return [item for item in data.get("nftables", []) if "metainfo" not in item]


# -- looking one element or set up ------------------------------------------------------------
#
# libnftables' `get element` fills its cache with the table first, so its cost grows with the
# set. The kernel looks an element up by key (NFT_MSG_GETSETELEM without NLM_F_DUMP) and a set
# by name (NFT_MSG_GETSET): those requests are built here. The netlink socket stays open:
# closing a netfilter socket waits for the destruction of whatever the last transaction
# deleted (an RCU grace period, several milliseconds). pyroute2's NFTSocket has the message
# classes but no request for one element by key, and would add its import to every portmap
# call; the two requests are small enough to write here.

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWRULE, NFT_MSG_GETRULE = 6, 7
NFNLGRP_NFTABLES = 7
NFT_MSG_NEWSET, NFT_MSG_GETSET, NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM = 9, 10, 12, 13
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_HANDLE, NFTA_RULE_USERDATA = 1, 2, 3, 7
NFTA_SET_TABLE, NFTA_SET_NAME = 1, 2
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_USERDATA = 1, 2, 6
NFTA_DATA_VALUE = 1
NLA_F_NESTED = 0x8000
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
BATCH_TIMEOUT = 30.0
NFT_MSG_DELSETELEM = 14
NLMSG_ERROR = 2
NFPROTO = {"ip": 2, "ip6": 10, "inet": 1, "bridge": 7}
UDATA_SET_ELEM_COMMENT = UDATA_RULE_COMMENT = 0
PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}


def key_field(value: str | int | ipaddress.IPv4Address | ipaddress.IPv6Address, kind: str) -> bytes:
    """One field of a key or datum as the kernel stores it: kind "proto" (inet_proto, by name),
    "port" (inet_service), "addr" (ipv4_addr/ipv6_addr), "ifindex" (iface_index, host order)."""
    if kind == "proto":
        return bytes([PROTOCOL_NUMBERS[str(value)]])
    if kind == "port":
        return struct.pack("!H", int(value))
    if kind == "addr":
        return ipaddress.ip_address(value).packed
    if kind == "ifindex":
        return struct.pack("=I", int(value))
    raise ValueError(f"unknown key field kind {kind!r}")


def concat(*fields: bytes) -> bytes:
    """A key or datum of several fields (`a . b`): each takes a multiple of 32 bits."""
    return fields[0] if len(fields) == 1 else b"".join(_pad4(f) for f in fields)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _attr(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + _pad4(payload)


def _attrs(data: bytes) -> dict[int, bytes]:
    found = {}
    while len(data) >= 4:
        length, kind = struct.unpack_from("=HH", data)
        if length < 4:
            break
        found[kind & ~NLA_F_NESTED] = data[4:length]
        data = data[(length + 3) & ~3 :]
    return found


class _Socket:
    """One netfilter netlink socket for the process, in the namespace it was opened in."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.seq = 0

    def request(self, msg: int, family: str, attrs: bytes, what: str) -> bytes | None:
        """Send one request; the reply's attributes, or None for ENOENT."""
        if not _in_own_namespace():
            raise CNIError(Code.INTERNAL, "nftables lookups serve the process's own network namespace only")
        with self.lock:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
                self.sock.bind((0, 0))
            self.seq = self.seq % 0x7FFFFFFF + 1
            body = struct.pack("=BBH", NFPROTO[family], 0, 0) + attrs
            msg_type = (NFNL_SUBSYS_NFTABLES << 8) | msg
            try:
                self.sock.send(struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST, self.seq, 0) + body)
                while True:
                    reply = self.sock.recv(65536)
                    length, kind, _flags, seq = struct.unpack_from("=IHHI", reply)
                    if seq == self.seq:
                        break  # anything else is the reply to a request abandoned by an exception
            except OSError:
                self.sock.close()
                self.sock = None
                raise
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", reply, 16)
            if -code == errno.ENOENT:
                return None
            raise NftError(what, os.strerror(-code))
        return reply[16 + 4 : length]

    def transaction(self, messages: list[tuple[int, int, str, bytes]], what: str) -> None:
        """Send (message type, extra flags, family, attributes) as one batch, all or nothing;
        NftError with the first failure's errno."""
        if not _in_own_namespace():
            raise CNIError(Code.INTERNAL, "nftables batches serve the process's own network namespace only")
        with self.lock:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
                self.sock.bind((0, 0))
            self.sock.settimeout(BATCH_TIMEOUT)  # a batch the kernel gave up on answers no more
            first = self.seq = self.seq % 0x3FFFFFFF + 1
            batch = [_message(NFNL_MSG_BATCH_BEGIN, 0, first, struct.pack("=BBH", 0, 0, socket.htons(NFNL_SUBSYS_NFTABLES)))]
            for msg, flags, family, attrs in messages:
                self.seq += 1
                msg_type = (NFNL_SUBSYS_NFTABLES << 8) | msg
                batch.append(_message(msg_type, flags | NLM_F_ACK, self.seq, struct.pack("=BBH", NFPROTO[family], 0, 0) + attrs))
            self.seq += 1
            batch.append(_message(NFNL_MSG_BATCH_END, 0, self.seq, struct.pack("=BBH", 0, 0, socket.htons(NFNL_SUBSYS_NFTABLES))))
            errors: dict[int, int] = {}
            answered: set[int] = set()
            try:
                self.sock.send(b"".join(batch))
                while len(answered) < len(messages) and first not in errors:
                    data = self.sock.recv(1 << 16)
                    offset = 0
                    while offset + 20 <= len(data):
                        length, kind, _flags, seq = struct.unpack_from("=IHHI", data, offset)
                        if kind == NLMSG_ERROR and first <= seq <= self.seq:
                            answered.add(seq)
                            (code,) = struct.unpack_from("=i", data, offset + 16)
                            if code:
                                errors[seq] = -code
                        offset += (max(length, 16) + 3) & ~3
            except OSError as exc:
                self.sock.close()
                self.sock = None
                raise NftError(what, f"netlink: {exc}") from None
            self.sock.settimeout(None)
        if errors:
            seq = min(errors)
            raise NftError(what, f"{os.strerror(errors[seq])} (message {seq - first} of the batch)")


def _message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST | flags, seq, 0) + body


_netlink = _Socket()


@dataclass(frozen=True)
class Element:
    """A set or map element as the kernel holds it: its comment and (maps) its data bytes."""

    comment: str
    data: bytes | None


def _comment(udata: bytes) -> str:
    """The comment in libnftnl's user data (type-length-value records; the comment is type 0)."""
    while len(udata) >= 2:
        kind, length = udata[0], udata[1]
        if kind == UDATA_SET_ELEM_COMMENT:
            return udata[2 : 2 + length].split(b"\0", 1)[0].decode(errors="replace")
        udata = udata[2 + length :]
    return ""


def _parse_element(attrs: bytes) -> Element:
    listed = _attrs(_attrs(attrs).get(NFTA_SET_ELEM_LIST_ELEMENTS, b""))
    element = _attrs(listed.get(NFTA_LIST_ELEM, b""))
    comment = _comment(element.get(NFTA_SET_ELEM_USERDATA, b""))
    data = _attrs(element[NFTA_SET_ELEM_DATA]).get(NFTA_DATA_VALUE) if NFTA_SET_ELEM_DATA in element else None
    return Element(comment, data)


def lookup(family: str, table: str, name: str, key: bytes) -> Element | None:
    """The element of set or map `name` whose key is `key` (the kernel's bytes: `key_field`,
    `concat`), or None when it, the set or the table does not exist. Its cost does not
    depend on the set's size."""
    inner = _attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, key))
    attrs = _attr(NFTA_SET_ELEM_LIST_TABLE, table.encode() + b"\0")
    attrs += _attr(NFTA_SET_ELEM_LIST_SET, name.encode() + b"\0")
    attrs += _attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, _attr(NFTA_LIST_ELEM | NLA_F_NESTED, inner))
    reply = _netlink.request(NFT_MSG_GETSETELEM, family, attrs, f"get element {family} {table} {name}")
    return None if reply is None else _parse_element(reply)


@dataclass(frozen=True)
class ElementChange:
    """One element to create (fails when its key exists), add (idempotent) or delete, in
    the kernel's bytes (`key_field`, `concat`)."""

    op: str  # "create", "add", "delete"
    family: str
    table: str
    name: str
    key: bytes
    data: bytes | None = None
    comment: str = ""


def change_elements(changes: list[ElementChange], what: str) -> None:
    """Apply `changes` as one transaction, written as netlink messages here rather than given
    to libnftables as text: libnftables (1.0.6) parses an `iface_index` key by looking the
    name up in a cache of every link and address of the host, rebuilt for each command (80 ms
    with 2,000 links), which made portmap's ADD and DEL grow with the number of pods."""
    messages = []
    for change in changes:
        element = _attr(NFTA_SET_ELEM_KEY | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, change.key))
        if change.data is not None:
            element += _attr(NFTA_SET_ELEM_DATA | NLA_F_NESTED, _attr(NFTA_DATA_VALUE, change.data))
        if change.comment and change.op != "delete":
            text = change.comment.encode() + b"\0"
            element += _attr(NFTA_SET_ELEM_USERDATA, bytes([UDATA_SET_ELEM_COMMENT, len(text)]) + text)
        attrs = _attr(NFTA_SET_ELEM_LIST_TABLE, change.table.encode() + b"\0")
        attrs += _attr(NFTA_SET_ELEM_LIST_SET, change.name.encode() + b"\0")
        attrs += _attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, _attr(NFTA_LIST_ELEM | NLA_F_NESTED, element))
        if change.op == "delete":
            messages.append((NFT_MSG_DELSETELEM, 0, change.family, attrs))
        else:
            flags = NLM_F_CREATE | (NLM_F_EXCL if change.op == "create" else 0)
            messages.append((NFT_MSG_NEWSETELEM, flags, change.family, attrs))
    if messages:
        _netlink.transaction(messages, what)


def set_exists(family: str, table: str, name: str) -> bool:
    """Does set or map `name` exist (without listing anything)?"""
    attrs = _attr(NFTA_SET_TABLE, table.encode() + b"\0") + _attr(NFTA_SET_NAME, name.encode() + b"\0")
    return _netlink.request(NFT_MSG_GETSET, family, attrs, f"get set {family} {table} {name}") is not None


def rule_comment(family: str, table: str, chain: str, handle: int) -> str | None:
    """The comment of rule `handle` in `chain`, "" when it has none, None when there is no such
    rule (or chain, or table). Its cost does not depend on the number of rules."""
    attrs = _attr(NFTA_RULE_TABLE, table.encode() + b"\0") + _attr(NFTA_RULE_CHAIN, chain.encode() + b"\0")
    attrs += _attr(NFTA_RULE_HANDLE, struct.pack("!Q", handle))
    reply = _netlink.request(NFT_MSG_GETRULE, family, attrs, f"get rule {family} {table} {chain} handle {handle}")
    return None if reply is None else _comment(_attrs(reply).get(NFTA_RULE_USERDATA, b""))
