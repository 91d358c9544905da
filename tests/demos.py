"""Running a `make demo*` script for real, in a stand-in host of its own (scripts/in-netns.sh), so
that its fixed names and default stores cannot meet anything else; what it printed afterwards
(links and namespaces) shows that it cleaned up."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(script: str, after: str, timeout: float) -> str:
    """Run `scripts/<script>` then the shell command `after`; its stdout, once it succeeded."""
    proc = subprocess.run(
        [str(ROOT / "scripts" / "in-netns.sh"), "bash", "-c", f"scripts/{script} && {after}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout
