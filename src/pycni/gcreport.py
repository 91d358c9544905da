"""What a plugin's GC released, told to the runtime that asked (`pycni gc`).

The spec's GC answers only success or an error: a plugin has no standard way to say what it
collected. pycni's own plugins can, through a side channel that is no part of the protocol:

- the runtime asks for a report by setting PYCNI_GC_REPORT=1 in the GC call's environment, and
  only when the executable is one of pycni's launchers (`pycni.launcher.is_launcher`): a
  reference plugin sees exactly the environment libcni would give it;
- the plugin records what it releases (`released("address", "10.1.0.5")`) while it works;
- the call's answer on stdout stays what the spec says (nothing, or the error); the report is
  one line on stderr, `pycni-gc-report: <JSON>`, which a launcher passes on whether the agent
  served the call or it ran in-process. A runtime that did not ask (containerd, CRI-O, podman:
  libcni) never gets the line, so their logs never see it.

Why stderr and not a report file or an in-process return: stderr already comes back from both
paths (the agent returns the call's stderr to the launcher, `pycni.agent.protocol`), needs no
file the agent (another process, perhaps another mount namespace) must be able to write, and
the runtime keeps executing plugins as the spec says, with its timeout and process group.

The report is held in a context variable for the length of the call, so no function down the
call carries it. A plugin that delegates in-process (bridge to host-local, calico to
calico-ipam: `pycni.runtime.delegate`) runs the delegate in the same call: its releases go in a
section of its own, marked with the plugin that delegated to it. A delegate run as a process
(a reference IPAM plugin) reports nothing: its section says so (`released` is None).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

REPORT_ENV = "PYCNI_GC_REPORT"
PREFIX = b"pycni-gc-report: "


class Report:
    """One GC call's report: a section per plugin that ran in it, the called plugin first."""

    def __init__(self) -> None:
        self.sections: list[dict[str, Any]] = []
        self.current: dict[str, Any] | None = None

    def open(self, plugin_type: str, via: str = "") -> dict[str, Any]:
        section: dict[str, Any] = {"plugin": plugin_type, **({"via": via} if via else {}), "released": {}}
        self.sections.append(section)
        return section

    def line(self) -> bytes:
        import json

        return PREFIX + json.dumps({"plugins": self.sections}, separators=(",", ":")).encode() + b"\n"


_report: contextvars.ContextVar[Report | None] = contextvars.ContextVar("pycni_gc_report", default=None)


def wanted(env: Mapping[str, str]) -> bool:
    return env.get("CNI_COMMAND") == "GC" and env.get(REPORT_ENV) == "1"


@contextmanager
def reporting() -> Iterator[Report]:
    """A report for the call that runs inside (the top-level GC call of a plugin process or of
    the agent)."""
    report = Report()
    token = _report.set(report)
    try:
        yield report
    finally:
        _report.reset(token)


@contextmanager
def plugin(plugin_type: str) -> Iterator[None]:
    """Releases inside go to `plugin_type`'s section; nested (a delegate run in-process), it is
    marked as run by the enclosing plugin. Nothing happens when no report was asked for."""
    report = _report.get()
    if report is None:
        yield
        return
    outer = report.current
    report.current = report.open(plugin_type, via=outer["plugin"] if outer else "")
    try:
        yield
    finally:
        report.current = outer


def released(kind: str, item: str) -> None:
    """Record one thing the current plugin's GC released: `kind` is a singular noun ("address",
    "ifb device"), `item` names it."""
    report = _report.get()
    if report is not None and report.current is not None:
        report.current["released"].setdefault(kind, []).append(item)


def delegate_report(plugin_type: str, stderr: bytes) -> None:
    """A delegate run as a process: its own report when it printed one (a launcher of another
    pycni installation), else a section that says it reported nothing."""
    report = _report.get()
    if report is None:
        return
    via = report.current["plugin"] if report.current else ""
    found = parse(stderr)
    if found is None:
        report.open(plugin_type, via=via)["released"] = None
        return
    for section in found:
        section.setdefault("via", via)
        report.sections.append(section)


def parse(stderr: bytes) -> list[dict[str, Any]] | None:
    """The sections of the report line in a plugin's stderr; None when there is none (a plugin
    that does not report: not pycni's, or an older one) or it is malformed."""
    import json

    for raw in reversed(stderr.splitlines()):
        if not raw.startswith(PREFIX):
            continue
        try:
            doc = json.loads(raw[len(PREFIX) :])
        except ValueError:
            return None
        sections = doc.get("plugins") if isinstance(doc, dict) else None
        if isinstance(sections, list) and all(_section(s) for s in sections):
            return sections
        return None
    return None


def _section(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("plugin"), str):
        return False
    released = value.get("released")
    return released is None or (
        isinstance(released, dict)
        and all(isinstance(items, list) and all(isinstance(i, str) for i in items) for items in released.values())
    )


def without_line(stderr: bytes) -> bytes:
    """A plugin's stderr without its report line (what is left is the plugin's own message)."""
    return b"\n".join(line for line in stderr.splitlines() if not line.startswith(PREFIX))
