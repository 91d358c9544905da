"""flanneld's command line, as main.go defines it with Go's `flag` package, and the
environment forms `flagutil.SetFlagsFromEnv(flannelFlags, "FLANNELD")` reads: every flag not
given on the command line takes `FLANNELD_<NAME>` (upper case, `-` as `_`) when that is set
and not empty (`--etcd-endpoints` <- `FLANNELD_ETCD_ENDPOINTS`, `-v` <- `FLANNELD_V`).

Go's syntax: `-flag` or `--flag`; `-flag=value` or `-flag value` (not for booleans, which take
`-flag=false`); parsing stops at `--` or the first non-flag argument. Repeatable flags
(`--iface`, `--iface-regex`) collect every occurrence; from the environment they take the one
value as given, as flannel does.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "FLANNELD"


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str  # "string", "bool", "int", "list"
    default: Any
    help: str


FLAGS = (
    Flag("etcd-endpoints", "string", "http://127.0.0.1:4001,http://127.0.0.1:2379", "a comma-delimited list of etcd endpoints"),
    Flag("etcd-prefix", "string", "/coreos.com/network", "etcd prefix"),
    Flag("etcd-keyfile", "string", "", "SSL key file used to secure etcd communication"),
    Flag("etcd-certfile", "string", "", "SSL certification file used to secure etcd communication"),
    Flag("etcd-cafile", "string", "", "SSL Certificate Authority file used to secure etcd communication"),
    Flag("etcd-username", "string", "", "username for BasicAuth to etcd"),
    Flag("etcd-password", "string", "", "password for BasicAuth to etcd"),
    Flag("iface", "list", (), "interface to use (IP or name) for inter-host communication. Can be specified multiple times"),
    Flag(
        "iface-regex",
        "list",
        (),
        "regex expression to match the first interface to use (IP or name) for inter-host communication",
    ),
    Flag(
        "iface-can-reach", "string", "", "detect interface to use (IP or name) for inter-host communication by a route to this IP"
    ),
    Flag(
        "subnet-file", "string", "/run/flannel/subnet.env", "filename where env variables (subnet, MTU, ... ) will be written to"
    ),
    Flag("public-ip", "string", "", "IP accessible by other nodes for inter-host communication"),
    Flag("public-ipv6", "string", "", "IPv6 accessible by other nodes for inter-host communication"),
    Flag("subnet-lease-renew-margin", "int", 60, "subnet lease renewal margin, in minutes, ranging from 1 to 1439"),
    Flag("ip-masq", "bool", False, "setup IP masquerade rule for traffic destined outside of overlay network"),
    Flag("ip-masq-fully-random-disable", "bool", False, "disable fully-random mode for MASQUERADE"),
    Flag("kube-subnet-mgr", "bool", False, "contact the Kubernetes API for subnet assignment instead of etcd (not supported)"),
    Flag("kube-api-url", "string", "", "Kubernetes API server URL (not supported)"),
    Flag("kube-annotation-prefix", "string", "flannel.alpha.coreos.com", "Kubernetes annotation prefix (not supported)"),
    Flag("kubeconfig-file", "string", "", "kubeconfig file location (not supported)"),
    Flag("version", "bool", False, "print version and exit"),
    Flag("healthz-ip", "string", "0.0.0.0", "the IP address for healthz server to listen"),
    Flag("healthz-port", "int", 0, "the port for healthz server to listen(0 to disable)"),
    Flag("metrics-address", "string", "", "serve Prometheus metrics on HOST:PORT, apart from healthz (pycni's; empty: off)"),
    Flag("iptables-resync", "int", 5, "resync period for the masquerade and forward rules (nftables), in seconds"),
    Flag("iptables-forward-rules", "bool", True, "add default accept rules to the forward chain"),
    Flag("ip-blackhole-route", "bool", False, "add blackroute route ont the node for the local podCIDR (not supported)"),
    Flag("net-config-path", "string", "/etc/kube-flannel/net-conf.json", "path to the network configuration file (kube only)"),
    Flag("set-node-network-unavailable", "bool", True, "set NodeNetworkUnavailable after ready (kube only)"),
    Flag("v", "int", 0, "number for the log level verbosity"),
    Flag("vmodule", "string", "", "comma-separated list of pattern=N settings for file-filtered logging"),
    Flag("log_backtrace_at", "string", "", "when logging hits line file:N, emit a stack trace"),
)
_BY_NAME = {f.name: f for f in FLAGS}


class FlagError(ValueError):
    """A bad command line or FLANNELD_* variable (the message names it)."""


class HelpRequested(Exception):
    pass


def _convert(flag: Flag, text: str, source: str) -> Any:
    if flag.kind == "bool":
        value: bool | None = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}.get(text)
        if value is None and text in ("0", "f", "F", "FALSE", "false", "False"):
            value = False
        if value is None:
            raise FlagError(f"invalid boolean value {text!r} for {source}")
        return value
    if flag.kind == "int":
        try:
            return int(text, 0)
        except ValueError:
            raise FlagError(f"invalid value {text!r} for {source}: not an integer") from None
    return text


def parse(argv: Sequence[str], env: Mapping[str, str]) -> dict[str, Any]:
    """The options (keyed by flag name) from `argv` (without the program name) and `env`."""
    values: dict[str, Any] = {f.name: (list(f.default) if f.kind == "list" else f.default) for f in FLAGS}
    given: set[str] = set()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        body = arg[2:] if arg.startswith("--") else arg[1:]
        name, equals, text = body.partition("=")
        has_value = bool(equals)
        if name in ("h", "help"):
            raise HelpRequested()
        flag = _BY_NAME.get(name)
        if flag is None or not name or name.startswith("-"):
            raise FlagError(f"flag provided but not defined: -{name}")
        if not has_value and flag.kind != "bool":
            if not args:
                raise FlagError(f"flag needs an argument: -{name}")
            text, has_value = args.pop(0), True
        value = _convert(flag, text if has_value else "true", f"flag -{name}")
        if flag.kind == "list":
            values[name].append(value)
        else:
            values[name] = value
        given.add(name)
    for flag in FLAGS:
        variable = f"{ENV_PREFIX}_{flag.name.upper().replace('-', '_')}"
        text = env.get(variable, "")
        if flag.name in given or text == "":
            continue
        value = _convert(flag, text, variable)
        if flag.kind == "list":
            values[flag.name].append(value)
        else:
            values[flag.name] = value
    return values


def usage(program: str = "flanneld") -> str:
    lines = [f"Usage: {program} [OPTION]..."]
    for flag in FLAGS:
        kind = {"string": " string", "int": " int", "list": " value", "bool": ""}[flag.kind]
        lines.append(f"  -{flag.name}{kind}")
        shown = json.dumps(flag.default) if isinstance(flag.default, str | bool) else str(flag.default)
        default = "" if flag.default in ("", (), False, 0) else f" (default {shown})"
        lines.append(f"    \t{flag.help}{default}")
    lines.append(f"Every flag may also be set by {ENV_PREFIX}_<FLAG> (upper case, '-' as '_'), e.g. {ENV_PREFIX}_ETCD_ENDPOINTS.")
    return "\n".join(lines) + "\n"


def print_usage() -> None:
    sys.stderr.write(usage())
