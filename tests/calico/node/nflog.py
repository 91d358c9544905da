"""Print the packets an NFLOG group receives, one line each: "<prefix> <src> <dst>".

    python nflog.py GROUP        (in the network namespace whose nftables log to GROUP)

It prints "ready" once bound. The nfnetlink_log protocol is small: a config message binds the
group, then each packet arrives as NFULNL_MSG_PACKET with its prefix and payload attributes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
NLM_F_REQUEST, NLM_F_ACK = 1, 4


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _config(sock: socket.socket, group: int, attrs: bytes, seq: int) -> None:
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(group)) + attrs
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, 0)
    sock.send(header + body)
    sock.recv(4096)  # the ack


def main() -> None:
    group = int(sys.argv[1])
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    _config(sock, group, _attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND)), 1)
    _config(sock, group, _attr(NFULA_CFG_MODE, struct.pack("!IBB", 128, NFULNL_COPY_PACKET, 0)), 2)
    print("ready", flush=True)
    while True:
        data = sock.recv(65536)
        while len(data) >= 16:
            length, kind = struct.unpack_from("=IH", data)
            msg, data = data[:length], data[(length + 3) & ~3 :]
            if kind != (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                continue
            attrs, pos = {}, 20
            while pos + 4 <= len(msg):
                alen, akind = struct.unpack_from("=HH", msg, pos)
                if alen < 4:
                    break
                attrs[akind & 0x7FFF] = msg[pos + 4 : pos + alen]
                pos += (alen + 3) & ~3
            prefix = attrs.get(NFULA_PREFIX, b"").rstrip(b"\0").decode(errors="replace")
            payload = attrs.get(NFULA_PAYLOAD, b"")
            src = dst = "-"
            if len(payload) >= 20 and payload[0] >> 4 == 4:
                src, dst = str(ipaddress.IPv4Address(payload[12:16])), str(ipaddress.IPv4Address(payload[16:20]))
            print(f"{prefix.strip()} {src} {dst}", flush=True)


if __name__ == "__main__":
    main()
