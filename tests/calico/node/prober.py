"""A pod's traffic agent for policy tests, run inside the pod's network namespace.

    python prober.py TCP_PORTS UDP_PORTS          e.g. "80,81,5432" "53,80"

It serves TCP and UDP echo on the given ports, prints "ready", then reads probe batches from
stdin, one JSON list per line: [{"id": .., "proto": "tcp"|"udp"|"icmp", "dst": ip, "port": n,
"timeout": s}, ...]. The probes of a batch run at once (a dropped one costs its timeout, not
more); the answer is one JSON line {id: true|false}. A "hold" probe opens a TCP connection kept
open and exchanging a line every 0.1 s; {"proto": "hold-check", "id": ..} answers whether it
is still flowing.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import threading
import time

HELD: dict[str, dict[str, float | bool]] = {}


def serve_tcp(port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=echo_stream, args=(conn,), daemon=True).start()


def echo_stream(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(120)
        try:
            while True:
                data = conn.recv(1024)
                if not data:
                    return
                conn.sendall(b"ok:" + data)
        except OSError:
            return


def serve_udp(port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("0.0.0.0", port))
    while True:
        data, peer = srv.recvfrom(2048)
        srv.sendto(b"ok:" + data, peer)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def icmp(dst: str, timeout: float) -> bool:
    ident = (os.getpid() ^ threading.get_ident() ^ int(time.monotonic() * 1e6)) & 0xFFFF
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
        header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
        body = b"pycni-policy-probe"
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + body), ident, 1) + body
        s.sendto(packet, (dst, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data, peer = s.recvfrom(2048)
            except OSError:
                return False
            ihl = (data[0] & 0x0F) * 4
            kind, _code, _sum, got_id, _seq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if kind == 0 and got_id == ident and peer[0] == dst:
                return True
    return False


def tcp(dst: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((dst, port), timeout=timeout) as s:
            s.sendall(b"ping")
            return s.recv(16).startswith(b"ok:")
    except OSError:
        return False


def udp(dst: str, port: int, timeout: float) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(b"ping", (dst, port))
            data, _ = s.recvfrom(64)
            return data.startswith(b"ok:")
        except OSError:
            return False


def hold(key: str, dst: str, port: int, timeout: float) -> bool:
    try:
        s = socket.create_connection((dst, port), timeout=timeout)
    except OSError:
        return False
    state: dict[str, float | bool] = {"last": time.monotonic(), "broken": False}
    HELD[key] = state

    def run() -> None:
        s.settimeout(2)
        try:
            while True:
                s.sendall(b"tick")
                if not s.recv(16).startswith(b"ok:"):
                    break
                state["last"] = time.monotonic()
                time.sleep(0.1)
        except OSError:
            pass
        state["broken"] = True

    threading.Thread(target=run, daemon=True).start()
    return True


def held(key: str) -> bool:
    state = HELD.get(key)
    return bool(state) and not state["broken"] and time.monotonic() - float(state["last"]) < 1.0  # type: ignore[index]


def probe(p: dict[str, object]) -> bool:
    proto, timeout = p["proto"], float(p.get("timeout", 1.0))  # type: ignore[arg-type]
    if proto == "tcp":
        return tcp(str(p["dst"]), int(p["port"]), timeout)  # type: ignore[call-overload]
    if proto == "udp":
        return udp(str(p["dst"]), int(p["port"]), timeout)  # type: ignore[call-overload]
    if proto == "icmp":
        return icmp(str(p["dst"]), timeout)
    if proto == "hold":
        return hold(str(p["id"]), str(p["dst"]), int(p["port"]), timeout)  # type: ignore[call-overload]
    if proto == "hold-check":
        return held(str(p["id"]))
    raise ValueError(f"unknown probe {proto!r}")


def main() -> None:
    for port in (int(x) for x in sys.argv[1].split(",") if x):
        threading.Thread(target=serve_tcp, args=(port,), daemon=True).start()
    for port in (int(x) for x in sys.argv[2].split(",") if x):
        threading.Thread(target=serve_udp, args=(port,), daemon=True).start()
    time.sleep(0.2)
    print("ready", flush=True)
    for line in sys.stdin:
        batch = json.loads(line)
        results: dict[str, bool] = {}
        threads = []
        for p in batch:

            def work(p: dict[str, object] = p, results: dict[str, bool] = results) -> None:
                results[str(p["id"])] = probe(p)

            t = threading.Thread(target=work)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main()
