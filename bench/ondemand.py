"""The agent started on demand (issue 18): what the first call costs, and a crowd starting it.

Phase `ondemand` (registered in run.py, rendered by report.py), inside the phase's host
namespace like the others:

- first call: no agent is running; the bridge chain's ADD (whose first launcher starts
  the agent, PYCNI_AGENT=auto) and DEL, against the reference's ADD and DEL in the same
  round; then one more ADD and DEL through the agent now running; then the agent is
  killed, so that every round starts cold;
- memory: the peak RSS of every launcher of one ADD and DEL, first while starting the
  agent, then served by it;
- crowd: --concurrency host-local ADDs started at once with no agent running (the first
  launchers race to start it; one does, all are answered), beside the reference's.

The on-demand agent gets a socket of its own (PYCNI_AGENT_SOCKET), not the one of the
agent the other phases run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

import lab

LABEL = "pycni, agent started on demand"


def _socket(run_dir: Path) -> Path:
    return run_dir / "ondemand" / "agent.sock"


def _variant(run_dir: Path, name: str) -> lab.Variant:
    base = lab.variants(run_dir)["agent"]
    env = {**base.env, "PYCNI_AGENT": "auto", "PYCNI_AGENT_SOCKET": str(_socket(run_dir))}
    return lab.Variant(name, LABEL, base.bin_dir, env)


def agent_pid(sock_path: Path) -> int | None:
    """The pid of the agent listening on `sock_path` (SO_PEERCRED), or None."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(sock_path))
        except OSError:
            return None
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", raw)[0])


def stop_agent(run_dir: Path) -> bool:
    """Kill the on-demand agent (it is no child of ours: its launcher has exited) and wait
    until it is gone. True when there was one."""
    pid = agent_pid(_socket(run_dir))
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.02)
    return True


def phase_ondemand(run_dir: Path, params: dict[str, Any], available: list[str]) -> dict[str, Any]:
    import run  # bench/run.py: the chains and the concurrent ADDs (imported here: it registers us)

    usable, note = run.ours_usable(available, "chain")
    if not usable:
        return {"note": note}
    _socket(run_dir).parent.mkdir(exist_ok=True)
    reference = run.chains_for(run_dir, ["reference"], "d", 121)["reference"]
    conf = run.bridge_chain("pcbdo", "pcbdo", "10.122.0.0/16", run_dir / "ipam")
    ours = run.Chain(run_dir, _variant(run_dir, "ondemand"), conf)
    try:
        result: dict[str, Any] = {"first_call": _first_calls(run, reference, ours, run_dir, params["rounds"])}
        result["memory"] = _memory(run, run_dir, ours)
        result["crowd"] = _crowd(run, run_dir, params)
    finally:
        stop_agent(run_dir)
    return result


