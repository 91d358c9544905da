"""GC everywhere (spec 1.1.0): what a crashed ADD left, and no DEL ever came for, is collected by
`pycni gc <net>` (the CLI: valid = the cached attachments whose namespace still exists).

Each chain gets a resident container (added through the runtime: cached, valid). Then
containers are leaked on purpose: their ADD is killed (`PYCNI_FAULT`) at its first fault
point, in the middle and at its last (everything set up, nothing cached), and they go away
(their namespaces are deleted) without a DEL, as after a node's crash. The host must hold
something of them (GC has work to do), `pycni gc` must leave exactly what was there before
they came, and the resident must still pass CHECK. host-device lends a device: its
containers stay, and GC must take the device back out of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from . import hoststate
from . import lab as L

# Per chain: the kinds of state its leaked containers must have left (so GC had work to do),
# and whether the containers stay (host-device: GC must move the device out of them).
CHAINS = {
    "bridge": ({"file", "nft", "link", "qdisc"}, False),
    "ptp": ({"file", "nft"}, False),
    "calico": ({"calico", "nft", "link"}, False),
    "host-device": ({"file", "link"}, True),
}


def pycni_gc(lab: L.Lab, chain: L.Chain, netdir: Path) -> subprocess.CompletedProcess[str]:
    env = {**lab.env(chain, agent=False), "NETCONFPATH": str(netdir), "CNI_PATH": str(lab.bin), "CNI_CACHE_DIR": str(lab.cache)}
    argv = [sys.executable, "-m", "pycni.cli.main", "gc", chain.network]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120)


@pytest.mark.parametrize("kind", list(CHAINS))
def test_gc_collects_what_crashed_adds_left(kind: str, lab: L.Lab, tmp_path: Path) -> None:
    expected_kinds, containers_stay = CHAINS[kind]
    chain = L.BUILDERS[kind](lab, lab.root)
    netdir = tmp_path / "net.d"
    netdir.mkdir()
    (netdir / f"{chain.network}.conflist").write_text(json.dumps(chain.conf))
    try:
        with L.resident(lab, chain) as kept:
            points = L.points(lab, chain)
            chosen = (points[0], points[len(points) // 2], points[-1])
            leaked = [chain.new_attachment() for _ in chosen]
            try:
                places = L.places_of(kept)
                before = hoststate.take(places)
                for att, point in zip(leaked, chosen, strict=True):
                    with pytest.raises(Exception, match="exit status -9"):
                        L.add(lab, att, PYCNI_FAULT=point)
                if not containers_stay:
                    for att in leaked:
                        subprocess.run(["ip", "netns", "del", att.ns.name], check=True)
                left = hoststate.difference(before, hoststate.take(places))
                assert expected_kinds <= {line.split()[1] for line in left}, left
                out = pycni_gc(lab, chain, netdir)
                assert out.returncode == 0, out.stdout + out.stderr
                assert hoststate.difference(before, hoststate.take(places)) == []
                # The resident is valid: GC left it alone.
                lab.runtime(lab.env(chain, agent=False)).check_network_list(kept.net(), kept.rt())
            finally:
                for att in leaked:
                    chain.discard(att)
    finally:
        chain.close()
    assert not os.path.exists(lab.cache / "results" / f"{chain.network}-{leaked[0].container_id}-eth0")
