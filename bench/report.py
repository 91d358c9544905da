"""The benchmark's tables (Markdown), printed and kept in bench/README.md."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import flatcost
import ondemand

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- bench:results -->", "<!-- /bench:results -->"
LABELS = {
    "reference": "Go reference plugins",
    "agent": "pycni through the agent",
    "in-process": "pycni without the agent",
}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mib(kib: int | None) -> str:
    return "-" if not kib else f"{kib / 1024:.1f} MiB"


def _ratio(ours: float | None, ref: float | None) -> float | None:
    return None if ours is None or not ref else ours / ref


def _verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "not measured"
    return f"≤ {limit:g}: met" if value <= limit else f"≤ {limit:g}: **missed**"


def _notes(*items: Any) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, dict):
            for key in ("note", "error"):
                if item.get(key):
                    out.append(f"- {item[key]}")
    return out


def _chain(data: dict[str, Any]) -> list[str]:
    variants = data.get("variants", {})
    ref = variants.get("reference", {})
    lines = [
        "### Bridge chain: bridge + host-local + portmap + bandwidth, one runtime",
        "",
        "| variant | ADD (ms) | DEL (ms) | ADD + DEL (ms) | x reference | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    limits = {"agent": 0.8, "in-process": 2.0}  # issue 18 tightened issue 6's 2.5 without the agent
    for name, row in variants.items():
        r = _ratio(row.get("total"), ref.get("total"))
        target = _verdict(r, limits[name]) if name in limits else ""
        lines.append(
            f"| {LABELS[name]} | {_ms(row.get('add'))} | {_ms(row.get('del'))} | {_ms(row.get('total'))} | {_x(r)} | {target} |"
        )
    errors = [f"- {LABELS[name]}: {row['error']}" for name, row in variants.items() if row.get("error")]
    return [*lines, "", *_notes(data), *errors, ""]


def _concurrent(data: dict[str, Any], count: int) -> list[str]:
    variants = data.get("variants", {})
    ref = variants.get("reference", {})
    lines = [
        f"### {count} concurrent ADDs into one host-local range",
        "",
        "| variant | wall time (ms) | x reference | addresses given twice | failed ADDs |",
        "|---|---:|---:|---:|---:|",
    ]
    notes = _notes(data)
    for name, row in variants.items():
        r = _ratio(row.get("wall"), ref.get("wall"))
        lines.append(f"| {LABELS[name]} | {_ms(row.get('wall'))} | {_x(r)} | {row['duplicates']} | {row['errors']} |")
        if row.get("first_error"):
            notes.append(f"- {LABELS[name]}: first failure: {row['first_error'][:300]}")
    return [*lines, "", *notes, ""]


def _calico(data: dict[str, Any]) -> list[str]:
    lines = [
        "### Calico chain: calico + calico-ipam + portmap + bandwidth",
        "",
        "| datastore | variant | ADD (ms) | DEL (ms) | ADD + DEL (ms) | x without the agent |",
        "|---|---|---:|---:|---:|---:|",
    ]
    notes = _notes(data)
    for store, variants in data.get("stores", {}).items():
        base = variants.get("in-process", {}).get("total")
        for name, row in variants.items():
            r = _ratio(row.get("total"), base)
            times = " | ".join(_ms(row.get(key)) for key in ("add", "del", "total"))
            lines.append(f"| {store} | {LABELS[name]} | {times} | {_x(r)} |")
            if row.get("error"):
                notes.append(f"- {store}, {LABELS[name]}: {row['error']}")
    return [*lines, "", *notes, ""]


def _memory(chain: dict[str, Any], scale: dict[str, Any]) -> list[str]:
    memory = chain.get("memory", {})
    attachments, agent_loaded = flatcost.agent_peak(scale)

    def peak(name: str) -> int | None:
        value = memory.get(name, {}).get("peak_kib")
        return int(value) if value else None

    launcher = peak("agent")
    loaded_target = _verdict(agent_loaded and agent_loaded / 1024, 80)
    rows = [
        ("a launcher, through the agent (largest of the chain's plugins)", launcher, _verdict(launcher and launcher / 1024, 15)),
        ("a launcher, without the agent (largest of the chain's plugins)", peak("in-process"), ""),
        ("a Go reference plugin (largest of the chain's plugins)", peak("reference"), ""),
        ("the agent, after the bridge chain rounds", memory.get("agent process", {}).get("peak_kib"), ""),
        (f"the agent, with {attachments} attachments on the host", agent_loaded, loaded_target),
    ]
    lines = ["### Memory: peak RSS", "", "| process | peak RSS | target |", "|---|---:|---|"]
    lines += [f"| {what} | {_mib(kib)} | {target} |" for what, kib, target in rows]
    return [*lines, ""]


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    p = results["params"]
    s = results["scenarios"]
    head = [
        f"Measured {time.strftime('%Y-%m-%d')} by `make bench` ({results.get('seconds', '?')} s): {m.get('cpu', '?')}, "
        f"{m.get('cores')} cores, {m.get('memory', '?')}; {m.get('os', '?')}, kernel {m.get('kernel')}, "
        f"Python {m.get('python')}; "
        f"{m.get('reference')}; pycni {m.get('pycni')}. Load average {m.get('load')} before, {m.get('load_after')} after. "
        f"Each figure is the median of {p['rounds']} rounds (after 2 warm-up rounds). "
        f"Our plugins in this installation: {', '.join(p['available'])}.",
        "",
    ]
    body: list[str] = []
    if "chain" in s:
        body += _chain(s["chain"])
    if "scale" in s:
        body += flatcost.render(s["scale"], LABELS, _verdict)
    if "concurrent" in s:
        body += _concurrent(s["concurrent"], p["concurrency"])
    if "calico" in s:
        body += _calico(s["calico"])
    if "ondemand" in s:
        body += ondemand.render(s["ondemand"])
    if "chain" in s or "scale" in s:
        body += _memory(s.get("chain", {}), s.get("scale", {}))
    return "\n".join(head + body).rstrip() + "\n"


def write_readme(text: str) -> None:
    current = README.read_text()
    start, end = current.index(BEGIN) + len(BEGIN), current.index(END)
    README.write_text(current[:start] + "\n" + text + current[end:])
