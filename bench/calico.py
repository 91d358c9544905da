"""ADD+DEL of the calico chain (calico + calico-ipam, embedded store), IPv4 and dual-stack:
ours as processes, and warm in one process (as a resident agent runs them: calico-ipam is
our launcher in CNI_PATH, so it runs in calico's process and pass), in wall-clock and CPU
milliseconds (user + system, the plugin processes included), which a busy machine disturbs
less. There is no Go calico plugin on the machine to compare with.

    scripts/in-netns.sh .venv/bin/python bench/calico.py [N [PODS]]

With PODS, that many pods (dual-stack, each in its namespace) are on the node first,
as on a busy host: their veths, link-local addresses and /32 routes are what every
lookup, dump and route check of the measured calls has to get past.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial

from bridge import in_process, processes  # bench/ is the script's directory, so on sys.path

from pycni import launcher, skel

NETNS = "benchcal1"


STATE = tempfile.mkdtemp(prefix="pycni-bench-calico-")  # one datastore: addresses are unique on the node


def conf(dual: bool, tmp: str = STATE) -> bytes:
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


def measured(fn: Callable[[], float], calls: int) -> tuple[float, float]:
    """(wall ms per ADD+DEL as `fn` reports it, CPU ms per ADD+DEL over `calls` of them)."""
    before = cpu()
    wall = fn()
    return wall, (cpu() - before) * 1000 / calls


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


def main(n: int, pods: int) -> None:
    ours = tempfile.mkdtemp()
    launcher.install(ours)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    remove_crowd = crowd(ours, pods) if pods else None
    try:
        rows = []
        for dual in (False, True):
            label = "dual-stack" if dual else "IPv4"
            stdin = conf(dual)
            processes(ours, stdin, 1, "calico", env)  # the first call creates the pool and claims a block
            rows.append((f"processes, {label}", *measured(partial(processes, ours, stdin, n, "calico", env), n)))
            in_process(ours, stdin, 1, "calico", env)  # imports; in_process warms up 3 more times, counted in CPU
            rows.append((f"warm, one process, {label}", *measured(partial(in_process, ours, stdin, n, "calico", env), n + 3)))
        print(f"calico + calico-ipam (embedded store) ADD+DEL, {n} times, {pods} pods on the node, ms each:")
        print(f"  {'':30s} {'wall':>7s} {'CPU':>7s}")
        for label, wall, cpu_ms in rows:
            print(f"  {label + ':':30s} {wall:7.1f} {cpu_ms:7.1f}")
    finally:
        if remove_crowd is not None:
            remove_crowd()
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