def _first_calls(run: Any, reference: Any, ours: Any, run_dir: Path, rounds: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {"reference": [], "first": [], "first_add": [], "first_del": [], "later": []}
    started_agents = 0
    for number in range(1 + rounds):  # one warm-up round (the page cache, the reference's first run)
        stop_agent(run_dir)
        times: dict[str, float] = {}
        order = ["reference", "ours"] if number % 2 else ["ours", "reference"]
        for which in order:
            key, port = f"d{number}{which[0]}", 34000 + 10 * number + (0 if which == "reference" else 1)
            if which == "reference":
                times["reference"] = reference.add(key, port) + reference.delete(key, port)
                continue
            add = ours.add(key, port)  # its first launcher starts the agent
            delete = ours.delete(key, port)
            started_agents += agent_pid(_socket(run_dir)) is not None
            later = ours.add(key + "w", port + 5) + ours.delete(key + "w", port + 5)
            times |= {"first": add + delete, "first_add": add, "first_del": delete, "later": later}
        if number >= 1:
            for name, value in times.items():
                samples[name].append(value)
    out = {name: lab.median_ms(values) for name, values in samples.items()}
    out["ratio"] = lab.ratio(out["first"], out["reference"])
    out["rounds"] = rounds
    out["agents_started"] = started_agents
    return out


def _memory(run: Any, run_dir: Path, ours: Any) -> dict[str, Any]:
    """Launchers' peak RSS: the ADD and DEL that start the agent, then one it serves."""
    stop_agent(run_dir)
    cold = run.launcher_memory(run_dir, {"ondemand-first": ours}, None)["ondemand-first"]
    warm = run.launcher_memory(run_dir, {"ondemand-later": ours}, None)["ondemand-later"]
    return {"first": cold, "later": warm}


def _crowd(run: Any, run_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    count = params["concurrency"]
    variants = {"reference": lab.variants(run_dir)["reference"], "ondemand": _variant(run_dir, "ondemand")}
    out: dict[str, Any] = {}
    for index, (name, variant) in enumerate(variants.items()):
        walls, duplicates, errors, agents = [], 0, [], 0
        for number in range(params["rounds"]):
            stop_agent(run_dir)
            wall, addresses, failures = run.concurrent_adds(run_dir, variant, count, 8 + index, number)
            walls.append(wall)
            errors += failures
            duplicates += len(addresses) - len(set(addresses))
            agents += agent_pid(_socket(run_dir)) is not None
            if len(addresses) + len(failures) != count:
                errors.append(f"{count - len(addresses) - len(failures)} ADDs got no answer")
        out[name] = {**lab.adds_summary(walls, duplicates, errors), "agent_running_after": agents}
    return {"count": count, "variants": out}


def render(data: dict[str, Any]) -> list[str]:
    """The phase's tables (Markdown lines) for report.py."""
    if "first_call" not in data:
        return ["### Agent started on demand", "", *[f"- {data[k]}" for k in ("note", "error") if data.get(k)], ""]
    first = data["first_call"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    ratio = first.get("ratio")
    verdict = "not measured" if ratio is None else ("≤ 2.5: met" if ratio <= 2.5 else "≤ 2.5: **missed**")
    lines = [
        "### Agent started on demand: the first call (bridge chain ADD + DEL, no agent running)",
        "",
        "| what | ADD + DEL (ms) | x reference | target |",
        "|---|---:|---:|---|",
        f"| Go reference plugins | {ms(first['reference'])} | 1.00x |  |",
        f"| {LABEL}: the first call (ADD {ms(first['first_add'])}, DEL {ms(first['first_del'])}) "
        f"| {ms(first['first'])} | {ratio or '-'}x | {verdict} |",
        f"| {LABEL}: the next call | {ms(first['later'])} | {lab.ratio(first['later'], first['reference']) or '-'}x |  |",
        "",
        f"- {first['rounds']} rounds, the agent killed before each; an agent was running after the first call "
        f"in {first['agents_started']} of {first['rounds'] + 1}.",
    ]
    memory = data.get("memory", {})
    for when, what in (("first", "starting the agent"), ("later", "served by it")):
        peak = memory.get(when, {}).get("peak_kib")
        if peak:
            verdict = "≤ 15 MiB: met" if peak <= 15 * 1024 else "≤ 15 MiB: **missed**"
            lines.append(f"- launcher peak RSS, {what}: {peak / 1024:.1f} MiB ({verdict})")
        elif memory.get(when, {}).get("error"):
            lines.append(f"- launcher peak RSS, {what}: {memory[when]['error']}")
    crowd = data.get("crowd", {})
    if crowd:
        ref = crowd["variants"].get("reference", {})
        lines += [
            "",
            f"### {crowd['count']} concurrent host-local ADDs, no agent running (the first launchers start it)",
            "",
            "| variant | wall time (ms) | x reference | addresses given twice | failed or unanswered ADDs |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, row in crowd["variants"].items():
            label = "Go reference plugins" if name == "reference" else LABEL
            r = lab.ratio(row.get("wall"), ref.get("wall"))
            lines.append(f"| {label} | {ms(row.get('wall'))} | {r or '-'}x | {row['duplicates']} | {row['errors']} |")
            if row.get("first_error"):
                lines.append(f"- {label}: first failure: {row['first_error'][:300]}")
    return [*lines, ""]
