"""The `scale` scenario of bench/run.py: ADD and DEL on an empty host, then with
each of `--attachments` (500,2000 by default) attachments already there, through
the agent and standalone, for the bridge chain (and the reference's) and for the
calico chain; the agent's peak RSS at each size; how long filling the host took.

The background attachments are made through the agent by FILL_WORKERS threads at
once (the plugins are safe to run concurrently), which keeps 2,000 of them to a
few minutes. The reference fills one by one (its plugins are processes anyway)
and, being slow at scale (iptables), stops at REFERENCE_MAX attachments.

With `--profile DIR`, the agent runs under bench/profagent.py: every call it
serves leaves a cProfile file under DIR/<size>/ (see `summarize` to read them).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lab

FILL_WORKERS = 8
REFERENCE_MAX = 500
BRIDGE_PORTS = 1000  # a Linux bridge takes at most 1,024 ports (EXFULL): the rest go on a second network
CALICO_BLOCK_SIZE = "24"  # calico-ipam claims at most 20 blocks per node (Calico's default): /26 blocks end at 1,280 pods
IMPLS = ("reference", "ours", "calico")
CALICO_ARGS = [("K8S_POD_NAMESPACE", "bench"), ("K8S_POD_NAME", "pod-{key}"), ("K8S_POD_INFRA_CONTAINER_ID", "{key}")]


def fill(chains: list[Any], first: int, count: int, workers: int) -> None:
    """ADD `count` background attachments (f<first>..), `workers` at a time: the first
    BRIDGE_PORTS on the first chain's network, the rest on the second's."""
    numbers = iter(range(first, first + count))
    lock = threading.Lock()
    errors: list[Exception] = []

    def worker() -> None:
        while not errors:
            with lock:
                i = next(numbers, None)
            if i is None:
                return
            try:
                chains[min(i // BRIDGE_PORTS, len(chains) - 1)].add(f"f{i}", 40000 + i)
            except Exception as exc:  # noqa: BLE001  # any failure: raised below, in the phase's thread
                errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]  # daemons: ^C ends the run
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


@contextlib.contextmanager
def agent_for(run_dir: Path, wanted: bool, profile: str) -> Iterator[lab.Agent | None]:
    if not wanted:
        yield None
    elif profile:
        with lab.running_agent(run_dir, [str(lab.REPO / "bench" / "profagent.py"), profile]) as agent:
            yield agent
    else:
        with lab.running_agent(run_dir) as agent:
            yield agent


def _chains(run_dir: Path, impl: str, names: list[str]) -> tuple[dict[str, Any], list[Any]]:
    """The measured chains, and the chains the background attachments are made with."""
    import run  # bench/run.py: its Chain and the chains' configurations

    if impl != "calico":
        chains = run.chains_for(run_dir, names, "s", 111)
        return chains, [chains[names[0]], run.chains_for(run_dir, names[:1], "t", 121)[names[0]]]
    (run_dir / "calico").mkdir(exist_ok=True)
    (run_dir / "calico" / "kubeconfig").write_text("# not used: pycni has no Kubernetes API\n")
    (run_dir / "calico" / "nodename").write_text("bench-node")
    os.environ["CALICO_IPV4POOL_CIDR"] = run.CALICO_POOL  # the default pool calico-ipam creates
    os.environ["CALICO_IPV4POOL_BLOCK_SIZE"] = CALICO_BLOCK_SIZE
    conf = run.calico_chain(run_dir, "embedded", "")
    all_variants = lab.variants(run_dir)
    chains = {name: run.Chain(run_dir, all_variants[name], conf, CALICO_ARGS) for name in names}
    return chains, [chains[names[0]]]


def phase_scale(run_dir: Path, params: dict[str, Any], available: list[str]) -> dict[str, Any]:
    """One implementation (params["impl"]): rounds on the empty host, then fill to each
    size in turn and run the rounds again."""
    import run

    impl = params["impl"]
    usable, note = run.ours_usable(available, "calico" if impl == "calico" else "scale")
    if impl == "reference":
        note = ""
    elif not usable:
        return {"note": note, "variants": {}}
    names = ["reference"] if impl == "reference" else ["agent", "in-process"]
    sizes = [n for n in params["sizes"] if impl != "reference" or n <= REFERENCE_MAX]
    chains, fillers = _chains(run_dir, impl, names)
    profile = params.get("profile") or ""
    out: dict[str, Any] = {"variants": {name: {} for name in names}, "fill_seconds": {}, "agent_memory": {}, "note": note}
    if impl == "reference" and sizes != params["sizes"]:
        out["note"] = f"the reference stops at {REFERENCE_MAX} attachments (filling its host is slow: iptables)"
    with agent_for(run_dir, impl != "reference", profile) as agent:
        made = 0
        for index, size in enumerate([0, *sizes]):
            if size > made:
                if profile:
                    Path(profile, "level").write_text("fill")
                started = time.monotonic()
                fill(fillers, made, size - made, 1 if impl == "reference" else FILL_WORKERS)
                out["fill_seconds"][str(size)] = round(time.monotonic() - started, 1)
                made = size
            if profile:
                Path(profile, "level").write_text(str(size))
            tag = f"{impl[0]}{index}"  # the chains share the agent's log: their containers' IDs tell them apart
            # One variant after the other: the standalone calls write host-local's store behind the
            # agent's back, which would make the agent rebuild its index on every round (the
            # warm-up rounds absorb the one rebuild of a block).
            timed = {}
            for name in names:
                timed.update(run.timed_rounds({name: chains[name]}, params["rounds"], 31000 + 1000 * index, tag))
            for name in names:
                out["variants"][name][str(size)] = timed[name]
            out.setdefault("per_plugin", {})[str(size)] = per_plugin(run_dir / "agent.log", f"bench-{tag}")
            if agent is not None:
                out["agent_memory"][str(size)] = {"peak_kib": agent.peak_rss_kib(), "rss_kib": agent.rss_kib()}
            lab.log(f"bench: scale {impl} at {size}: " + ", ".join(f"{n} {timed[n]['add']}/{timed[n]['del']} ms" for n in names))
    return out


def per_plugin(agent_log: Path, prefix: str) -> dict[str, float]:
    """Median milliseconds of each plugin's ADD and DEL in the agent (its log) for the
    containers whose ID starts with `prefix`."""
    import re
    import statistics

    pattern = re.compile(r"pycni\.agent (\S+) (ADD|DEL) container=(\S+) .*exit 0 in ([\d.]+) ms")
    times: dict[str, list[float]] = {}
    with contextlib.suppress(OSError):
        for line in agent_log.read_text().splitlines():
            found = pattern.search(line)
            if found and found[3].startswith(prefix):
                times.setdefault(f"{found[1]} {found[2]}", []).append(float(found[4]))
    return {key: round(statistics.median(values), 1) for key, values in sorted(times.items())}


# -- the report --------------------------------------------------------------------------------


def render(data: dict[str, Any], labels: dict[str, str], verdict: Any) -> list[str]:
    """The scale table: ADD and DEL at each size, and their growth over the empty host."""
    lines = [
        "### ADD and DEL on an empty host and with attachments already there",
        "",
        "| chain | variant | attachments | ADD (ms) | DEL (ms) | ADD growth | DEL growth | target |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    notes: list[str] = []
    for impl in IMPLS:
        part = data.get(impl, {})
        if part.get("note"):
            notes.append(f"- {impl}: {part['note']}")
        chain = "calico" if impl == "calico" else "bridge"
        for name, by_size in part.get("variants", {}).items():
            empty = by_size.get("0", {})
            for size, row in by_size.items():
                growth = [_growth(row.get(k), empty.get(k)) for k in ("add", "del")]
                target = "" if name == "reference" or size == "0" else verdict(max(g or 0 for g in growth) or None, 1.1)
                cells = [chain, labels[name], size, _ms(row.get("add")), _ms(row.get("del")), *map(_x, growth), target]
                lines.append("| " + " | ".join(cells) + " |")
                if row.get("error"):
                    notes.append(f"- {chain}, {labels[name]}, {size}: {row['error']}")
        for size, seconds in part.get("fill_seconds", {}).items():
            notes.append(f"- {chain} ({impl}): filled to {size} attachments in {seconds} s")
        for size, plugins in part.get("per_plugin", {}).items():
            if plugins:
                notes.append(f"- {chain}, in the agent at {size}: " + ", ".join(f"{k} {v} ms" for k, v in plugins.items()))
        for size, memory in part.get("agent_memory", {}).items():
            notes.append(f"- {chain}: the agent's peak RSS at {size} attachments: {memory['peak_kib'] / 1024:.1f} MiB")
    return [*lines, "", *notes, ""]


def agent_peak(data: dict[str, Any]) -> tuple[str, int | None]:
    """(size, peak KiB) of the agent at the largest size of the bridge chain."""
    memory = data.get("ours", {}).get("agent_memory") or {}
    if not memory:
        return "?", None
    size = max(memory, key=int)
    return size, memory[size]["peak_kib"]


def _growth(value: float | None, base: float | None) -> float | None:
    return round(value / base, 2) if value is not None and base else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# -- profiles (bench/profagent.py's files) -------------------------------------------------------


def summarize(profile_dir: str, top: int = 25) -> None:
    """Per size and per (plugin, command): the cumulative time of the costliest functions."""
    import pstats

    root = Path(profile_dir)
    for level in sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
        groups: dict[str, list[str]] = {}
        for prof in level.glob("*.prof"):
            groups.setdefault(prof.name.rsplit("-", 1)[0], []).append(str(prof))
        for group, files in sorted(groups.items()):
            print(f"== {level.name} attachments: {group} ({len(files)} calls)")
            stats = pstats.Stats(*files, stream=sys.stdout)
            stats.sort_stats("cumulative").print_stats(top)


if __name__ == "__main__":
    summarize(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 25)
