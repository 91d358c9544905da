"""`pycni`: a drop-in for cnitool, plus validation, plugin installation and namespaces.

    pycni add|check|del|status <net> <netns>
    pycni gc <net> [<netns>] [--valid CONTAINERID/IFNAME ...] [--none-valid]
    pycni validate <net>
    pycni version [--plugin TYPE]
    pycni plugins install DIR [TYPE ...] [--agent-socket PATH]
    pycni plugins list
    pycni install-cni [--cni-bin-dir DIR ...] [--agent-socket PATH]   (Calico's install-cni)
    pycni netns add|del NAME
    pycni agent [--socket PATH] [--call-timeout S] [--idle-timeout S] [--log-file PATH] [--enable-fault-injection] ...

The environment is cnitool's: NETCONFPATH (default /etc/cni/net.d), CNI_PATH,
CNI_IFNAME (default eth0), CNI_ARGS, CAP_ARGS (JSON), and CNI_CACHE_DIR (default
/var/lib/cni). The container ID is cnitool's: "cnitool-" and the first 10 bytes
of sha512 of the namespace's absolute path, in hex.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pycni.spec import jsonfmt
from pycni.spec.errors import CNIError, Code

DEFAULT_NETCONFPATH = "/etc/cni/net.d"
DEFAULT_BIN_DIR = "/opt/cni/bin"


def container_id_for(netns: str) -> str:
    """cnitool's generated container ID for a namespace path."""
    return "cnitool-" + hashlib.sha512(os.path.abspath(netns).encode()).digest()[:10].hex()


def _parse_cni_args(text: str) -> list[tuple[str, str]]:
    """cnitool's parser: every `;`-separated item must be exactly KEY=VALUE, both non-empty."""
    pairs = []
    for pair in text.split(";"):
        kv = pair.split("=")
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f'invalid CNI_ARGS pair "{pair}"')
        pairs.append((kv[0], kv[1]))
    return pairs


