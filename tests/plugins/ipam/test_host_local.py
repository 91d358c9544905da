"""host-local: the reference's allocator and on-disk store, byte for byte, and what it lacks
(GC, STATUS, clear errors, no allocation left behind by a failed ADD)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pycni import skel

from ...conftest import REFERENCE_DIR, normalize_result, run_plugin, unique_subnet, unique_subnet6


def conf(data_dir: Path, version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "pctnet",
        "type": "bridge",
        "ipam": {"type": "host-local", "dataDir": str(data_dir), **ipam},
    }


def call(command: str, config: dict[str, Any], container: str = "c1", ifname: str = "eth0", args: str = "") -> Any:
    """Run our host-local in-process; the parsed stdout (a result or an error), or None."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container,
        "CNI_NETNS": "/run/netns/pct-none",
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": "/nonexistent",
    }
    out = skel.dispatch("host-local", env, json.dumps(config).encode())
    return json.loads(out.stdout) if out.stdout else None


def nth(subnet: str, n: int) -> str:
    """The n-th address of a subnet, as text."""
    return str(ipaddress.ip_network(subnet)[n])


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name != "lock"}


def test_store_layout_is_the_reference_one(tmp_path: Path) -> None:
    subnet = unique_subnet()
    result = call("ADD", conf(tmp_path, subnet=subnet), container="abc")
    assert result["ips"] == [{"address": f"{nth(subnet, 2)}/24", "gateway": nth(subnet, 1)}]
    store = tmp_path / "pctnet"
    assert files(store) == {nth(subnet, 2): b"abc\r\neth0", "last_reserved_ip.0": nth(subnet, 2).encode()}
    assert oct((store / "lock").stat().st_mode & 0o777) == "0o750"
    assert oct((store / nth(subnet, 2)).stat().st_mode & 0o777) == "0o644"


def _two_families() -> list[list[dict[str, str]]]:
    v4, v6 = unique_subnet(29), unique_subnet6()
    return [[{"subnet": v4}], [{"subnet": v6, "rangeStart": nth(v6, 0x10), "rangeEnd": nth(v6, 0x12)}]]


def _two_ranges_in_a_set() -> list[list[dict[str, str]]]:
    a, b = unique_subnet(30), unique_subnet(29)
    return [[{"subnet": a}, {"subnet": b, "rangeStart": nth(b, 3), "rangeEnd": nth(b, 5), "gateway": nth(b, 4)}]]


