"""ADD+DEL of macvlan + host-local and of host-device (no IPAM): the Go plugins and ours as
processes, side by side, and ours warm in one process (as a resident agent runs them).

    scripts/in-netns.sh .venv/bin/python bench/underlay.py [N]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

from bridge import NETNS, in_process, processes  # bench/ is on sys.path when this runs

from pycni import launcher

MASTER, DEVICE = "benchm0", "benchd0"


def macvlan_conf(subnet: str) -> bytes:
    ipam = {"type": "host-local", "subnet": subnet, "dataDir": tempfile.mkdtemp()}
    return json.dumps({"cniVersion": "1.0.0", "name": "bench", "type": "macvlan", "master": MASTER, "ipam": ipam}).encode()


DEVICE_CONF = json.dumps({"cniVersion": "1.0.0", "name": "benchhd", "type": "host-device", "device": DEVICE}).encode()


def main(n: int) -> None:
    ours = tempfile.mkdtemp()
    launcher.install(ours)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    for name in (MASTER, DEVICE):
        subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
        subprocess.run(["ip", "link", "set", name, "up"], check=True)
    try:
        for plugin, confs in (
            ("macvlan", [macvlan_conf(f"10.24{i}.0.0/16") for i in range(3)]),
            ("host-device", [DEVICE_CONF] * 3),
        ):
            go = processes("/usr/lib/cni", confs[0], n, plugin)
            py = processes(ours, confs[1], n, plugin)
            warm = in_process(ours, confs[2], n, plugin)
            print(f"{plugin} ADD+DEL, {n} times, ms each:")
            print(f"  Go plugins, processes:        {go:6.1f}")
            print(f"  pycni, processes:             {py:6.1f}  ({py / go:.1f}x Go)")
            print(f"  pycni, warm, one process:     {warm:6.1f}  ({warm / go:.2f}x Go)")
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
        for name in (MASTER, DEVICE):
            subprocess.run(["ip", "link", "del", name], check=False, capture_output=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
