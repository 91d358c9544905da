"""Hypothesis strategies for what a plugin reads: its configuration, its environment,
CNI_ARGS, prevResult, and the runtime's cache files.

Inputs are built around a configuration that works (so the fuzzer reaches past the
first check) and then broken: a key replaced by a value of another type, a value
at or past the edge of its range, a key removed, an unknown key added, a huge value,
deep nesting. Keys that name a file or directory get values that stay inside the
test's own directory (or are relative, and so land in the test's working directory,
which is that directory too): an accepted input must never write outside it.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from pycni.spec import version as versions
from pycni.spec.result import LEGACY_VERSIONS

# Keys whose value is a path on the host.
PATH_KEYS = frozenset(
    {
        "dataDir", "datastore_path", "mtu_file", "journal_dir", "ipam_lock_file", "log_file_path", "nodename_file",
        "resolvConf", "kernelpath", "etcd_key_file", "etcd_cert_file", "etcd_ca_cert_file", "kubeconfig",
    }
)  # fmt: skip
# Keys that name a host interface to act on: never drawn at random (a random name could be
# a real interface of the stand-in host, which host-device would then move away).
HOST_LINK_KEYS = frozenset({"master", "device", "bridge"})

HUGE_TEXT = "a" * 1_000_000
EDGE_TEXT = [
    "", " ", "\n", "\t", "\x00", "\x7f", "\u00e9", "\u2028", "\ud800", "\udcff", "\ufeff", "a" * 16, "a" * 300, HUGE_TEXT,
    "x\n", "fd00::1%x } ; flush ruleset",
    "-1", "0", "0x10", "1e3", "true", "null", "[]", "{}", "lo", "eth0", "IFNAME", "..", ".", "/", "../../etc/passwd",
    "fe80::1%eth0", "10.0.0.1/33", "10.0.0.1/24", "0.0.0.0/0", "::/0", "256.1.1.1", "::ffff:10.1.2.3", "01.2.3.4",
    "$(touch /tmp/pct-pwned)", "`id`", "; reboot", "a;b", "a\nb", "{", "}", '"', "'", "#", "\\", "%s%n", "a b",
    "ee:ee:ee:ee:ee:ee", "00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "02:00:00:00:00:0G", "tcp", "udp", "sctp", "icmp",
    "nftables", "iptables", "same-bridge", "isolated", "open", "embedded", "etcdv3", "kubernetes", "1.1.0", "0.1.0",
]  # fmt: skip
EDGE_NUMBERS = [
    -1, 0, 1, 2, 7, 15, 16, 68, 255, 256, 1280, 1500, 4094, 4095, 9000, 65535, 65536, 2**31 - 1, 2**31, 2**32,
    2**63, 2**64, -(2**63), 10**30, 10**4000, 0.5, 1.0, -0.0, 1e308, math.inf, -math.inf, math.nan,
]  # fmt: skip


def _deep(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


EDGE_OTHER: list[Any] = [None, True, False, [], {}, [None], [[]], {"": None}, _deep(60), list(range(2000))]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(EDGE_TEXT)
    | st.sampled_from(EDGE_NUMBERS)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


def path_values(root: str) -> st.SearchStrategy[Any]:
    """Values for a path key that never point outside `root` (relative ones resolve in it too)."""
    return st.sampled_from(
        [
            f"{root}/fuzzed",
            f"{root}/fuzzed/deeper/still",
            f"{root}/a/../b",
            f"{root}/fuzzed/",
            f"{root}//double",
            "relative/dir",
            "./here",
            "",
            f"{root}/nul\x00byte",
            f"{root}/" + "n" * 300,
            f"{root}/missing-file",
            f"{root}/file-not-dir",
        ]
    ) | st.sampled_from([None, 0, True, [], {}, [f"{root}/x"]])


def neighbours(old: Any) -> st.SearchStrategy[Any]:
    """Values near `old`: same type but past an edge, or the type a careless writer would use."""
    if isinstance(old, bool):
        return st.sampled_from([not old, "true", "false", 1, 0, None, "yes"])
    if isinstance(old, int):
        near = float(old) + 0.5 if abs(old) < 2**1000 else 0.5
        return st.sampled_from([old - 1, old + 1, -old, old * 1000, str(old), near, *EDGE_NUMBERS])
    if isinstance(old, str):
        return st.sampled_from(
            [old + "x", old[:-1], old.upper(), f" {old}", f"{old}\n", old * 50, old.replace(".", "/"), *EDGE_TEXT]
        )
    if isinstance(old, list):
        return st.sampled_from([[], old * 3, [old], old[:1], [None, *old], old[::-1]])
    if isinstance(old, dict):
        return st.sampled_from([{}, [old], {**old, "": old}, dict.fromkeys(old), {k: [v] for k, v in old.items()}])
    return st.sampled_from(EDGE_OTHER)


def _places(value: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in `value`, depth first."""
    if isinstance(value, dict):
        for key, child in value.items():
            out.append((value, key))
            _places(child, out)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out.append((value, index))
            _places(child, out)
    return out


KNOWN_KEYS = [
    "ipam", "type", "subnet", "ranges", "routes", "dns", "mtu", "master", "mode", "bridge", "isGateway", "ipMasq",
    "runtimeConfig", "portMappings", "bandwidth", "ips", "mac", "args", "cni", "sysctl", "prevResult", "capabilities",
    "cni.dev/valid-attachments", "vlan", "vlanId", "promisc", "txQLen", "snat", "conditionsV4", "ingressRate",
    "egressBurst", "hostPort", "containerPort", "protocol", "hostIP", "address", "gateway", "dst", "gw", "interfaces",
    "nodename", "datastore_type", "etcd_endpoints", "assign_ipv6", "ipv4_pools", "markBit", "ingressPolicy", "owner",
]  # fmt: skip


@st.composite
def mutate(draw: st.DrawFn, base: dict[str, Any], root: str, max_changes: int = 3) -> dict[str, Any]:
    """`base` with up to `max_changes` changes anywhere in it. Every drawn value is copied:
    later changes must not reach into the strategies' own objects (or an earlier draw)."""
    conf = copy.deepcopy(base)
    changes = 0 if draw(st.integers(min_value=0, max_value=4)) == 0 else draw(st.integers(1, max_changes))
    for _ in range(changes):
        places = _places(conf, [])
        op = draw(st.sampled_from(["replace", "replace", "neighbour", "neighbour", "delete", "insert", "edge"]))
        if op == "insert" or not places:
            target = draw(st.sampled_from([conf] + [c[k] for c, k in places if isinstance(c[k], dict)]))
            key = draw(st.sampled_from(KNOWN_KEYS) | st.text(max_size=12))
            target[key] = copy.deepcopy(draw(value_for(key, None, root)))
            continue
        container, key = draw(st.sampled_from(places))
        if op == "delete":
            del container[key]
        elif op == "neighbour":
            container[key] = copy.deepcopy(draw(neighbours(container[key])))
        elif op == "edge":
            container[key] = copy.deepcopy(draw(st.sampled_from(EDGE_TEXT + EDGE_NUMBERS + EDGE_OTHER)))
        else:
            container[key] = copy.deepcopy(draw(value_for(key, container[key], root)))
        if isinstance(key, str) and key in HOST_LINK_KEYS and isinstance(container.get(key), str):
            container[key] = _tame_link_name(container[key])
    return conf


def _tame_link_name(name: str) -> str:
    """A mutated host interface name, kept off the stand-in host's own links (lo is kept:
    it is a good test and nothing can move or enslave it)."""
    return name if name in ("lo", "") or not name.startswith(("uplink", "eth", "ifb")) else "pctnope" + name[:4]


def value_for(key: Any, old: Any, root: str) -> st.SearchStrategy[Any]:
    if isinstance(key, str) and key in PATH_KEYS:
        return path_values(root)
    if old is not None:
        return neighbours(old) | json_values
    return json_values


# -- raw stdin --------------------------------------------------------------------------------

RAW_STDIN = [
    b"",
    b" ",
    b"null",
    b"[]",
    b'"text"',
    b"{",
    b'{"cniVersion": "1.1.0", "name": "n", "type": "x"',
    b"\xff\xfe\x00",
    b"\xef\xbb\xbf{}",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"cniVersion": "1.1.0", "name": "n", "name": "m", "type": "t"}',
    b'{"cniVersion": 1.1, "name": "n"}',
    b'{"cniVersion": "1.1.0", "name": "n\\ud800"}',
    b'{"cniVersion": "1.1.0", "name": "ok", "x": "\\ud800"}',
    b'{"cniVersion": "1.1.0", "name": "ok", "x": NaN, "y": Infinity}',
    b'{"cniVersion": "1.1.0", "name": "ok", "n": 1' + b"0" * 5000 + b"}",
    '{"cniVersion": "1.1.0", "name": "ok"}'.encode("utf-16"),
]


def encode(conf: dict[str, Any]) -> bytes:
    """JSON the way a runtime writes it (NaN and the infinities as Python spells them)."""
    return json.dumps(conf).encode("utf-8", "surrogatepass")


