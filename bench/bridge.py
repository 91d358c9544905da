"""ADD+DEL of bridge + host-local: the Go plugins and ours as processes, side by side, and
ours with warm imports in one process (as a resident agent runs them: the IPAM plugin found
in CNI_PATH is our launcher, so it is delegated to in-process): what the plugin code itself
costs per attachment.

    scripts/in-netns.sh .venv/bin/python bench/bridge.py [N]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from pycni import launcher, skel

NETNS = "bench1"


def conf(bridge: str, subnet: str) -> bytes:
    data = tempfile.mkdtemp()
    ipam = {"type": "host-local", "subnet": subnet, "dataDir": data}
    net = {"cniVersion": "1.0.0", "name": "bench", "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True}
    return json.dumps(dict(net, ipam=ipam)).encode()


def env(command: str, i: int, path: str) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"c{i}",
        "CNI_NETNS": f"/run/netns/{NETNS}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": path,
        "PYCNI_LOG_FILE": "/dev/null",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",  # the Go plugins run iptables
    }


Env = Callable[[str, int, str], dict[str, str]]


def processes(path: str, stdin: bytes, n: int, plugin: str = "bridge", make_env: Env = env) -> float:
    start = time.perf_counter()
    for i in range(n):
        for command in ("ADD", "DEL"):
            subprocess.run([f"{path}/{plugin}"], input=stdin, env=make_env(command, i, path), capture_output=True, check=True)
    return (time.perf_counter() - start) * 1000 / n


def in_process(path: str, stdin: bytes, n: int, plugin: str = "bridge", make_env: Env = env) -> float:
    """ADD+DEL through `skel.dispatch`, with our launchers in CNI_PATH (`path`)."""
    for warm_up in (True, False):
        start = time.perf_counter()
        for i in range(3 if warm_up else n):
            for command in ("ADD", "DEL"):
                out = skel.dispatch(plugin, make_env(command, i, path), stdin)
                assert out.code == 0, out.stdout
    return (time.perf_counter() - start) * 1000 / n


def main(n: int) -> None:
    ours = tempfile.mkdtemp()
    launcher.install(ours)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        go = processes("/usr/lib/cni", conf("benchbr1", "10.240.0.0/16"), n)
        py = processes(ours, conf("benchbr2", "10.241.0.0/16"), n)
        warm = in_process(ours, conf("benchbr3", "10.242.0.0/16"), n)
        print(f"bridge + host-local ADD+DEL, {n} times, ms each:")
        print(f"  Go plugins, processes:        {go:6.1f}")
        print(f"  pycni, processes:             {py:6.1f}  ({py / go:.1f}x Go)")
        print(f"  pycni, warm, one process:     {warm:6.1f}  ({warm / go:.2f}x Go)")
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
        for bridge in ("benchbr1", "benchbr2", "benchbr3"):
            subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