@pytest.mark.reference
@pytest.mark.parametrize("ranges", [_two_families, _two_ranges_in_a_set])
def test_same_results_and_store_as_reference(tmp_path: Path, ranges: Any) -> None:
    """One sequence of operations against Go's host-local and ours: the same results, files and contents."""
    ranges = ranges()
    steps = [("ADD", "a"), ("ADD", "b"), ("DEL", "a"), ("ADD", "c"), ("ADD", "d"), ("DEL", "b"), ("ADD", "e"), ("DEL", "zz")]
    outputs: dict[str, list[Any]] = {}
    for impl in ("ours", "ref"):
        data = tmp_path / impl
        cfg = conf(data, ranges=ranges, routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24", "gw": "10.0.0.1"}])
        seen = []
        for command, container in steps:
            if impl == "ours":
                seen.append(call(command, cfg, container=container))
            else:
                run = run_plugin(Path(REFERENCE_DIR) / "host-local", command, cfg, container_id=container, netns="/x")
                seen.append(json.loads(run.stdout) if run.stdout else None)
        outputs[impl] = [normalize_result(o) if o and "ips" in o else o for o in seen]
        outputs[impl + "-files"] = [files(data / "pctnet")]  # type: ignore[list-item]
    assert outputs["ours"] == outputs["ref"]
    assert outputs["ours-files"] == outputs["ref-files"]


def test_round_robin_skips_gateway_and_wraps(tmp_path: Path) -> None:
    subnet = unique_subnet(29)  # .1 gateway, .2-.6 usable
    got = [call("ADD", conf(tmp_path, subnet=subnet), container=f"c{i}")["ips"][0]["address"] for i in range(5)]
    assert got == [f"{nth(subnet, n)}/29" for n in (2, 3, 4, 5, 6)]
    call("DEL", conf(tmp_path, subnet=subnet), container="c1")
    assert call("ADD", conf(tmp_path, subnet=subnet), container="x")["ips"][0]["address"] == f"{nth(subnet, 3)}/29"


def test_exhaustion_names_the_range_and_status_reports_it(tmp_path: Path) -> None:
    subnet = unique_subnet(30)  # one usable address: .2 (.1 is the gateway)
    cfg = conf(tmp_path, subnet=subnet)
    assert call("STATUS", dict(cfg, cniVersion="1.1.0")) is None
    call("ADD", cfg, container="c1")
    err = call("ADD", cfg, container="c2")
    assert err["code"] == 103 and "no IP addresses available in range set" in err["msg"] and subnet in err["msg"]
    status = call("STATUS", dict(cfg, cniVersion="1.1.0"))
    assert status["code"] == 50 and subnet in status["msg"]


def test_failed_add_gives_back_what_it_took(tmp_path: Path) -> None:
    full, fresh = unique_subnet(30), unique_subnet6()
    call("ADD", conf(tmp_path, subnet=full), container="taker")
    cfg = conf(tmp_path, ranges=[[{"subnet": fresh}], [{"subnet": full}]])
    err = call("ADD", cfg, container="c2")
    assert err["code"] == 103 and err["msg"].startswith("failed to allocate for range 1:")
    assert [n for n in files(tmp_path / "pctnet") if not n.startswith("last")] == [nth(full, 2)]


def test_requested_ips_from_every_source(tmp_path: Path) -> None:
    v4, v6 = unique_subnet(), unique_subnet6()
    cfg = conf(tmp_path, ranges=[[{"subnet": v4}], [{"subnet": v6}]])
    out = call("ADD", cfg, container="a", args=f"IgnoreUnknown=1;IP={nth(v4, 40)};K8S_POD_NAME=x")
    assert out["ips"][0]["address"] == f"{nth(v4, 40)}/24"
    cfg_args = dict(cfg, args={"cni": {"ips": [nth(v4, 41), nth(v6, 0x41)]}})
    out = call("ADD", cfg_args, container="b")
    assert [ip["address"] for ip in out["ips"]] == [f"{nth(v4, 41)}/24", f"{nth(v6, 0x41)}/64"]
    cfg_rt = dict(cfg, runtimeConfig={"ips": [f"{nth(v4, 42)}/24"]})
    assert call("ADD", cfg_rt, container="c")["ips"][0]["address"] == f"{nth(v4, 42)}/24"


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        ("IP=192.0.2.77", 4, "is not in any range set"),
        ("IP={gateway}", 4, "is subnet's gateway"),
        ("IP={taken}", 102, "is not available"),
        ("IP=notanip", 4, "is not an IP address"),
        ("FOO=1", 4, "unknown key 'FOO'"),
    ],
)
def test_bad_requested_ip_is_clear_and_allocates_nothing(tmp_path: Path, args: str, code: int, fragment: str) -> None:
    v4, v6 = unique_subnet(), unique_subnet6()
    cfg = conf(tmp_path, ranges=[[{"subnet": v6}], [{"subnet": v4}]])
    call("ADD", cfg, container="holder", args=f"IP={nth(v4, 50)}")
    before = files(tmp_path / "pctnet")
    err = call("ADD", cfg, container="c2", args=args.format(gateway=nth(v4, 1), taken=nth(v4, 50)))
    assert err["code"] == code and fragment in err["msg"], err
    assert files(tmp_path / "pctnet") == before


