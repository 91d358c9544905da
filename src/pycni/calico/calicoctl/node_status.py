"""`calicoctl node status`: is calico-node running on this node, and the BGP peers of its BIRD
(`show protocols` on bird.ctl / bird6.ctl), in calicoctl's words and table.

calicoctl looks for a `calico-node -felix` process; several pycni nodes can share one
machine (and one process table), so "running" is read from the node's own state instead:
the pid calico-node records in CALICO_VAR_RUN_DIR (default /var/run/calico), still alive and
still calico-node. Must run as root (the BIRD sockets are root's), as calicoctl says.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pycni.calico.node.bird import control

PID_FILE = "calico-node.pid"
HEADINGS = ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"]


def run_dir(env: Mapping[str, str]) -> str:
    return env.get("CALICO_VAR_RUN_DIR", "").strip() or "/var/run/calico"


def calico_node_running(directory: str) -> bool:
    try:
        with open(os.path.join(directory, PID_FILE)) as fh:
            pid = int(fh.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except (OSError, ValueError):
        return False
    return any(os.path.basename(a.decode(errors="replace")) == "calico-node" for a in argv[:3])


def table(rows: list[list[str]]) -> str:
    """go-pretty's default style, as calicoctl renders it: upper-case headings, left-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADINGS)]
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([border, line(HEADINGS), border, *(line(r) for r in rows), border]) + "\n"


def _peers(directory: str, version: int) -> str:
    out = f"\nIPv{version} BGP status\n"
    path = os.path.join(directory, "bird.ctl" if version == 4 else "bird6.ctl")
    try:
        peers = control.bgp_peers(path, version)
    except control.BirdError as exc:
        return out + f"Error querying BIRD: unable to connect to BIRDv{version} socket: {exc}"
    if not peers:
        return out + f"No IPv{version} peers found.\n"
    rows = [[p.address, p.kind, p.state, p.since, p.bgp_state + (f" {p.info}" if p.info else "")] for p in peers]
    return out + table(rows)


def _alive(path: str) -> bool:
    try:
        control.command(path, "show status", timeout=1)
        return True
    except control.BirdError:
        return False


def status(env: Mapping[str, str]) -> tuple[int, str]:
    if os.geteuid() != 0:
        return 1, "This command must be run as root.\n"
    directory = run_dir(env)
    if not calico_node_running(directory):
        return 1, "Calico process is not running.\n"
    out = "Calico process is running.\n"
    v4, v6 = _alive(os.path.join(directory, "bird.ctl")), _alive(os.path.join(directory, "bird6.ctl"))
    if v4 or v6:
        out += _peers(directory, 4) if v4 else "\nINFO: BIRDv4 process: 'bird' is not running.\n"
        out += _peers(directory, 6) if v6 else "\nINFO: BIRDv6 process: 'bird6' is not running.\n"
    else:
        out += "\nThe BGP backend process (BIRD) is not running.\n"
    return 0, out + "\n"
