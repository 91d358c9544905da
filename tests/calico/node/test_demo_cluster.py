"""`make demo-cluster` (scripts/demo-cluster.sh), run for real in a stand-in host of its own."""

from __future__ import annotations

from ...demos import run_demo


def test_demo_cluster_pings_shows_bgp_and_policy_then_cleans_up() -> None:
    out = run_demo("demo-cluster.sh", "ip -brief link; ip netns list", timeout=240)
    assert out.count(": ok") == 12 and "FAILED" not in out
    assert out.count("| node-to-node mesh | up ") == 6  # each of three nodes sees two peers
    assert "Established" in out and "(64512)" in out
    # the policy part: open, refused under default deny, allowed by the rule
    assert "no policy: " in out and "default deny: " in out and "allowed: " in out
    assert out.split("default deny: ", 1)[1].split("\n", 1)[0].endswith("no answer within 2 s")
    assert "connected: hello" in out.split("allowed: ", 1)[1].split("\n", 1)[0]
    after = out.split("Cleaning up", 1)[1].split("done", 1)[1]
    assert "pcn-" not in after and "cali" not in after and "vxlan" not in after