@pytest.mark.parametrize(
    ("ipam", "fragment"),
    [
        ({"subnet": "10.250.0.0/31"}, "too small to allocate from"),
        ({"subnet": "10.250.0.5/24"}, "has host bits set: did you mean 10.250.0.0/24"),
        ({"ranges": [[{"subnet": "10.250.0.0/24"}, {"subnet": "10.250.0.0/25"}]]}, "overlap"),
        ({"ranges": [[{"subnet": "10.250.0.0/24"}], [{"subnet": "10.250.0.128/25"}]]}, "overlaps with"),
        ({"ranges": [[{"subnet": "10.250.0.0/24", "gateway": "10.9.0.1"}]]}, "gateway 10.9.0.1 not in network"),
        ({"ranges": [[{"subnet": "10.250.0.0/24", "rangeStart": "10.250.0.9", "rangeEnd": "10.250.0.3"}]]}, "before rangeStart"),
        ({"ranges": [[{"subnet": "10.250.0.0/24"}, {"subnet": "fd00::/64"}]]}, "mixed address families"),
        ({"ranges": []}, "no IP ranges specified"),
        ({"ranges": [[{"subnet": "nonsense"}]]}, "is not a network in CIDR notation"),
    ],
)
def test_bad_ranges_are_code_7_naming_the_range(tmp_path: Path, ipam: dict[str, Any], fragment: str) -> None:
    err = call("ADD", conf(tmp_path, **ipam))
    assert err["code"] == 7 and fragment in err["msg"], err
    assert not (tmp_path / "pctnet").exists()


def test_legacy_version_refuses_two_addresses_of_a_family(tmp_path: Path) -> None:
    err = call("ADD", conf(tmp_path, "0.2.0", ranges=[[{"subnet": unique_subnet()}], [{"subnet": "10.249.0.0/24"}]]))
    assert err["code"] == 7 and "does not support more than 1 address per family" in err["msg"]


def test_del_releases_by_container_and_ifname_and_understands_the_old_format(tmp_path: Path) -> None:
    subnet = unique_subnet()
    cfg = conf(tmp_path, subnet=subnet)
    call("ADD", cfg, container="c1", ifname="eth0")
    call("ADD", cfg, container="c1", ifname="eth1")
    (tmp_path / "pctnet" / nth(subnet, 99)).write_text("c1")  # written by a version without ifname
    call("DEL", cfg, container="c1", ifname="eth0")
    assert sorted(n for n in files(tmp_path / "pctnet") if n[0].isdigit()) == [nth(subnet, 3), nth(subnet, 99)]
    call("DEL", cfg, container="c1", ifname="eth1")
    assert sorted(n for n in files(tmp_path / "pctnet") if n[0].isdigit()) == [nth(subnet, 99)]
    call("DEL", cfg, container="c1", ifname="eth9")  # no file in the new format: the old one goes
    assert not [n for n in files(tmp_path / "pctnet") if n[0].isdigit()]
    assert call("DEL", cfg, container="c1") is None  # idempotent


def test_del_with_a_broken_config_still_releases(tmp_path: Path) -> None:
    subnet = unique_subnet()
    call("ADD", conf(tmp_path, subnet=subnet), container="c1")
    assert call("DEL", conf(tmp_path, subnet="10.250.0.0/31"), container="c1") is None
    assert not [n for n in files(tmp_path / "pctnet") if n[0].isdigit()]


def test_gc_releases_everything_not_valid(tmp_path: Path) -> None:
    subnet = unique_subnet()
    cfg = conf(tmp_path, "1.1.0", subnet=subnet)
    for container, ifname in (("keep", "eth0"), ("keep", "eth1"), ("gone", "eth0")):
        call("ADD", cfg, container=container, ifname=ifname)
    (tmp_path / "pctnet" / nth(subnet, 90)).write_text("old-keep")
    (tmp_path / "pctnet" / nth(subnet, 91)).write_text("old-gone")
    valid = [{"containerID": "keep", "ifname": "eth0"}, {"containerID": "old-keep", "ifname": "eth0"}]
    assert call("GC", dict(cfg, **{"cni.dev/valid-attachments": valid})) is None
    left = {n: v for n, v in files(tmp_path / "pctnet").items() if n[0].isdigit()}
    assert left == {nth(subnet, 2): b"keep\r\neth0", nth(subnet, 90): b"old-keep"}
    assert call("GC", dict(cfg, **{"cni.dev/attachments": []})) is None  # libcni's older key
    assert not [n for n in files(tmp_path / "pctnet") if n[0].isdigit()]


def test_check(tmp_path: Path) -> None:
    subnet = unique_subnet()
    cfg = conf(tmp_path, subnet=subnet)
    missing = call("CHECK", cfg, container="c1")
    assert missing["code"] == 3 and "Failed to find address added by container c1" in missing["msg"]
    result = call("ADD", cfg, container="c1")
    assert call("CHECK", dict(cfg, prevResult=result), container="c1") is None
    wrong = dict(result, ips=[{"address": f"{nth(subnet, 77)}/24"}])
    assert call("CHECK", dict(cfg, prevResult=wrong), container="c1")["code"] == 3


