"""`make bench` is not part of the tests; a one-round smoke run of its harness is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "run.py"


@pytest.mark.reference
def test_bench_harness_runs(reference_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--smoke", "--no-readme"], capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    headings = ("### Bridge chain", "### ADD and DEL on an empty host", "concurrent ADDs", "### Calico chain", "### Memory")
    for heading in (*headings, "### Agent started on demand"):
        assert heading in out, out
    assert "| Go reference plugins |" in out
    assert "phase failed" not in out + proc.stderr, proc.stderr[-3000:]
