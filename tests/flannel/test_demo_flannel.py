"""`make demo-flannel` (scripts/demo-flannel.sh), run for real in a stand-in host of its own."""

from __future__ import annotations

from ..demos import run_demo


def test_demo_flannel_shows_leases_and_pings_then_cleans_up() -> None:
    out = run_demo("demo-flannel.sh", "ip -brief link; ip netns list", timeout=180)
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
