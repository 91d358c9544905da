"""The runtime runs chains as the spec and libcni say, checked with small recording plugins."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pycni.runtime import CNIConfig, GCArgs, RuntimeConf, cache
from pycni.spec.config import NetworkConfigList
from pycni.spec.errors import CNIError

from ..conftest import SHARED

FAKE = Path(__file__).with_name("fake_plugin.py")


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    source = FAKE.read_text()
    for name in ("fake-bridge", "fake-tuning", "fake-portmap", "fake-ipam"):
        target = directory / name
        target.write_text(f"#!{os.path.realpath(sys.executable)}\n{source}")
        target.chmod(target.stat().st_mode | stat.S_IXUSR)
    return directory


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "calls.jsonl"


def calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def spec_example(log: Path, version: str = "1.1.0", **extra: Any) -> NetworkConfigList:
    """The spec's example network `dbnet` (bridge, tuning, portmap), on recording plugins."""
    doc = {
        "cniVersion": version,
        "name": "dbnet",
        "plugins": [
            {
                "type": "fake-bridge",
                "bridge": "cni0",
                "keyA": ["some more", "plugin specific", "configuration"],
                "ipam": {"type": "host-local", "subnet": "10.1.0.0/16", "gateway": "10.1.0.1"},
                "dns": {"nameservers": ["10.1.0.1"]},
                "log": str(log),
                "result": {
                    "cniVersion": version,
                    "interfaces": [
                        {"name": "cni0", "mac": "00:11:22:33:44:55"},
                        {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                        {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"},
                    ],
                    "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dns": {"nameservers": ["10.1.0.1"]},
                },
            },
            {"type": "fake-tuning", "capabilities": {"mac": True}, "sysctl": {"net.core.somaxconn": "500"}, "log": str(log)},
            {"type": "fake-portmap", "capabilities": {"portMappings": True}, "log": str(log)},
        ],
    }
    doc.update(extra)
    return NetworkConfigList.from_bytes(json.dumps(doc).encode())


def runtime_conf(**extra: Any) -> RuntimeConf:
    values: dict[str, Any] = {
        "container_id": "ctr1",
        "netns": "/var/run/netns/blue",
        "ifname": "eth0",
        "args": [("argA", "foo")],
        "capability_args": {
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "mac": "00:11:22:33:44:66",
            "bandwidth": {"ingressRate": 1},
        },
    }
    values.update(extra)
    return RuntimeConf(**values)


def test_add_builds_each_request_as_the_spec_says(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "cache"))
    result = cni.add_network_list(spec_example(log), runtime_conf())
    seen = calls(log)
    assert [c["command"] for c in seen] == ["ADD", "ADD", "ADD"]
    bridge, tuning, portmap = (c["stdin"] for c in seen)
    # name and cniVersion inserted; capabilities never passed on; no prevResult for the first plugin
    assert bridge["name"] == "dbnet" and bridge["cniVersion"] == "1.1.0"
    assert "capabilities" not in tuning and "prevResult" not in bridge and "runtimeConfig" not in bridge
    # runtimeConfig holds only the capabilities the plugin declared
    assert tuning["runtimeConfig"] == {"mac": "00:11:22:33:44:66"}
    assert portmap["runtimeConfig"] == {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    assert tuning["prevResult"]["interfaces"][2]["sandbox"] == "/var/run/netns/blue"
    assert bridge["keyA"] == ["some more", "plugin specific", "configuration"]
    env = seen[0]["env"]
    assert env["CNI_ARGS"] == "argA=foo" and env["CNI_IFNAME"] == "eth0" and env["CNI_CONTAINERID"] == "ctr1"
    assert env["CNI_PATH"] == str(bin_dir)
    assert result.to_dict()["ips"] == [{"interface": 2, "address": "10.1.0.5/16", "gateway": "10.1.0.1"}]


def test_cache_file_is_libcni_format(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    net = spec_example(log)
    CNIConfig([str(bin_dir)], cache_dir=str(cache_dir)).add_network_list(net, runtime_conf())
    path = cache_dir / "results" / "dbnet-ctr1-eth0"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    doc = json.loads(path.read_text())
    assert list(doc) == ["kind", "containerId", "config", "ifName", "networkName", "netns", "cniArgs", "capabilityArgs", "result"]
    assert doc["kind"] == "cniCacheV1" and doc["cniArgs"] == [["argA", "foo"]]
    assert list(doc["result"]) == sorted(doc["result"])  # a Go map: sorted keys
    import base64

    assert base64.b64decode(doc["config"]) == net.raw_bytes


def test_del_runs_in_reverse_with_the_cached_result(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "cache"))
    net = spec_example(log)
    added = cni.add_network_list(net, runtime_conf())
    log.unlink()
    cni.del_network_list(net, runtime_conf())
    seen = calls(log)
    assert [c["stdin"]["type"] for c in seen] == ["fake-portmap", "fake-tuning", "fake-bridge"]
    assert all(c["stdin"]["prevResult"] == added.to_dict() for c in seen)
    assert not (tmp_path / "cache" / "results" / "dbnet-ctr1-eth0").exists()
    # DEL again: no cache, still every plugin, no prevResult, success
    log.unlink()
    cni.del_network_list(net, runtime_conf())
    assert [("prevResult" in c["stdin"]) for c in calls(log)] == [False, False, False]


def test_corrupt_cache_does_not_block_del(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "cache"))
    net = spec_example(log)
    cni.add_network_list(net, runtime_conf())
    cached = tmp_path / "cache" / "results" / "dbnet-ctr1-eth0"
    cached.write_text('{"kind": "cniCacheV1", "result": {"ips": [{"address": "garbage"}]}}')
    log.unlink()
    cni.del_network_list(net, runtime_conf())
    assert len(calls(log)) == 3 and not cached.exists()


def test_check_uses_cache_and_respects_disable_check(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "cache"))
    net = spec_example(log)
    added = cni.add_network_list(net, runtime_conf())
    log.unlink()
    cni.check_network_list(net, runtime_conf())
    assert [c["command"] for c in calls(log)] == ["CHECK"] * 3
    assert calls(log)[0]["stdin"]["prevResult"] == added.to_dict()
    log.unlink()
    cni.check_network_list(spec_example(log, disableCheck=True), runtime_conf())
    assert calls(log) == []