def stdin_for(conf: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Mostly the (mutated) configuration; one time in eight, bytes that are not one."""

    @st.composite
    def pick(draw: st.DrawFn) -> bytes:
        kind = draw(st.integers(min_value=0, max_value=15))
        if kind == 0:
            return draw(st.sampled_from(RAW_STDIN))
        if kind == 1:
            return draw(st.binary(max_size=64))
        text = encode(draw(conf))
        return text[: max(1, len(text) // 2)] if kind == 2 else text

    return pick()


# -- the environment ---------------------------------------------------------------------------

COMMANDS = ["ADD", "ADD", "ADD", "ADD", "DEL", "DEL", "CHECK", "GC", "STATUS", "VERSION"]
GARBAGE_COMMANDS = ["", "add", "ADD ", "DELETE", "\x00", "ADD\n", "VERSIONS", "\udcff"]
CNI_VARS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
ENV_GARBAGE = [
    "", " ", "..", "../../x", "/", "/proc/self/ns/net", "/proc/1/ns/net", "/run/netns/pct-does-not-exist", "relative",
    "a" * 300, "a" * 16, "eth0/x", "eth 0", "eth0:1", "\udcff", "e\u00e9", "-", "_a", ".hidden", "x;y", "lo", "abc\n",
]  # fmt: skip


def cni_args(known_values: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """CNI_ARGS: KEY=VALUE pairs of keys plugins know (and some they do not), or garbage."""
    keys = [*known_values, "IgnoreUnknown", "K8S_POD_NAME", "K8S_POD_NAMESPACE", "K8S_POD_INFRA_CONTAINER_ID", "FOO"]
    pair = st.tuples(
        st.sampled_from(keys) | st.text(max_size=6),
        st.sampled_from([v for vs in known_values.values() for v in vs] + ["1", "true", "0", ""]) | st.text(max_size=12),
    )
    pairs = st.lists(pair, min_size=1, max_size=4).map(lambda ps: ";".join(f"{k}={v}" for k, v in ps))
    garbage = st.sampled_from(["=", ";;", "a", "a=b=c", "=x", "IP", "IgnoreUnknown=1;;"])
    return st.integers(min_value=0, max_value=7).flatmap(lambda n: st.just("") if n < 5 else (pairs if n < 7 else garbage))


@st.composite
def environment(draw: st.DrawFn, base: dict[str, str], args: st.SearchStrategy[str]) -> dict[str, str]:
    """A plugin's environment: `base` (what a runtime would pass), its command drawn, its
    CNI_ARGS drawn, and one time in four a variable missing, empty or garbage."""
    env = dict(base)
    garbage = draw(st.integers(min_value=0, max_value=19)) == 0
    env["CNI_COMMAND"] = draw(st.sampled_from(GARBAGE_COMMANDS if garbage else COMMANDS))
    env["CNI_ARGS"] = draw(args)
    broken = draw(st.lists(st.sampled_from(CNI_VARS[1:]), max_size=2, unique=True)) if draw(st.integers(0, 3)) == 0 else []
    for var in broken:
        choice = draw(st.sampled_from(["drop", "empty", "garbage", "text"]))
        if choice == "drop":
            env.pop(var, None)
        elif choice == "empty":
            env[var] = ""
        elif choice == "garbage":
            env[var] = draw(st.sampled_from(ENV_GARBAGE))
        else:
            env[var] = draw(st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=20))
    return env


# -- results (prevResult, cache files) --------------------------------------------------------


@st.composite
def results(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """A result of any version built from `base` (a 1.1.0 result): converted, then maybe broken."""
    from pycni.spec.result import Result

    version = draw(st.sampled_from(versions.ALL_VERSIONS))
    parsed = Result.from_dict(base)
    try:
        shaped = parsed.to_dict(version)
    except Exception:  # noqa: BLE001 - a result that has no legacy form: keep the base shape
        shaped = dict(base)
    if version in LEGACY_VERSIONS and draw(st.booleans()):
        shaped["cniVersion"] = draw(st.sampled_from(versions.ALL_VERSIONS))  # a shape of another version
    return draw(mutate(shaped, "/nonexistent", max_changes=2))


def prev_result_strategy(base: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.one_of(results(base), results(base), st.sampled_from(EDGE_OTHER + EDGE_TEXT[:5]))


def with_prev_result(conf: st.SearchStrategy[dict[str, Any]], prev: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    def attach(pair: tuple[dict[str, Any], Any]) -> dict[str, Any]:
        c, p = pair
        return {**c, "prevResult": p}

    return st.tuples(conf, prev).map(attach)


Factory = Callable[[], dict[str, Any]]
