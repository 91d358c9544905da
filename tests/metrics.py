"""Scraping the daemons' Prometheus metrics in tests: a free port, the samples of a scrape
(parsed by prometheus-client's own parser), and the TCP ports a process listens on."""

from __future__ import annotations

import os
import re
import secrets
import socket
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

# Holds a port (all addresses), then runs argv with the port put for `{port}` in its arguments
# and environment; prints the port, passes on the exit code and stderr.
_HOLD_A_PORT = """
import os, socket, subprocess, sys
held = socket.socket()
held.bind(("0.0.0.0", 0))
held.listen()
port = str(held.getsockname()[1])
argv = [a.replace("{port}", port) for a in sys.argv[1:]]
env = {k: v.replace("{port}", port) for k, v in os.environ.items()}
out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=90)
sys.stderr.write(out.stderr)
print(port)
sys.exit(out.returncode)
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    """A port nothing on this namespace's loopback listens on now (random: tests run side by side)."""
    while True:
        port = 20000 + secrets.randbelow(30000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value for family in text_string_to_metric_families(text) for s in family.samples
    }


def scrape(address: str, run: Callable[[str], str] | None = None) -> Samples:
    """GET http://ADDRESS/metrics here, or through `run` (a Python snippet run in another
    namespace, printing the body)."""
    url = f"http://{address}/metrics"
    if run is None:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return parse(resp.read().decode())
    return parse(run(f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"))


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def listening_ports(pid: int) -> set[int]:
    """TCP ports process `pid` listens on (any of its sockets, in its network namespace)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if m := re.fullmatch(r"socket:\[(\d+)\]", target):
            inodes.add(m.group(1))
    ports = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def holding_a_port(argv: list[str]) -> list[str]:
    """A command line running `argv` while a port is taken: `{port}` in argv and the
    environment is that port; the command prints it."""
    return ["python3", "-c", _HOLD_A_PORT, *argv]