def test_check_errors(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CNIError, match="does not support the CHECK command"):
        cni.check_network_list(spec_example(log, version="0.3.1"), runtime_conf())
    with pytest.raises(CNIError, match="CHECK needs the result of its ADD"):
        cni.check_network_list(spec_example(log), runtime_conf())


def test_failing_plugin_stops_add_with_its_code(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    net = spec_example(log)
    net.plugins[1].update(failOn="ADD", failCode=11, failMsg="busy")
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CNIError) as exc:
        cni.add_network_list(net, runtime_conf())
    assert exc.value.code == 11
    assert str(exc.value) == 'plugin type="fake-tuning" failed (add): busy'
    assert [c["stdin"]["type"] for c in calls(log)] == ["fake-bridge", "fake-tuning"]
    assert not (tmp_path / "cache" / "results").exists()


def test_garbage_output_is_reported(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    net = spec_example(log)
    net.plugins[0].update(garbage="panic: runtime error", garbageExit=2)
    with pytest.raises(CNIError, match="panic: runtime error"):
        CNIConfig([str(bin_dir)], cache_dir=str(tmp_path)).add_network_list(net, runtime_conf())


def test_missing_plugin(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    net = spec_example(log)
    net.plugins[2]["type"] = "nonexistent"
    with pytest.raises(CNIError, match='failed to find plugin "nonexistent"'):
        CNIConfig([str(bin_dir)], cache_dir=str(tmp_path)).add_network_list(net, runtime_conf())


def test_timeout_kills_the_whole_process_group(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    net = spec_example(log)
    child_pid = tmp_path / "child.pid"
    net.plugins[0].update(sleep=30, childPid=str(child_pid))
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path), timeout=1.5)
    started = time.monotonic()
    with pytest.raises(CNIError) as exc:
        cni.add_network_list(net, runtime_conf())
    assert exc.value.code == 11 and "timed out" in exc.value.msg
    assert time.monotonic() - started < 10
    pid = int(child_pid.read_text())
    assert _dead(pid), "the plugin's child survived the timeout"


def _dead(pid: int) -> bool:
    """Gone, or a zombie waiting for init to reap it (killed all the same)."""
    for _ in range(50):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_gc_deletes_stale_cached_attachments_then_gcs_every_plugin(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "cache"))
    net = spec_example(log)
    for cid in ("keep", "stale"):
        cni.add_network_list(net, runtime_conf(container_id=cid))
    log.unlink()
    errors = cni.gc_network_list(net, GCArgs(valid_attachments=[("keep", "eth0")]))
    assert errors == []
    seen = calls(log)
    dels = [c for c in seen if c["command"] == "DEL"]
    gcs = [c for c in seen if c["command"] == "GC"]
    assert {c["env"]["CNI_CONTAINERID"] for c in dels} == {"stale"} and len(dels) == 3
    assert dels[0]["env"]["CNI_ARGS"] == "argA=foo"  # the cached runtime arguments are reused
    assert len(gcs) == 3
    for c in gcs:
        assert c["stdin"]["cni.dev/valid-attachments"] == [{"containerID": "keep", "ifname": "eth0"}]
        assert c["stdin"]["cni.dev/attachments"] == c["stdin"]["cni.dev/valid-attachments"]
        assert "prevResult" not in c["stdin"] and "runtimeConfig" not in c["stdin"]
    assert [a.container_id for a in cache.list_attachments(str(tmp_path / "cache"))] == ["keep"]


