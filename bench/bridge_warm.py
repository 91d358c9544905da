"""ADD+DEL of bridge + host-local with warm imports, in one process (as a resident agent runs
them), IPAM delegated in-process: what the plugin code itself costs per attachment.

    scripts/isolated.sh .venv/bin/python bench/bridge_warm.py [N]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

from pycni import skel
from pycni.runtime import delegate
from pycni.spec.errors import CNIError
from pycni.spec.result import Result


def _in_process(command: str):  # type: ignore[no-untyped-def]
    def run(call, plugin_type, stdin=None):  # type: ignore[no-untyped-def]
        env = dict(call.env, CNI_COMMAND=command)
        out = skel.dispatch(plugin_type, env, call.stdin if stdin is None else stdin)
        if out.code:
            err = json.loads(out.stdout)
            raise CNIError(err["code"], err["msg"], err.get("details", ""))
        return Result.from_dict(json.loads(out.stdout)) if command == "ADD" else None

    return run


def main(n: int) -> None:
    delegate.add, delegate.delete = _in_process("ADD"), _in_process("DEL")  # type: ignore[assignment]
    subprocess.run(["ip", "netns", "add", "bench1"], check=True)
    data = tempfile.mkdtemp()
    conf = {
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": "bridge",
        "bridge": "benchbr0",
        "isGateway": True,
        "ipMasq": True,
        "ipam": {"type": "host-local", "subnet": "10.240.0.0/16", "dataDir": data},
    }
    stdin = json.dumps(conf).encode()
    env = {"CNI_CONTAINERID": "c", "CNI_NETNS": "/run/netns/bench1", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    try:
        for warm in (True, False):
            start = time.perf_counter()
            for i in range(3 if warm else n):
                for command in ("ADD", "DEL"):
                    out = skel.dispatch("bridge", dict(env, CNI_COMMAND=command, CNI_CONTAINERID=f"c{i}"), stdin)
                    assert out.code == 0, out.stdout
            if not warm:
                print(f"bridge + host-local ADD+DEL, warm, in-process: {(time.perf_counter() - start) * 1000 / n:.1f} ms")
    finally:
        subprocess.run(["ip", "netns", "del", "bench1"], check=False)
        subprocess.run(["ip", "link", "del", "benchbr0"], check=False)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
