"""pycni.faults: a checkpoint acts only inside a call whose fault injection was turned on
(`faults.injected`, from the call's own environment), counts per call, traces what it
passes, and kills the process at the one asked for."""

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
faults.checkpoint("first")  # outside the call: nothing
with faults.injected(env):
    for point in ("first", "second", "first", "third"):
        faults.checkpoint(point)
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
        faults.checkpoint("anything")
        with faults.injected({"CNI_CONTAINERID": "c2"}):
            faults.checkpoint("anything")
    finally:
        del os.environ[faults.FAULT_ENV]


def test_occurrences_are_counted_per_call(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    env = {faults.TRACE_ENV: str(trace)}
    with faults.injected(env):
        faults.checkpoint("p")
        with faults.injected({faults.TRACE_ENV: str(tmp_path / "other")}):  # delegated in-process: the same call
            faults.checkpoint("p")
    with faults.injected(env):  # the next call starts again
        faults.checkpoint("p")
    assert trace.read_text().split() == ["p#1", "p#2", "p#1"]
    assert not (tmp_path / "other").exists()


def test_parse() -> None:
    assert faults.parse("link-created") == ("link-created", 1)
    assert faults.parse("address-allocated#2") == ("address-allocated", 2)
    assert faults.parse("x#0") == ("x", 1)
