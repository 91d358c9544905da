"""`pycni gc` says what it did, on real chains with containers leaked on purpose.

Two leaks per case, as a node's crash leaves them: one container whose ADD completed and whose
namespace went away without a DEL (its cache entry stays: the runtime DELs it as stale), and
one whose cache entry went too (only the plugins' GC can find what it holds). A resident
container stays valid throughout. After `pycni gc` the host is exactly as before the leaks.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ..faults import conftest as faults_fixtures
from ..faults import hoststate
from ..faults import lab as L

lab = faults_fixtures.lab  # the fault lab's fixture: launchers, an agent, a runtime cache, one per module
NO_GC_DISABLED = "disableGC is true: the spec says runtimes must not call GC for this network"
NO_GC = 'cniVersion 1.0.0 has no GC (the spec added it in 1.1.0): put "1.1.0" in cniVersion or cniVersions'


def pycni_gc(
    lab: L.Lab, chain: L.Chain, conf: dict[str, Any], *flags: str, agent: bool = False, path: str = ""
) -> subprocess.CompletedProcess[str]:
    netdir = lab.root / f"net.d-{chain.network}"
    netdir.mkdir(exist_ok=True)
    (netdir / f"{chain.network}.conflist").write_text(json.dumps(conf))
    if agent:
        lab.agent.ensure()
    env = {
        **lab.env(chain, agent=agent),
        "NETCONFPATH": str(netdir),
        "CNI_PATH": path or str(lab.bin),
        "CNI_CACHE_DIR": str(lab.cache),
    }
    argv = [sys.executable, "-m", "pycni.cli.main", *flags, "gc", chain.network]
    return subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=180)


def leak(lab: L.Lab, chain: L.Chain, cached: bool, leaked: list[L.Attachment]) -> tuple[L.Attachment, Any]:
    """A container added through the runtime that goes away without a DEL; without `cached`,
    its cache entry goes too."""
    att = chain.new_attachment()
    leaked.append(att)
    result = L.add(lab, att)
    if not cached:
        os.unlink(lab.cache / "results" / f"{chain.network}-{att.container_id}-eth0")
    subprocess.run(["ip", "netns", "del", att.ns.name], check=True)
    # The kernel destroys a namespace (and the veth's host end with it) asynchronously.
    veth = host_side(chain, result)[0]
    deadline = time.monotonic() + 30
    while subprocess.run(["ip", "link", "show", "dev", veth], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, f"{veth} outlived its namespace"
        time.sleep(0.05)
    return att, result


@dataclass
class Scene:
    """A resident container and the host as it was with it alone; the leaked containers."""

    chain: L.Chain
    places: hoststate.Places
    before: hoststate.Snapshot
    stale: L.Attachment | None  # its cache entry stayed
    hidden: L.Attachment  # its cache entry went too
    result: Any  # the hidden one's ADD result

    def changes(self, since: hoststate.Snapshot | None = None) -> list[str]:
        return hoststate.difference(self.before if since is None else since, hoststate.take(self.places))


@contextlib.contextmanager
def leaks(lab: L.Lab, chain: L.Chain, stale: bool = True) -> Iterator[Scene]:
    leaked: list[L.Attachment] = []
    try:
        with L.resident(lab, chain) as kept:
            places = L.places_of(kept)
            before = hoststate.take(places)
            cached = leak(lab, chain, True, leaked)[0] if stale else None
            hidden, result = leak(lab, chain, False, leaked)
            yield Scene(chain, places, before, cached, hidden, result)
    finally:
        for att in leaked:
            chain.discard(att)
        chain.close()


def addresses(result: Any) -> list[str]:
    return sorted(str(ip.address.ip) for ip in result.ips)


def host_side(chain: L.Chain, result: Any) -> list[str]:
    """The host's interfaces of a result but the bridge: the veth, then the ifb when bandwidth
    is in the chain."""
    bridge = chain.conf["plugins"][0].get("bridge", "")
    return [str(i.name) for i in result.interfaces if not i.sandbox and i.name != bridge]


def named(line: str, head: str) -> list[str]:
    """The items a report line names after `head`, sorted (a plugin releases in its own order)."""
    assert line.startswith(head + " (") and line.endswith(")"), line
    return sorted(line[len(head) + 2 : -1].split(", "))


def released(doc: dict[str, Any]) -> dict[str, dict[str, list[str]] | None]:
    """What each plugin released, keyed "plugin" or "plugin<via"."""
    out: dict[str, dict[str, list[str]] | None] = {}
    for section in doc["plugins"]:
        key = section["plugin"] + (f"<{section['via']}" if section.get("via") else "")
        out[key] = section["released"]
    return out


@pytest.mark.parametrize(
    "kind, agent, as_json",
    [("bridge", False, False), ("bridge", True, True), ("calico", False, True)],
    ids=["bridge-in-process-text", "bridge-agent-json", "calico-in-process-json"],
)
def test_gc_says_what_each_plugin_released(kind: str, agent: bool, as_json: bool, lab: L.Lab) -> None:
    with leaks(lab, L.BUILDERS[kind](lab, lab.root)) as scene:
        chain, stale, hidden = scene.chain, scene.stale, scene.hidden
        assert stale is not None
        out = pycni_gc(lab, chain, chain.conf, *(["--json"] if as_json else []), agent=agent)
        assert out.returncode == 0, out.stdout + out.stderr
        assert scene.changes() == []
        ips = addresses(scene.result)
        veth, ifb = host_side(chain, scene.result)
        mine = f"{hidden.container_id}/eth0"
        if not as_json:
            lines = out.stdout.splitlines()
            assert lines[0] == f"gc {chain.network}: 2 cached attachments, 1 valid, 1 stale (DEL'd: {stale.container_id}/eth0)"
            ipmasq, spoofchk = lines[1].split("; ")
            assert named(ipmasq, "bridge: released 2 ipMasq rules") == ips and spoofchk == f"1 macspoofchk rule ({veth})"
            assert named(lines[2], "host-local (via bridge): released 2 addresses") == ips
            assert lines[3:] == [
                f"portmap: released 1 port-mapped attachment ({mine})",
                f"bandwidth: released 1 ifb device ({ifb})",
                f"tuning: released 1 tuning record ({mine})",
                f"firewall: released 1 firewalled attachment ({mine})",
            ]
            return
        doc = json.loads(out.stdout)
        assert (doc["network"], doc["cniVersion"], doc["collected"]) == (chain.network, "1.1.0", True)
        assert (doc["cached"], doc["valid"]) == (2, 1)
        assert doc["stale"] == [{"containerID": stale.container_id, "ifname": "eth0", "deleted": True}]
        got = released(doc)
        if kind == "bridge":
            assert {k: sorted(v) for k, v in (got["bridge"] or {}).items()} == {"ipMasq rule": ips, "macspoofchk rule": [veth]}
            assert sorted((got["host-local<bridge"] or {})["address"]) == ips
            assert got["tuning"] == {"tuning record": [mine]}
            assert got["firewall"] == {"firewalled attachment": [mine]}
        else:
            (endpoint,) = (got["calico"] or {})["WorkloadEndpoint"]
            assert endpoint.endswith(f"-cni-{hidden.container_id}-eth0")
            assert sorted((got["calico-ipam<calico"] or {})["address"]) == ips
        assert got["portmap"] == {"port-mapped attachment": [mine]}
        assert got["bandwidth"] == {"ifb device": [ifb]}


def test_gc_with_disable_gc_or_before_1_1_0(lab: L.Lab) -> None:
    """disableGC: nothing touched. Below 1.1.0 (as libcni): the stale cached attachment is DEL'd,
    the plugins are not asked to collect (what only their GC finds stays), and it is said."""
    with leaks(lab, L.bridge_chain(lab, lab.root, meta=("portmap",))) as scene:
        chain, stale = scene.chain, scene.stale
        assert stale is not None
        leaked_state = hoststate.take(scene.places)
        stale_entry = lab.cache / "results" / f"{chain.network}-{stale.container_id}-eth0"
        disabled = {**chain.conf, "disableGC": True}
        out = pycni_gc(lab, chain, disabled)
        assert (out.returncode, out.stdout, out.stderr) == (0, f"gc {chain.network}: nothing collected: {NO_GC_DISABLED}\n", "")
        assert scene.changes(since=leaked_state) == [] and stale_entry.exists()
        # cniVersions selects 1.0.0, the highest it and cniVersion name.
        old = {**chain.conf, "cniVersion": "0.4.0", "cniVersions": ["0.4.0", "1.0.0"]}
        out = pycni_gc(lab, chain, old)
        assert (out.returncode, out.stderr) == (0, "")
        assert out.stdout.splitlines() == [
            f"gc {chain.network}: 2 cached attachments, 1 valid, 1 stale (DEL'd: {stale.container_id}/eth0)",
            f"plugins not asked to collect: {NO_GC}",
        ]
        assert not stale_entry.exists()
        assert scene.changes(since=leaked_state) != []  # the stale one's veth, addresses and rules went
        out = pycni_gc(lab, chain, old, "--json")
        doc = json.loads(out.stdout)
        assert (doc["collected"], doc["reason"], doc["stale"], doc["plugins"]) == (False, NO_GC, [], [])
        out = pycni_gc(lab, chain, old)
        assert out.stdout == f"gc {chain.network}: nothing collected: {NO_GC}\n"
        out = pycni_gc(lab, chain, chain.conf)
        assert out.returncode == 0, out.stdout + out.stderr
        assert scene.changes() == []


def test_a_reference_plugin_reports_nothing(lab: L.Lab) -> None:
    """Debian's sbr (1.1.1) in the chain: no report for it (and its GC fails: 1.1.1 has no GC),
    the others' reports and cleaning all the same; exit code and error as before."""
    with leaks(lab, L.bridge_chain(lab, lab.root, meta=("portmap",)), stale=False) as scene:
        chain = scene.chain
        conf = {**chain.conf, "plugins": [*chain.conf["plugins"], {"type": "sbr"}]}
        out = pycni_gc(lab, chain, conf, path=f"{lab.bin}:/usr/lib/cni")
        assert out.returncode == 1
        assert out.stderr.startswith("failed to GC plugin sbr: ") and out.stderr.count("\n") == 1
        lines = out.stdout.splitlines()
        assert lines[0] == f"gc {chain.network}: 1 cached attachment, 1 valid, 0 stale"
        assert named(lines[2], "host-local (via bridge): released 2 addresses") == addresses(scene.result)
        assert lines[-1].startswith("sbr: no report (not a pycni plugin); failed: ")
        assert scene.changes() == []
