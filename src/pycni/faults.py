"""Fault injection: named step boundaries where a test kills the process in the middle of a call.

Plugins mark the boundaries of their work with `checkpoint("veth-created")`. When fault
injection is on for the call (`injected`), its environment (the one the runtime gave it,
never `os.environ`, which in the agent is the agent's) may say

    PYCNI_FAULT=<point>          the call is SIGKILLed the first time it reaches <point>
    PYCNI_FAULT=<point>#<n>      ...the n-th time (a dual-stack ADD allocates twice)

and the process running it dies on the spot: the plugin's own process, or the agent serving
the call (killing "the current process" inside the agent is what kills the agent). Nothing is
rolled back, no `finally` runs: exactly what a power cut, the OOM killer or `kill -9` leaves.

    PYCNI_FAULT_TRACE=<file>     appends every point the call reaches to <file>, one per line,
                                 as "<point>#<n>" ("killed <point>#<n>" for the one it died at)

lets a harness find out which points a chain passes through, so it can then kill at each.

Who may turn it on: a plugin's own process (the caller owns it; `pycni.skel.main`), and an
agent started with `pycni agent --enable-fault-injection`, for its tests. An agent started
without it ignores both variables: a caller cannot make it kill itself.

The setting lives in a context variable for the length of the call, so no function down the
call has to carry it; a call running without one pays one `ContextVar.get` per checkpoint.
Occurrences are counted per call: the n-th `address-allocated` of one ADD, across the main
plugin and the IPAM plugin it delegates to in-process (which runs inside the same call).
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

FAULT_ENV = "PYCNI_FAULT"
TRACE_ENV = "PYCNI_FAULT_TRACE"


class Injection:
    """One call's fault injection: where to die, where to trace, what it reached so far.
    (A plain class: a dataclass would cost every plugin process its generated code.)"""

    def __init__(self, kill: tuple[str, int] | None = None, trace: str = "") -> None:
        self.kill = kill
        self.trace = trace
        self.reached: dict[str, int] = {}
        self.lock = threading.Lock()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Injection | None:
        spec, trace = env.get(FAULT_ENV, ""), env.get(TRACE_ENV, "")
        if not spec and not trace:
            return None
        return cls(parse(spec) if spec else None, trace)

    def reach(self, point: str) -> None:
        with self.lock:
            self.reached[point] = occurrence = self.reached.get(point, 0) + 1
        kill = self.kill == (point, occurrence)
        if self.trace:
            _append(self.trace, f"{'killed ' if kill else ''}{point}#{occurrence}")
        if kill:
            import signal  # here: only a fault needs it, and every plugin process imports this module

            os.kill(os.getpid(), signal.SIGKILL)


_current: contextvars.ContextVar[Injection | None] = contextvars.ContextVar("pycni_fault_injection", default=None)


def checkpoint(point: str) -> None:
    """A step boundary: die here when the call's fault injection asks for it."""
    injection = _current.get()
    if injection is not None:
        injection.reach(point)


@contextmanager
def injected(env: Mapping[str, str]) -> Iterator[None]:
    """Honour the fault-injection variables of `env` for the call run inside. A call that
    already has its injection (a plugin delegated to in-process) keeps it and its counts."""
    injection = None if _current.get() is not None else Injection.from_env(env)
    if injection is None:
        yield
        return
    token = _current.set(injection)
    try:
        yield
    finally:
        _current.reset(token)


def parse(spec: str) -> tuple[str, int]:
    """`<point>[#<n>]` as (point, n)."""
    point, _, count = spec.partition("#")
    return point, int(count) if count.isdigit() and int(count) > 0 else 1


def _append(path: str, line: str) -> None:
    """One write of one line with O_APPEND: lines of concurrent processes never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
