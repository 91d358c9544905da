"""Fault injection: named step boundaries where a test kills the process in the middle of a call.

Plugins mark the boundaries of their work with `checkpoint(call.env, "veth-created")`. When
the call's own environment (the one the runtime gave it: `call.env`, never `os.environ`,
which in the agent is the agent's) says

    PYCNI_FAULT=<point>          the call is SIGKILLed the first time it reaches <point>
    PYCNI_FAULT=<point>#<n>      ...the n-th time (a dual-stack ADD allocates twice)

the process running it dies on the spot: the plugin's own process, or the agent serving the
call (killing "the current process" inside the agent is what kills the agent). Nothing is
rolled back, no `finally` runs: exactly what a power cut, the OOM killer or `kill -9` leaves.

    PYCNI_FAULT_TRACE=<file>     appends every point the call reaches to <file>, one per line,
                                 as "<point>#<n>" ("killed <point>#<n>" for the one it died at)

lets a harness find out which points a chain passes through, so it can then kill at each.
With neither variable set a checkpoint costs one lookup in a small dict.

Occurrences are counted per process for one attachment (container ID and interface) and
point: the n-th `address-allocated` of one ADD, across the main plugin and the IPAM plugin
it delegates to in-process. The counts are shared by the calls an agent runs, under a lock;
a harness gives every injected call an attachment of its own.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping

FAULT_ENV = "PYCNI_FAULT"
TRACE_ENV = "PYCNI_FAULT_TRACE"
NO_FAULTS: Mapping[str, str] = {}

_lock = threading.Lock()
_reached: dict[tuple[str, str, str], int] = {}


def checkpoint(env: Mapping[str, str] | None, point: str) -> None:
    """A step boundary: die here when the call's environment asks for it."""
    if not env or (FAULT_ENV not in env and TRACE_ENV not in env):
        return
    _checkpoint(env, point)


def parse(spec: str) -> tuple[str, int]:
    """`<point>[#<n>]` as (point, n)."""
    point, _, count = spec.partition("#")
    return point, int(count) if count.isdigit() and int(count) > 0 else 1


def _checkpoint(env: Mapping[str, str], point: str) -> None:
    key = (env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""), point)
    with _lock:
        _reached[key] = occurrence = _reached.get(key, 0) + 1
    spec = env.get(FAULT_ENV, "")
    kill = bool(spec) and parse(spec) == (point, occurrence)
    trace = env.get(TRACE_ENV, "")
    if trace:
        _append(trace, f"{'killed ' if kill else ''}{point}#{occurrence}")
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)


def _append(path: str, line: str) -> None:
    """One write of one line with O_APPEND: lines of concurrent processes never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