class Env:
    """cnitool's environment."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.netdir = environ.get("NETCONFPATH") or DEFAULT_NETCONFPATH
        self.path = [p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p]
        self.ifname = environ.get("CNI_IFNAME", "eth0")  # set but empty stays empty, as in cnitool
        self.cache_dir = environ.get("CNI_CACHE_DIR") or "/var/lib/cni"
        raw_args = environ.get("CNI_ARGS", "")
        self.args = _parse_cni_args(raw_args) if raw_args else []
        caps = environ.get("CAP_ARGS", "")
        self.capability_args: dict[str, Any] = {}
        if caps:
            try:
                value = json.loads(caps)
            except ValueError as exc:
                raise CNIError(Code.DECODING_FAILURE, f"CAP_ARGS is not valid JSON: {exc}") from None
            if not isinstance(value, dict):
                raise CNIError(Code.DECODING_FAILURE, "CAP_ARGS must be a JSON object of capability arguments")
            self.capability_args = value


def _runtime(env: Env) -> Any:
    from pycni.runtime import CNIConfig

    return CNIConfig(env.path, cache_dir=env.cache_dir)


def _load(env: Env, name: str) -> Any:
    from pycni.spec.config import load_network

    return load_network(env.netdir, name)


def _rt(env: Env, netns: str) -> Any:
    from pycni.runtime import RuntimeConf

    netns_abs = os.path.abspath(netns)
    return RuntimeConf(
        container_id=container_id_for(netns_abs),
        netns=netns_abs,
        ifname=env.ifname,
        args=env.args,
        capability_args=env.capability_args,
    )


def _emit(text: str) -> None:
    """Print as cnitool does (no trailing newline), adding one on a terminal only."""
    sys.stdout.write(text + ("\n" if sys.stdout.isatty() else ""))
    sys.stdout.flush()


def cmd_attachment(opts: argparse.Namespace, env: Env) -> int:
    net = _load(env, opts.net)
    cni = _runtime(env)
    if opts.command == "status":
        cni.status_network_list(net)
        return 0
    rt = _rt(env, opts.netns)
    if opts.command == "add":
        result = cni.add_network_list(net, rt)
        rendered = result.to_dict()
        _emit(jsonfmt.dumps(rendered) if opts.json else jsonfmt.dumps_indent(rendered))
    elif opts.command == "check":
        cni.check_network_list(net, rt)
    else:
        cni.del_network_list(net, rt)
    return 0


def cmd_gc(opts: argparse.Namespace, env: Env) -> int:
    """GC a network. Unlike cnitool (which treats every attachment as stale and so
    deletes them all), the valid set is every cached attachment of the network
    whose namespace still exists, plus those named with --valid; --none-valid
    asks for cnitool's behaviour. Where cnitool prints nothing, pycni says what was
    collected (`pycni.cli.gc_output`)."""
    from pycni.cli import gc_output
    from pycni.net import netns as nsmod
    from pycni.runtime import GCArgs
    from pycni.runtime import cache as cachemod

    net = _load(env, opts.net)
    cni = _runtime(env)
    valid: list[tuple[str, str]] = []
    if not opts.none_valid:
        for entry in cachemod.list_attachments(env.cache_dir):
            if entry.network == net.name and entry.netns and nsmod.exists(entry.netns):
                valid.append((entry.container_id, entry.ifname))
    for item in opts.valid or []:
        cid, sep, ifname = item.partition("/")
        if not sep or not cid or not ifname:
            raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"--valid {item!r}: expected CONTAINERID/IFNAME")
        valid.append((cid, ifname))
    outcome = cni.collect_garbage(net, GCArgs(valid_attachments=valid))
    # What was done is said even when part of it failed; the exit code and error are as before.
    # A network GC does not apply to (disableGC, cniVersion below 1.1.0) exits 0 too: nothing
    # failed, and a periodic `pycni gc` over every network must not fail on such a network;
    # the line says that nothing was collected and why.
    if opts.json:
        report = jsonfmt.dumps(gc_output.to_dict(outcome))
        if outcome.errors:
            print(report, file=sys.stderr)  # stdout stays one JSON document: the error
        else:
            print(report)
    else:
        print("\n".join(gc_output.lines(outcome)))
    if outcome.errors:
        raise CNIError(outcome.errors[0].code, "; ".join(str(e) for e in outcome.errors))
    return 0


def cmd_validate(opts: argparse.Namespace, env: Env) -> int:
    net = _load(env, opts.net)
    caps = _runtime(env).validate_network_list(net)
    report = {
        "name": net.name,
        "cniVersion": net.cni_version,
        "plugins": net.plugin_types(),
        "capabilities": caps,
        "source": net.source,
        "warnings": net.warnings,
    }
    if opts.json:
        _emit(jsonfmt.dumps(report))
    else:
        print(
            f"network {net.name!r} ({net.source}) is valid: cniVersion {net.cni_version}, plugins {', '.join(net.plugin_types())}"
        )
        if caps:
            print(f"capabilities: {', '.join(caps)}")
        for warning in net.warnings:
            print(f"warning: {warning}")
    return 0


def cmd_version(opts: argparse.Namespace, env: Env) -> int:
    from pycni import __version__
    from pycni.spec import version as versions

    if opts.plugin:
        supported = _runtime(env).version_info(opts.plugin)
        info: dict[str, Any] = {"plugin": opts.plugin, "supportedVersions": supported}
        text = f"{opts.plugin}: CNI protocol versions supported: {', '.join(supported)}"
    else:
        info = {"version": __version__, "cniVersion": versions.CURRENT, "supportedVersions": list(versions.ALL_VERSIONS)}
        text = f"pycni {__version__}\nCNI protocol versions supported: {', '.join(versions.ALL_VERSIONS)}"
    print(jsonfmt.dumps(info) if opts.json else text)
    return 0


def cmd_plugins(opts: argparse.Namespace, env: Env) -> int:
    from pycni import launcher, registry

    if opts.action == "list":
        found = registry.discover()
        print(jsonfmt.dumps(found) if opts.json else "\n".join(found))
        return 0
    try:
        written = launcher.install(opts.dir, opts.types or None, agent_socket=opts.agent_socket)
    except ValueError as exc:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, str(exc)) from None
    except OSError as exc:
        raise CNIError(Code.IO_FAILURE, f"cannot install plugins into {opts.dir}: {exc.strerror}") from None
    print(jsonfmt.dumps(written) if opts.json else "\n".join(written))
    return 0


def cmd_install_cni(opts: argparse.Namespace, env: Env) -> int:
    """Calico's install-cni: the launchers into the CNI bin directory, the configuration from
    its template (the environment says which and fills its placeholders)."""
    from pycni.cli import install_cni

    try:
        path, text, written = install_cni.install(dict(os.environ), opts.cni_bin_dir or [DEFAULT_BIN_DIR], opts.agent_socket)
    except install_cni.InstallError as exc:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"install-cni: {exc}", "nothing was written") from None
    except OSError as exc:
        raise CNIError(Code.IO_FAILURE, f"install-cni: {exc.filename}: {exc.strerror}") from None
    if opts.json:
        print(jsonfmt.dumps({"conflist": path, "launchers": written}))
    else:
        print(f"Installed {len(written)} plugin launchers; created {path}:", file=sys.stderr)
        print(text)
    if os.environ.get("SLEEP", "false").lower() == "true":
        install_cni.sleep_until_stopped()
    return 0


def cmd_netns(opts: argparse.Namespace, env: Env) -> int:
    from pycni.net import netns as nsmod

    if opts.action == "add":
        print(nsmod.create_named(opts.name))
    else:
        nsmod.delete_named(opts.name)
    return 0


def cmd_agent(opts: argparse.Namespace, env: Env) -> int:
    """The resident agent, in the foreground (the systemd unit in contrib/ runs this)."""
    from pycni import logs
    from pycni.agent import server
    from pycni.agent.settings import DEFAULT_ON_DEMAND_IDLE as ON_DEMAND_IDLE_TIMEOUT

    if os.geteuid() != 0:
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, "pycni agent must run as root: plugins change the kernel's network")
    if opts.call_timeout <= 0 or opts.max_calls <= 0:
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, "--call-timeout and --max-calls must be positive")
    idle = opts.idle_timeout
    if idle is None:  # a managed agent runs until stopped; one a launcher started goes when unused
        idle = ON_DEMAND_IDLE_TIMEOUT if opts.on_demand else 0.0
    if idle < 0:
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"--idle-timeout is {idle:g}: it must be 0 (never) or more")
    log_file = opts.log_file or logs.env_file(os.environ)
    logs.configure(log_file, opts.log_level, rotate=(opts.log_max_bytes, opts.log_backups))
    served = _agent_metrics(opts.metrics_address)
    agent = server.Agent(
        opts.socket,
        call_timeout=opts.call_timeout,
        max_calls=opts.max_calls,
        fault_injection=opts.enable_fault_injection,
        metrics=served[0] if served else None,
        idle_timeout=idle,
    )
    try:
        # Started by a launcher: an agent that just exited idle may still hold the socket's lock.
        return server.run(agent, lock_wait=5.0 if opts.on_demand else 0.0)
    except RuntimeError as exc:
        raise CNIError(Code.IO_FAILURE, str(exc)) from None
    except OSError as exc:
        raise CNIError(Code.IO_FAILURE, f"cannot listen on {opts.socket}: {exc.strerror or exc}") from None
    finally:
        if served:
            served[1].stop()


def _agent_metrics(address: str | None) -> Any:
    """Bound before the agent takes its socket: an address in use stops it with nothing made."""
    from pycni.agent import metrics
    from pycni.extras import MissingExtra

    try:
        return metrics.AgentMetrics.start(address or os.environ.get(metrics.ADDRESS_ENV, ""))
    except (metrics.MetricsError, MissingExtra) as exc:
        raise CNIError(Code.IO_FAILURE, f"pycni agent: {exc}", "the agent did not start") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pycni",
        description="Add, check, remove, gc or status network interfaces from a network namespace (cnitool-compatible).",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output (results and errors as JSON)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("add", "check", "del"):
        p = sub.add_parser(name, help=f"{name.upper()} the network to the namespace")
        p.add_argument("net")
        p.add_argument("netns")
        p.set_defaults(func=cmd_attachment)
    p = sub.add_parser("status", help="STATUS of every plugin of the network")
    p.add_argument("net")
    p.add_argument("netns", nargs="?", help="ignored (accepted for cnitool compatibility)")
    p.set_defaults(func=cmd_attachment)
    p = sub.add_parser("gc", help="garbage-collect stale attachments of the network")
    p.add_argument("net")
    p.add_argument("netns", nargs="?", help="ignored (accepted for cnitool compatibility)")
    p.add_argument("--valid", action="append", metavar="CONTAINERID/IFNAME", help="an attachment that is still valid")
    p.add_argument("--none-valid", action="store_true", help="treat every attachment as stale (cnitool's gc)")
    p.set_defaults(func=cmd_gc)
    p = sub.add_parser("validate", help="check that every plugin exists and supports the network's version")
    p.add_argument("net")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("version", help="pycni's version, or a plugin's supported spec versions")
    p.add_argument("--plugin", metavar="TYPE")
    p.set_defaults(func=cmd_version)
    p = sub.add_parser("plugins", help="install or list the plugin executables pycni ships")
    psub = p.add_subparsers(dest="action", required=True)
    pi = psub.add_parser("install", help="write one executable per plugin type into DIR")
    pi.add_argument("dir")
    pi.add_argument("types", nargs="*")
    pi.add_argument(
        "--agent-socket",
        default=_default_socket(),
        metavar="PATH",
        help="the agent socket the launchers hand calls to (default %(default)s)",
    )
    psub.add_parser("list")
    p.set_defaults(func=cmd_plugins)
    p = sub.add_parser("agent", help="run the resident agent that serves plugin calls (as root, in the foreground)")
    p.add_argument("--socket", default=_default_socket(), metavar="PATH", help="its Unix socket (default %(default)s)")
    p.add_argument(
        "--call-timeout", type=float, default=120.0, metavar="S", help="a call's deadline, answered with code 11 (default 120)"
    )
    p.add_argument("--max-calls", type=int, default=256, metavar="N", help="calls at once; beyond, launchers run in-process")
    p.add_argument("--log-file", metavar="PATH", help="default $PYCNI_LOG_FILE or /var/log/pycni/plugins.log")
    p.add_argument(
        "--idle-timeout",
        type=float,
        metavar="S",
        help="exit after S seconds without a call (0: never; default never, 600 with --on-demand)",
    )
    p.add_argument(
        "--on-demand",
        action="store_true",
        help="started by a launcher that found no agent (what launchers run; see PYCNI_AGENT)",
    )
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--log-max-bytes", type=int, default=10 * 1024 * 1024, metavar="N", help="rotate the log at this size")
    p.add_argument("--log-backups", type=int, default=5, metavar="N", help="rotated logs kept")
    p.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on this address (default $PYCNI_METRICS_ADDRESS; off when neither is set)",
    )
    p.add_argument(
        "--enable-fault-injection",
        action="store_true",
        help="for tests: honour a call's PYCNI_FAULT and PYCNI_FAULT_TRACE (pycni.faults), which can kill the agent",
    )
    p.set_defaults(func=cmd_agent)
    p = sub.add_parser(
        "install-cni",
        help="as Calico's install-cni: plugin launchers into the CNI bin directory, the network configuration from a template",
    )
    p.add_argument(
        "--cni-bin-dir", action="append", metavar="DIR", help=f"where the launchers go (repeatable; default {DEFAULT_BIN_DIR})"
    )
    p.add_argument(
        "--agent-socket",
        default=_default_socket(),
        metavar="PATH",
        help="the agent socket the launchers hand calls to (default %(default)s)",
    )
    p.set_defaults(func=cmd_install_cni)
    p = sub.add_parser("netns", help="create or delete a named network namespace")
    p.add_argument("action", choices=("add", "del"))
    p.add_argument("name")
    p.set_defaults(func=cmd_netns)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    try:
        env = Env(dict(os.environ))
        return int(opts.func(opts, env))
    except CNIError as err:
        if opts.json:
            print(jsonfmt.dumps(err.to_dict(_err_version())))
        else:
            print(" ".join(str(err).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        print(f"pycni: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _default_socket() -> str:
    from pycni.launcher import DEFAULT_AGENT_SOCKET

    return DEFAULT_AGENT_SOCKET


def _err_version() -> str:
    from pycni.spec import version as versions

    return versions.CURRENT


if __name__ == "__main__":
    sys.exit(main())
