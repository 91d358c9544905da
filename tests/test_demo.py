"""`make demo` (scripts/demo.sh), run for real in a stand-in host of its own (scripts/in-netns.sh),
so that its fixed names (test-cni, cni0) and host-local's default store cannot meet anything else."""

from __future__ import annotations

import subprocess

from .demos import ROOT, run_demo


def test_demo_walks_through_the_chapter_and_cleans_up() -> None:
    out = run_demo("demo.sh", "ip link show cni0 2>&1; ip netns list", timeout=120)
    for expected in (
        "$ export CNI_COMMAND=ADD CNI_CONTAINERID=test123 CNI_NETNS=/var/run/netns/test-cni CNI_IFNAME=eth0",
        '"address": "10.22.0.2/16"',
        "inet 10.22.0.2/16",
        "default via 10.22.0.1 dev eth0",
        "master cni0 state forwarding",
        "3 packets transmitted, 3 received",
        "$ pycni add mynet /var/run/netns/test-cni",
        '"address": "10.22.0.3/16"',
        "(CHECK passed",
        "demo finished: everything it created is gone",
    ):
        assert expected in out, expected
    assert 'Device "cni0" does not exist' in out  # after the demo: no bridge, no namespace
    assert "test-cni" not in out.split("demo finished")[1]


def test_demo_refuses_to_touch_an_existing_bridge() -> None:
    script = "ip link add cni0 type bridge && scripts/demo.sh; echo rc=$?; ip -brief link show cni0"
    proc = subprocess.run(
        [str(ROOT / "scripts" / "in-netns.sh"), "bash", "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert "rc=1" in proc.stdout and "cni0" in proc.stdout.split("rc=1")[1]
    assert "already exists" in proc.stderr