def test_gc_continues_past_errors(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    net = spec_example(log)
    net.plugins[0].update(failOn="GC", failMsg="bridge gc failed")
    net.plugins[2].update(failOn="GC", failMsg="portmap gc failed")
    errors = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path)).gc_network_list(net, GCArgs())
    assert [e.msg for e in errors] == [
        "failed to GC plugin fake-bridge: bridge gc failed",
        "failed to GC plugin fake-portmap: portmap gc failed",
    ]
    assert len([c for c in calls(log) if c["command"] == "GC"]) == 3


def test_gc_and_status_before_1_1_0_do_not_call_plugins(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path))
    net = spec_example(log, version="1.0.0")
    assert cni.gc_network_list(net, GCArgs()) == []
    cni.status_network_list(net)
    assert calls(log) == []


def test_gc_says_what_it_did(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    """The cached attachments found, valid and DEL'd; a plugin that is not pycni's reports nothing
    and never sees the report's variable (even one the caller's environment has)."""
    env = {**os.environ, "PYCNI_GC_REPORT": "1"}
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "cache"), base_env=env)
    net = spec_example(log)
    net.plugins[2].update(failOn="GC", failMsg="portmap gc failed")
    for cid in ("keep", "stale1", "stale2"):
        cni.add_network_list(net, runtime_conf(container_id=cid))
    outcome = cni.collect_garbage(net, GCArgs(valid_attachments=[("keep", "eth0"), ("gone", "eth0")]))
    assert (outcome.skipped, outcome.cached, outcome.valid) == ("", 3, 1)
    assert outcome.stale == [("stale1", "eth0", ""), ("stale2", "eth0", "")]
    assert [(p.plugin, p.ours, p.sections) for p in outcome.plugins] == [
        ("fake-bridge", False, None),
        ("fake-tuning", False, None),
        ("fake-portmap", False, None),
    ]
    failed = outcome.plugins[2].error
    assert failed is not None and failed.msg == "portmap gc failed"
    assert [e.msg for e in outcome.errors] == ["failed to GC plugin fake-portmap: portmap gc failed"]
    gcs = [c for c in calls(log) if c["command"] == "GC"]
    assert len(gcs) == 3 and all("PYCNI_GC_REPORT" not in c["env"] for c in gcs)


