"""`make demo-flannel` (scripts/demo-flannel.sh), run for real in a stand-in host of its own."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_flannel_shows_leases_and_pings_then_cleans_up() -> None:
    script = "scripts/demo-flannel.sh && ip -brief link; ip netns list"
    proc = subprocess.run(
        [str(ROOT / "scripts" / "in-netns.sh"), "bash", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for expected in (
        "FLANNEL_SUBNET=10.244.",
        "FLANNEL_IPMASQ=true",
        '"BackendType":"vxlan"',
        "dev flannel.1 onlink  (proto 70)",
    ):
        assert expected in out
    assert out.count("): ok") == 24 and "FAILED" not in out
    after = out.split("Removing everything")[1]
    assert "pcn-" not in after and "pcv" not in after and "flannel" not in after.split("done", 1)[1]
