"""portmap: does the cost of ADD, CHECK and DEL grow with the number of containers on the host?

Runs the plugin in-process (warm imports, as the resident agent runs it) through
`skel.dispatch`, in a private namespace standing in for the host:

    scripts/in-netns.sh .venv/bin/python bench/portmap_scaling.py [--attachments 500] [--repeat 40]
        [--backend nftables|iptables|both]

For each backend: the median cost of ADD, CHECK and DEL of one more container
(two TCP mappings) on a host without mappings (the container is its network's
first and last: ADD creates the network's chains, DEL removes them), with one
other attachment, and with N others; and the ratios. Not part of `make test`.
To measure another version of pycni side by side, export its tree and put its `src`
first: `git archive <commit> src | tar -x -C /tmp/old`, then PYTHONPATH=/tmp/old/src.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from pycni import skel
from pycni.net import nft

BRIDGE = "pmbench0"
SUBNET = ipaddress.ip_network("10.213.0.0/16")
NETWORK = "pmbench"
FIRST_PORT = 20000


def _stand_in_host() -> bool:
    """The same guard as the test suite: never on the machine's own network namespace."""
    return os.environ.get("PYCNI_TEST_HOST_NETNS_INODE", "") == str(os.stat("/proc/self/ns/net").st_ino)


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class NftClock:
    """Time spent in nftables calls (transactions, lookups, listings) during one plugin call."""

    spent = 0.0

    @classmethod
    def wrap(cls) -> None:
        for name in ("run", "run_text", "lookup", "set_exists", "list_ruleset", "list_objects"):
            original = getattr(nft, name, None)
            if original is None:
                continue  # an older pycni (the script also measures one: PYTHONPATH=<its src>)

            def timed(*args: Any, _original: Any = original) -> Any:
                start = time.perf_counter()
                try:
                    return _original(*args)
                finally:
                    cls.spent += time.perf_counter() - start

            setattr(nft, name, timed)


class Bench:
    def __init__(self, backend: str, netns: str) -> None:
        self.backend = backend
        self.netns = netns
        self.next_port = FIRST_PORT
        self.nft_ms = 0.0

    def conf(self, index: int, ports: list[int] | None) -> bytes:
        address = SUBNET.network_address + 2 + index
        prev = {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": BRIDGE}, {"name": f"veth{index}"}, {"name": "eth0", "sandbox": self.netns}],
            "ips": [{"address": f"{address}/{SUBNET.prefixlen}", "gateway": str(SUBNET.network_address + 1), "interface": 2}],
        }
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": "portmap",
            "backend": self.backend,
            "prevResult": prev,
        }
        if ports is not None:
            mappings = [{"hostPort": p, "containerPort": 80 + i, "protocol": "tcp"} for i, p in enumerate(ports)]
            conf["runtimeConfig"] = {"portMappings": mappings}
        return json.dumps(conf).encode()

    def ports(self) -> list[int]:
        self.next_port += 2
        return [self.next_port - 2, self.next_port - 1]

    def call(self, command: str, index: int, stdin: bytes) -> float:
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"bench{index}", "CNI_NETNS": self.netns, "CNI_IFNAME": "eth0"}
        NftClock.spent = 0.0
        start = time.perf_counter()
        out = skel.dispatch("portmap", env, stdin)
        elapsed = (time.perf_counter() - start) * 1000
        if out.code != 0:
            raise SystemExit(f"portmap {command} bench{index} failed: {out.stdout.decode()}")
        self.nft_ms = NftClock.spent * 1000
        return elapsed

    def cycle(self, repeat: int, first_index: int) -> dict[str, float]:
        """ADD, CHECK, DEL (with its mappings) and ADD + DEL without mappings, `repeat` times: medians."""
        ops = ("ADD", "  of which nftables", "CHECK", "DEL", "DEL (no portMappings)")
        times: dict[str, list[float]] = {op: [] for op in ops}
        for i in range(repeat):
            index = first_index + i
            stdin = self.conf(index, self.ports())
            times["ADD"].append(self.call("ADD", index, stdin))
            times["  of which nftables"].append(self.nft_ms)
            times["CHECK"].append(self.call("CHECK", index, stdin))
            times["DEL"].append(self.call("DEL", index, stdin))
            self.call("ADD", index, stdin)
            times["DEL (no portMappings)"].append(self.call("DEL", index, self.conf(index, None)))
        return {op: statistics.median(values) for op, values in times.items()}

    def fill(self, first: int, last: int) -> float:
        start = time.perf_counter()
        for index in range(first, last):
            self.call("ADD", index, self.conf(index, self.ports()))
        return (time.perf_counter() - start) * 1000 / max(last - first, 1)

    def run(self, attachments: int, repeat: int) -> None:
        self.cycle(3, 100_000)  # warm up: imports, caches
        columns = {"empty host": self.cycle(repeat, 100_100)}  # the first of its network: creates its chains
        self.fill(0, 1)
        columns["1 other"] = self.cycle(repeat, 200_000)
        fill = self.fill(1, attachments)
        columns[f"{attachments} others"] = loaded = self.cycle(repeat, 300_000)
        print(f"\nportmap, {self.backend} backend: median ms per call, 2 TCP mappings per container ({repeat} runs)")
        print(f"{'':24}" + "".join(f"{name:>14}" for name in columns) + f"{'ratio to 1':>12}{'to empty':>10}")
        for op in loaded:
            if not loaded[op]:
                continue  # no nftables calls (the iptables backend)
            cells = "".join(f"{column[op]:14.2f}" for column in columns.values())
            ratio_one, ratio_empty = loaded[op] / columns["1 other"][op], loaded[op] / columns["empty host"][op]
            print(f"{op:24}{cells}{ratio_one:12.2f}{ratio_empty:10.2f}")
        print(f"(filling the host: {fill:.2f} ms per ADD on average)")
        for index in range(attachments):
            self.call("DEL", index, self.conf(index, None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attachments", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--backend", choices=("nftables", "iptables", "both"), default="both")
    opts = parser.parse_args()
    if not _stand_in_host():
        sys.exit("run it in a private namespace: scripts/in-netns.sh .venv/bin/python bench/portmap_scaling.py")
    NftClock.wrap()
    netns = f"pmbench-{os.getpid()}"
    _sh("ip", "netns", "add", netns)
    _sh("ip", "link", "add", BRIDGE, "type", "bridge")
    _sh("ip", "addr", "add", f"{SUBNET.network_address + 1}/{SUBNET.prefixlen}", "dev", BRIDGE)
    _sh("ip", "link", "set", BRIDGE, "up")
    try:
        for backend in ("nftables", "iptables") if opts.backend == "both" else (opts.backend,):
            Bench(backend, f"/run/netns/{netns}").run(opts.attachments, opts.repeat)
    finally:
        subprocess.run(["ip", "link", "del", BRIDGE], check=False)
        subprocess.run(["ip", "netns", "del", netns], check=False)


if __name__ == "__main__":
    main()
