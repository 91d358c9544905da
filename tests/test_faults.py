"""pycni.faults: the fault points read only the call's environment, count per attachment,
trace what they pass, and kill the process at the one asked for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from pycni import faults

CHILD = """
import sys
from pycni import faults
env = {"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "PYCNI_FAULT": sys.argv[1], "PYCNI_FAULT_TRACE": sys.argv[2]}
for point in ("first", "second", "first", "third"):
    faults.checkpoint(env, point)
print("survived")
"""


def run_child(spec: str, trace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CHILD, spec, str(trace)], capture_output=True, text=True, check=False)


def test_the_process_dies_at_the_named_occurrence(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    out = run_child("first#2", trace)
    assert out.returncode == -signal.SIGKILL and "survived" not in out.stdout
    assert trace.read_text().split("\n") == ["first#1", "second#1", "killed first#2", ""]


def test_a_point_never_reached_kills_nothing(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    out = run_child("nowhere", trace)
    assert out.returncode == 0 and "survived" in out.stdout
    assert trace.read_text().split() == ["first#1", "second#1", "first#2", "third#1"]


def test_only_the_calls_environment_counts() -> None:
    """This process survives: its own environment (in the agent, the agent's) is not the call's."""
    os.environ[faults.FAULT_ENV] = "anything"
    try:
        faults.checkpoint({"CNI_CONTAINERID": "c2"}, "anything")
        faults.checkpoint(None, "anything")
        faults.checkpoint(faults.NO_FAULTS, "anything")
    finally:
        del os.environ[faults.FAULT_ENV]


def test_occurrences_are_counted_per_attachment(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    for container in ("a", "b", "a"):
        faults.checkpoint({"CNI_CONTAINERID": f"pct-{tmp_path.name}-{container}", faults.TRACE_ENV: str(trace)}, "p")
    assert trace.read_text().split() == ["p#1", "p#1", "p#2"]


def test_parse() -> None:
    assert faults.parse("link-created") == ("link-created", 1)
    assert faults.parse("address-allocated#2") == ("address-allocated", 2)
    assert faults.parse("x#0") == ("x", 1)
