"""The GC report side channel: asked for, a plugin's GC says what it released in one stderr line;
not asked for, nothing changes; a delegate's releases are marked with who delegated."""

from __future__ import annotations

import json
from pathlib import Path

from pycni import gcreport, skel


def _host_local(tmp_path: Path) -> bytes:
    return json.dumps(
        {
            "cniVersion": "1.1.0",
            "name": "rep",
            "type": "host-local",
            "ipam": {"type": "host-local", "subnet": "10.250.7.0/24", "dataDir": str(tmp_path)},
            gcreport_key(): [{"containerID": "keep", "ifname": "eth0"}],
        }
    ).encode()


def gcreport_key() -> str:
    from pycni.spec.gc import VALID_ATTACHMENTS_KEY

    return VALID_ATTACHMENTS_KEY


def _env(command: str, container_id: str = "", **extra: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_IFNAME": "eth0", "CNI_PATH": ""}
    if command == "ADD":
        env["CNI_NETNS"] = "/run/netns/pct-gcreport-none"
    env.update(extra)
    return env


def test_host_local_reports_the_addresses_it_released(tmp_path: Path) -> None:
    conf = _host_local(tmp_path)
    for cid in ("keep", "gone"):
        assert skel.dispatch("host-local", _env("ADD", cid), conf).code == 0
    quiet = skel.dispatch("host-local", _env("GC"), conf)  # not asked: the answer is the spec's alone
    assert (quiet.code, quiet.stdout, quiet.stderr) == (0, b"", b"")
    assert skel.dispatch("host-local", _env("ADD", "gone2"), conf).code == 0  # 10.250.7.4: round-robin
    told = skel.dispatch("host-local", _env("GC", **{gcreport.REPORT_ENV: "1"}), conf)
    assert (told.code, told.stdout) == (0, b"")
    assert told.stderr.startswith(gcreport.PREFIX) and told.stderr.endswith(b"\n")
    assert gcreport.parse(told.stderr) == [{"plugin": "host-local", "released": {"address": ["10.250.7.4"]}}]
    again = skel.dispatch("host-local", _env("GC", **{gcreport.REPORT_ENV: "1"}), conf)
    assert gcreport.parse(again.stderr) == [{"plugin": "host-local", "released": {}}]


def test_a_failed_gc_still_reports_and_answers_its_error(tmp_path: Path) -> None:
    conf = json.loads(_host_local(tmp_path))
    conf[gcreport_key()] = "not a list"
    out = skel.dispatch("host-local", _env("GC", **{gcreport.REPORT_ENV: "1"}), json.dumps(conf).encode())
    assert out.code == 1 and json.loads(out.stdout)["code"] == 7
    assert gcreport.parse(out.stderr) == [{"plugin": "host-local", "released": {}}]


def test_delegates_are_marked_and_a_silent_one_reports_nothing() -> None:
    with gcreport.reporting() as report, gcreport.plugin("bridge"):
        gcreport.released("ipMasq rule", "10.0.0.5")
        with gcreport.plugin("host-local"):
            gcreport.released("address", "10.0.0.5")
        gcreport.delegate_report("static", b"some log line\n")
        gcreport.delegate_report("other", gcreport.Report().line())
        gcreport.released("ipMasq rule", "10.0.0.6")
    assert report.sections == [
        {"plugin": "bridge", "released": {"ipMasq rule": ["10.0.0.5", "10.0.0.6"]}},
        {"plugin": "host-local", "via": "bridge", "released": {"address": ["10.0.0.5"]}},
        {"plugin": "static", "via": "bridge", "released": None},
    ]
    gcreport.released("address", "outside any report")  # a no-op, not an error


def test_parse_takes_only_a_well_formed_line() -> None:
    good = gcreport.PREFIX + b'{"plugins":[{"plugin":"x","released":{"a":["1"]}}]}'
    assert gcreport.parse(b"log\n" + good + b"\n") == [{"plugin": "x", "released": {"a": ["1"]}}]
    for bad in (b"", b"nothing here", gcreport.PREFIX + b"{", gcreport.PREFIX + b'{"plugins":[{"released":{}}]}'):
        assert gcreport.parse(bad) is None
    assert gcreport.parse(gcreport.PREFIX + b'{"plugins":[{"plugin":"x","released":{"a":[1]}}]}') is None
    assert gcreport.without_line(b"one\n" + good + b"\ntwo") == b"one\ntwo"
