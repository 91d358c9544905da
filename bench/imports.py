"""What a plugin process pays before it does any work, when there is no agent (issue 18).

    scripts/in-netns.sh .venv/bin/python bench/imports.py [--runs 15] [--rounds 5]

1. Imports: for each plugin type, --runs fresh interpreters started as a launcher starts
   them (the real interpreter with `-IS`, this installation's directories first on sys.path),
   each importing what a cold call of that type imports up front: `pycni.agent.client`,
   `pycni.skel` and the plugin's module. pyroute2 (what `pycni.net.netlink` loads, at a
   call's first netlink request) is measured on top of that, once. Figures: the median wall
   time of the whole process less that of a bare interpreter, the median of `-X importtime`'s
   totals (the top-level imports' cumulative times), and how many modules end up loaded.
2. The cold chain: ADD and DEL of bridge + host-local + portmap + bandwidth through the
   runtime, every plugin a process of its own (PYCNI_AGENT=off; bridge runs host-local in
   its own process), and the same with the Go reference plugins, taking turns, --rounds
   times: the medians of wall time and of the CPU time of the processes the chain runs
   (`bench/run.py --only chain` has wall time only; on a machine shared with other work,
   CPU time is the steadier figure).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lab
import run as bench_run

from pycni import launcher, registry
from pycni.runtime import CNIConfig, RuntimeConf
from pycni.spec.config import NetworkConfigList

PLUGINS = ("bridge", "host-local", "portmap", "bandwidth", "loopback", "ptp", "static", "tuning", "firewall")
COLD_CALL = "import pycni.agent.client, pycni.skel, {module}"
PYROUTE2 = "; from pycni.net import netlink; netlink._load_pyroute2()"


def _prelude() -> str:
    return f"import sys; sys.path[:0] = {launcher.site_paths()!r}; "


def one_start(code: str) -> tuple[float, float, int]:
    """(wall ms, -X importtime total ms, modules loaded) of one fresh `-IS` interpreter running `code`."""
    argv = [launcher.interpreter(), "-IS", "-X", "importtime", "-c", _prelude() + code + "; print(len(sys.modules))"]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    wall = (time.perf_counter() - started) * 1000
    total = 0
    for line in proc.stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        # A top-level import is one whose name is not indented (beyond the one space after "|").
        if len(fields) == 3 and fields[1].strip().isdigit() and not fields[2].startswith("  "):
            total += int(fields[1])
    return wall, total / 1000, int(proc.stdout.split()[-1])


def measure(code: str, runs: int) -> dict[str, float]:
    samples = [one_start(code) for _ in range(runs)]
    return {
        "wall": statistics.median(s[0] for s in samples),
        "importtime": statistics.median(s[1] for s in samples),
        "modules": samples[-1][2],
    }


def imports(runs: int) -> list[tuple[str, dict[str, float]]]:
    modules = registry.discover()
    rows = [("bare interpreter (`-IS`)", measure("pass", runs))]
    rows.append(("pycni.agent.client + pycni.skel (every call)", measure("import pycni.agent.client, pycni.skel", runs)))
    rows.append(("pyroute2 as pycni.net.netlink loads it, alone", measure("import sys" + PYROUTE2, runs)))
    for plugin_type in PLUGINS:
        code = COLD_CALL.format(module=modules[plugin_type])
        rows.append((plugin_type, measure(code, runs)))
        if plugin_type in ("bridge", "bandwidth"):
            rows.append((f"{plugin_type} + pyroute2", measure(code + PYROUTE2, runs)))
    return rows


# A line put in place of each launcher's third (a comment, which `launcher.runs_here` does not
# read: bridge still runs host-local in its own process): at exit, the process's CPU time and
# how many modules it loaded, appended to the file PYCNI_BENCH_PROCESSES names.
PROCESS_PROBE = (
    "import sys, atexit, posix, resource; atexit.register(lambda: open(posix.environ[b'PYCNI_BENCH_PROCESSES'], 'a')"
    ".write('{type} %s %.1f %d\\n' % (posix.environ[b'CNI_COMMAND'].decode(), (lambda u: (u.ru_utime + u.ru_stime) * 1000)"
    "(resource.getrusage(resource.RUSAGE_SELF)), len(sys.modules))))"
)


def _probed_launchers(bin_dir: Path) -> None:
    launcher.install(str(bin_dir))
    for path in bin_dir.iterdir():
        lines = path.read_text().split("\n")
        lines[2] = PROCESS_PROBE.format(type=path.name)
        path.write_text("\n".join(lines))


def _cpu_ms() -> float:
    """CPU time (user + system) of every child process waited for so far: the plugins and
    whatever they run (the reference's iptables), whichever else shares the machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


def cold_chain(rounds: int) -> tuple[dict[str, dict[str, float]], dict[str, tuple[float, int]]]:
    """Per variant (ours without the agent, the Go reference plugins), the median ADD, DEL and
    ADD + DEL of the bridge chain in wall time, and the median CPU time of the processes an
    ADD + DEL runs (steadier than wall time on a machine shared with other work). The
    variants take turns within each round. And for each of our plugin processes (type and
    command), the median of its CPU time (interpreter start-up included) and its modules."""
    run_dir = Path(tempfile.mkdtemp(prefix="pycni-imports-"))
    bridges = {"ours": "pcbimpo", "reference": "pcbimpr"}
    try:
        bin_dir = run_dir / "bin"
        _probed_launchers(bin_dir)
        processes = run_dir / "processes"
        chains = {}
        for octet, (variant, directory) in enumerate((("ours", bin_dir), ("reference", lab.REFERENCE_DIR))):
            conf = bench_run.bridge_chain(bridges[variant], bridges[variant], f"10.{98 + octet}.0.0/16", run_dir / "ipam")
            env = {
                **os.environ,
                "PYCNI_AGENT": "off",
                "PYCNI_LOG_FILE": str(run_dir / "plugins.log"),
                "PYCNI_BENCH_PROCESSES": str(processes),
            }
            cni = CNIConfig([str(directory)], cache_dir=str(run_dir / "cache" / variant), base_env=env)
            chains[variant] = (cni, NetworkConfigList.from_bytes(json.dumps(conf).encode()))
        samples: dict[str, dict[str, list[float]]] = {v: {"add": [], "del": [], "total": [], "cpu": []} for v in chains}
        for number in range(bench_run.WARMUP + rounds):
            for variant, (cni, net) in chains.items():
                ns = lab.make_netns(run_dir / "ns" / f"{variant}{number}")
                caps = {"portMappings": [{"hostPort": 31000 + number, "containerPort": 80, "protocol": "tcp"}]}
                rt = RuntimeConf(
                    container_id=f"imports-{number}",
                    netns=str(ns),
                    ifname="eth0",
                    capability_args={**caps, "bandwidth": bench_run.BANDWIDTH},
                )
                try:
                    cpu, started = _cpu_ms(), time.perf_counter()
                    cni.add_network_list(net, rt)
                    added = time.perf_counter()
                    cni.del_network_list(net, rt)
                    deleted, cpu = time.perf_counter(), _cpu_ms() - cpu
                finally:
                    lab.drop_netns(ns)
                if number < bench_run.WARMUP:
                    processes.unlink(missing_ok=True)
                else:
                    row = samples[variant]
                    row["add"].append((added - started) * 1000)
                    row["del"].append((deleted - added) * 1000)
                    row["total"].append((deleted - started) * 1000)
                    row["cpu"].append(cpu)
        per_process: dict[str, list[tuple[float, int]]] = {}
        for line in processes.read_text().splitlines():
            plugin_type, command, cpu, modules = line.split()
            per_process.setdefault(f"{plugin_type} {command}", []).append((float(cpu), int(modules)))
        each = {k: (statistics.median(c for c, _ in v), max(m for _, m in v)) for k, v in sorted(per_process.items())}
        return {v: {k: statistics.median(x) for k, x in row.items()} for v, row in samples.items()}, each
    finally:
        for bridge in bridges.values():
            subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)
        lab.remove_tree(run_dir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bare = None
    print(f"Imports of a cold call, median of {args.runs} fresh `-IS` interpreters:\n")
    print("| what a launcher imports | wall less a bare interpreter (ms) | -X importtime total (ms) | modules |")
    print("|---|---:|---:|---:|")
    for name, row in imports(args.runs):
        if bare is None:
            bare = row["wall"]
            print(f"| {name} | {row['wall']:.1f} (itself) | {row['importtime']:.1f} | {row['modules']:.0f} |")
            continue
        print(f"| {name} | {row['wall'] - bare:.1f} | {row['importtime']:.1f} | {row['modules']:.0f} |")
    chain, each = cold_chain(args.rounds)
    ours, ref = chain["ours"], chain["reference"]
    print(f"\nBridge chain, median of {args.rounds} rounds (after {bench_run.WARMUP} warm-up), ours without the agent:\n")
    print("| variant | ADD (ms) | DEL (ms) | ADD + DEL (ms) | CPU of its processes (ms) |")
    print("|---|---:|---:|---:|---:|")
    for name, row in (("Go reference plugins", ref), ("pycni without the agent", ours)):
        print(f"| {name} | {row['add']:.1f} | {row['del']:.1f} | {row['total']:.1f} | {row['cpu']:.1f} |")
    print(f"\nratio: wall {ours['total'] / ref['total']:.2f} x, CPU {ours['cpu'] / ref['cpu']:.2f} x")
    print("\nOur plugin processes of the chain (medians):\n")
    print("| process | CPU (ms), interpreter start-up included | modules loaded |")
    print("|---|---:|---:|")
    for name, (cpu, modules) in each.items():
        print(f"| {name} | {cpu:.1f} | {modules} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
