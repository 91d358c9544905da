"""ADD and DEL of the calico chain (calico + calico-ipam), IPv4 and dual-stack, on the
embedded store (and with --etcd on Debian's etcd, started on this namespace's loopback):
ours as processes (a launcher per call, no agent: "standalone"), and warm in one process
(as the resident agent runs them: calico-ipam is our launcher in CNI_PATH, so it runs in
calico's process and pass), each command's wall-clock and CPU milliseconds (user + system,
the plugin processes included), which a busy machine disturbs less. There is no Go calico
plugin on the machine to compare with: run it on two installations to compare them.

    scripts/in-netns.sh .venv/bin/python bench/calico.py [N [PODS]] [--etcd]

With PODS, that many pods (dual-stack, each in its namespace) are on the node first,
as on a busy host: their veths, link-local addresses and /32 routes are what every
lookup, dump and route check of the measured calls has to get past.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from run import running_etcd  # bench/ is the script's directory, so on sys.path

from pycni import launcher, skel

NETNS = "benchcal1"


STATE = tempfile.mkdtemp(prefix="pycni-bench-calico-")  # one datastore: addresses are unique on the node


def conf(dual: bool, tmp: str = STATE, etcd: str = "") -> bytes:
    net = {
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "calico",
        "nodename": "bench-node",
        "nodename_file_optional": True,
        "mtu": 1450,
        "log_level": "info",
        "log_file_path": os.path.join(tmp, "cni.log"),
        "datastore_path": os.path.join(tmp, "calico.db"),
        "journal_dir": os.path.join(tmp, "journal"),
        "ipam_lock_file": os.path.join(tmp, "ipam.lock"),
        "mtu_file": os.path.join(tmp, "mtu"),
        "ipam": {"type": "calico-ipam", "assign_ipv6": "true" if dual else "false"},
    }
    if etcd:
        net.update(datastore_type="etcdv3", etcd_endpoints=etcd)
    return json.dumps(net).encode()


def env(command: str, i: int, path: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"benchc{i:06d}",
        "CNI_NETNS": f"/run/netns/{NETNS}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": path,
        "CNI_ARGS": f"K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod{i};K8S_POD_INFRA_CONTAINER_ID=x",
        "CALICO_IPV4POOL_CIDR": "10.243.0.0/16",
        "CALICO_IPV6POOL_CIDR": "fd00:243::/48",
        "PYCNI_LOG_FILE": "/dev/null",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }


def cpu() -> float:
    """CPU seconds of this process and of the (waited-for) plugin processes."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


Call = Callable[[str, int], None]


def timed(call: Call, first: int, n: int) -> dict[str, tuple[float, float]]:
    """ADD then DEL of attachments first..first+n-1: per command, (wall ms, CPU ms) each."""
    spent = {"ADD": [0.0, 0.0], "DEL": [0.0, 0.0]}
    for i in range(first, first + n):
        for command in ("ADD", "DEL"):
            wall, used = time.perf_counter(), cpu()
            call(command, i)
            spent[command][0] += time.perf_counter() - wall
            spent[command][1] += cpu() - used
    return {command: (w * 1000 / n, c * 1000 / n) for command, (w, c) in spent.items()}


def as_process(path: str, stdin: bytes) -> Call:
    def call(command: str, i: int) -> None:
        subprocess.run([f"{path}/calico"], input=stdin, env=env(command, i, path), capture_output=True, check=True)

    return call


def in_one_process(path: str, stdin: bytes) -> Call:
    def call(command: str, i: int) -> None:
        out = skel.dispatch("calico", env(command, i, path), stdin)
        assert out.code == 0, out.stdout

    return call


def crowd(path: str, pods: int) -> Callable[[], None]:
    """`pods` dual-stack pods on the node (made in this process); returns their removal."""
    stdin = conf(True)

    def each(command: str) -> None:
        for i in range(pods):
            call = dict(env(command, 900000 + i, path), CNI_NETNS=f"/run/netns/benchpod{i}")
            out = skel.dispatch("calico", call, stdin)
            assert out.code == 0, out.stdout

    for i in range(pods):
        subprocess.run(["ip", "netns", "add", f"benchpod{i}"], check=True)
    each("ADD")

    def remove() -> None:
        each("DEL")
        for i in range(pods):
            subprocess.run(["ip", "netns", "del", f"benchpod{i}"], check=False)

    return remove


def main(n: int, pods: int, stores: list[str]) -> None:
    ours = tempfile.mkdtemp()
    launcher.install(ours)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    remove_crowd = crowd(ours, pods) if pods else None
    rows = []
    try:
        for store in stores:
            context = running_etcd(Path(STATE)) if store == "etcd" else contextlib.nullcontext("")
            with context as endpoint:
                for dual in (False, True):
                    stdin = conf(dual, etcd=endpoint)
                    for variant, make in (("processes", as_process), ("warm, one process", in_one_process)):
                        call = make(ours, stdin)
                        timed(call, 0, 3)  # imports, the pool and the block, the first connection
                        rows.append((store, variant, "dual-stack" if dual else "IPv4", timed(call, 3, n)))
    finally:
        if remove_crowd is not None:
            remove_crowd()
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
    print(f"calico + calico-ipam ADD and DEL, {n} times, {pods} pods on the node, ms each (wall, CPU):")
    print(f"  {'store':9s} {'variant':18s} {'family':11s} {'ADD wall':>9s} {'ADD CPU':>8s} {'DEL wall':>9s} {'DEL CPU':>8s}")
    for store, variant, family, spent in rows:
        (add_wall, add_cpu), (del_wall, del_cpu) = spent["ADD"], spent["DEL"]
        print(f"  {store:9s} {variant:18s} {family:11s} {add_wall:9.1f} {add_cpu:8.1f} {del_wall:9.1f} {del_cpu:8.1f}")


if __name__ == "__main__":
    numbers = [int(a) for a in sys.argv[1:] if not a.startswith("--")]
    main(
        numbers[0] if numbers else 30,
        numbers[1] if len(numbers) > 1 else 0,
        ["embedded", *(["etcd"] if "--etcd" in sys.argv else [])],
    )