def test_gc_does_nothing_with_disable_gc(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    """Not even the DEL of a stale cached attachment, as libcni's GCNetworkList."""
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "cache"))
    net = spec_example(log, version="1.1.0", disableGC=True)
    cni.add_network_list(net, runtime_conf(container_id="stale"))
    log.unlink()
    outcome = cni.collect_garbage(net, GCArgs())
    assert outcome.skipped.startswith("disableGC is true")
    assert (outcome.cached, outcome.stale, outcome.plugins, outcome.errors) == (0, [], [], [])
    assert calls(log) == []
    assert [a.container_id for a in cache.list_attachments(str(tmp_path / "cache"))] == ["stale"]


def test_gc_before_1_1_0_dels_stale_attachments_and_asks_no_plugin(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    """As libcni: the stale cached attachment is DEL'd whatever the version; the plugins' GC, a
    1.1.0 command, is not called, and the outcome says why."""
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path / "cache"))
    net = spec_example(log, version="1.0.0")
    cni.add_network_list(net, runtime_conf(container_id="stale"))
    log.unlink()
    outcome = cni.collect_garbage(net, GCArgs())
    assert (outcome.skipped, outcome.cached, outcome.stale, outcome.plugins) == ("", 1, [("stale", "eth0", "")], [])
    assert outcome.no_plugin_gc.startswith("cniVersion 1.0.0 has no GC")
    assert {c["command"] for c in calls(log)} == {"DEL"}
    assert cache.list_attachments(str(tmp_path / "cache")) == []


def test_status_stops_at_first_error(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    net = spec_example(log)
    net.plugins[1].update(failOn="STATUS", failCode=50, failMsg="no addresses left")
    with pytest.raises(CNIError) as exc:
        CNIConfig([str(bin_dir)], cache_dir=str(tmp_path)).status_network_list(net)
    assert exc.value.code == 50
    assert [c["stdin"]["type"] for c in calls(log)] == ["fake-bridge", "fake-tuning"]


def test_validate_reports_every_problem(bin_dir: Path, log: Path, tmp_path: Path) -> None:
    cni = CNIConfig([str(bin_dir)], cache_dir=str(tmp_path))
    net = spec_example(log)
    net.plugins[0]["ipam"]["type"] = "fake-ipam"
    assert cni.validate_network_list(net) == ["mac", "portMappings"]
    net.plugins[1]["type"] = "missing-one"
    (bin_dir / "fake-portmap.versions").write_text('["0.4.0"]')
    with pytest.raises(CNIError) as exc:
        cni.validate_network_list(net)
    assert "missing-one" in exc.value.msg and 'fake-portmap does not support config version "1.1.0"' in exc.value.msg


def test_libcni_fixture_cache_is_read(tmp_path: Path) -> None:
    fixtures = SHARED / "reference" / "fixtures"
    results = tmp_path / "results"
    results.mkdir()
    for src, name in (
        ("libcni-1.1.2-cache-fixture-net-fixturecontainer1-eth0.json", "fixture-net-fixturecontainer1-eth0"),
        ("libcni-1.1.2-cache-fixture-net-040-fixturecontainer1-net1.json", "fixture-net-040-fixturecontainer1-net1"),
    ):
        shutil.copy(fixtures / src, results / name)
    entry = cache.read(str(tmp_path), "fixture-net", "fixturecontainer1", "eth0")
    assert entry is not None
    assert entry.cni_args == [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web-0")]
    assert entry.capability_args == {"portMappings": [{"containerPort": 80, "hostPort": 18080, "protocol": "tcp"}]}
    net = NetworkConfigList.from_bytes(entry.config)
    assert net.plugin_types() == ["bridge", "portmap"]
    result = entry.result()
    assert result is not None and str(result.ips[0].address) == "10.77.0.2/24"
    # Re-encoding gives libcni's bytes back.
    original = (results / "fixture-net-fixturecontainer1-eth0").read_bytes()
    assert cache.encode(entry) == original
    old = cache.read(str(tmp_path), "fixture-net-040", "fixturecontainer1", "net1")
    assert old is not None and cache.encode(old) == (results / "fixture-net-040-fixturecontainer1-net1").read_bytes()
    assert {a.network for a in cache.list_attachments(str(tmp_path))} == {"fixture-net", "fixture-net-040"}