def test_resolv_conf_and_routes(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# comment\nnameserver 192.0.2.53\nnameserver 2001:db8::53\ndomain example.test\n"
        "search a.test b.test\noptions ndots:2 rotate\n"
    )
    cfg = conf(tmp_path, subnet=unique_subnet(), resolvConf=str(resolv), routes=[{"dst": "192.0.2.0/24", "gw": "10.0.0.9"}])
    out = call("ADD", cfg)
    assert out["dns"] == {
        "nameservers": ["192.0.2.53", "2001:db8::53"],
        "domain": "example.test",
        "search": ["a.test", "b.test"],
        "options": ["ndots:2", "rotate"],
    }
    assert out["routes"] == [{"dst": "192.0.2.0/24", "gw": "10.0.0.9"}]


def test_ip_ranges_capability_comes_first(tmp_path: Path) -> None:
    v4, cap = unique_subnet(), unique_subnet6()
    cfg = dict(conf(tmp_path, subnet=v4), runtimeConfig={"ipRanges": [[{"subnet": cap}]]})
    out = call("ADD", cfg)
    assert [ip["address"] for ip in out["ips"]] == [f"{nth(cap, 2)}/64", f"{nth(v4, 2)}/24"]


@pytest.mark.reference
def test_go_and_ours_allocate_concurrently_without_duplicates(tmp_path: Path, plugin_dir: Path) -> None:
    """2 x 50 processes, Go's host-local and ours, one data directory: 100 distinct addresses."""
    cfg = json.dumps(conf(tmp_path, subnet=unique_subnet())).encode()

    def add(i: int) -> tuple[str, str]:
        executable = os.path.join(REFERENCE_DIR, "host-local") if i % 2 else str(plugin_dir / "host-local")
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c{i}", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
        proc = subprocess.run([executable], input=cfg, capture_output=True, env=env, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout
        return f"c{i}", json.loads(proc.stdout)["ips"][0]["address"].split("/")[0]

    with ThreadPoolExecutor(max_workers=100) as pool:
        got = list(pool.map(add, range(100)))
    addresses = [ip for _, ip in got]
    assert len(set(addresses)) == 100
    store = files(tmp_path / "pctnet")
    for container, ip in got:
        assert store[ip] == f"{container}\r\neth0".encode()
    assert len([n for n in store if n[0].isdigit()]) == 100


def test_check_dual_stack(tmp_path: Path) -> None:
    cfg = conf(tmp_path, ranges=[[{"subnet": unique_subnet()}], [{"subnet": unique_subnet6()}]])
    result = call("ADD", cfg)
    assert call("CHECK", dict(cfg, prevResult=result)) is None


def test_an_address_file_always_names_its_holder(tmp_path: Path) -> None:
    """The holder goes to `.reserving`, which is then linked under the address's name: a process
    killed in between leaves no empty address file (one no DEL could give back), and what it
    left is removed by the next call that opens the store, Go's host-local ignores it."""
    subnet = unique_subnet()
    store = tmp_path / "pctnet"
    store.mkdir()
    (store / ".reserving").write_bytes(b"killed\r\neth0")  # a reservation killed before its link
    assert call("ADD", conf(tmp_path, subnet=subnet))["ips"][0]["address"] == f"{nth(subnet, 2)}/24"
    assert files(store) == {nth(subnet, 2): b"c1\r\neth0", "last_reserved_ip.0": nth(subnet, 2).encode()}
    os.link(store / nth(subnet, 2), store / ".reserving")  # killed after the link: the address is taken
    assert call("ADD", conf(tmp_path, subnet=subnet), container="c2")["ips"][0]["address"] == f"{nth(subnet, 3)}/24"
    assert (store / nth(subnet, 2)).read_bytes() == b"c1\r\neth0"  # never truncated through the old name
    assert ".reserving" not in files(store)
    call("DEL", conf(tmp_path, subnet=subnet))
    call("DEL", conf(tmp_path, subnet=subnet), container="c2")
    assert set(files(store)) == {"last_reserved_ip.0"}
