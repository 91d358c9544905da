"""The plugin entry: environment and stdin in, a result or an error out.

`dispatch` is pure: it reads only the mapping and bytes it is given and returns
what a plugin process would print and its exit code. The same call serves a
plugin executable (`main`) and the resident agent; `run_delegated` is the same
call for a plugin that another one delegates to in this process, answered with
objects (its result, or the CNIError it would print). None of them may change
process-wide state (environment, working directory, signal handlers, the
namespaces of the calling thread).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NoReturn

from pycni import faults, gcreport, logs, registry, stdio
from pycni.net import nlsession
from pycni.spec import args as cni_args
from pycni.spec import gokeys, jsonfmt, names
from pycni.spec import version as versions
from pycni.spec.config import PluginConf
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result, version_result

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# Environment each command needs (the spec's "required environment parameters").
_REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": (),
    "STATUS": (),
    "VERSION": (),
}
# The first spec version that has each command.
_MIN_VERSION = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

# A configuration key every pycni plugin reads: STATUS reports the plugin unavailable
# (code 50) unless the resident agent serves the call.
REQUIRE_AGENT_KEY = "requireAgent"


@dataclass(frozen=True)
class CallMode:
    """How a call reached `dispatch`: through the resident agent, or in the plugin's own process."""

    via_agent: bool = False
    agent_socket: str = ""  # the agent that serves the call, or the one the launcher tried
    agent_problem: str = ""  # why the agent did not serve it
    # The call's PYCNI_FAULT and PYCNI_FAULT_TRACE are honoured (`pycni.faults`): in the plugin's
    # own process, and in an agent started with --enable-fault-injection; never otherwise.
    fault_injection: bool = False


IN_PROCESS = CallMode()


@dataclass
class CmdArgs:
    """One plugin invocation, parsed and validated."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: str
    path: list[str]
    stdin: bytes
    conf: PluginConf
    env: Mapping[str, str]
    plugin_type: str
    log: logging.LoggerAdapter[logging.Logger]
    mode: CallMode = IN_PROCESS
    # What the plugin that delegated this call in-process handed over (calico gives the
    # calico-ipam it runs its open datastore session); None in a call of its own.
    handed_over: object = None

    @property
    def cni_version(self) -> str:
        return self.conf.cni_version

    @property
    def prev_result(self) -> Result | None:
        if self.conf.prev_result is None and self.conf.has_prev_result:
            self.conf.load_prev_result()
        return self.conf.prev_result

    def cni_args_dict(self, known: tuple[str, ...] = ()) -> dict[str, str]:
        """CNI_ARGS as a dict; unknown keys are refused unless IgnoreUnknown=1."""
        return cni_args.load(self.args, known)

    def cni_args_pairs(self) -> list[tuple[str, str]]:
        return cni_args.parse(self.args)


@dataclass
class Outcome:
    """What the plugin process prints and how it exits."""

    stdout: bytes = b""
    stderr: bytes = b""
    code: int = 0


class _CallLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        prefix = " ".join(f"{k}={v}" for k, v in extra.items() if v)
        return (f"[{prefix}] {msg}" if prefix else msg), kwargs


def plugin_module(plugin: str | ModuleType, module: str = "") -> ModuleType:
    """The module of a plugin type: `module` when the caller knows it (a launcher names it),
    else the registry's. CNIError when there is none, or it does not import."""
    if isinstance(plugin, ModuleType):
        return plugin
    name = module or registry.module_name(plugin)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"plugin {plugin!r}: cannot import {name}: {exc}") from None


def supported_versions(module: ModuleType) -> tuple[str, ...]:
    return tuple(getattr(module, "SUPPORTED_VERSIONS", versions.ALL_VERSIONS))


def _error_outcome(err: CNIError, cni_version: str, stderr: bytes = b"") -> Outcome:
    body = jsonfmt.dumps_indent(err.to_dict(cni_version)) + "\n"
    return Outcome(stdout=body.encode(), stderr=stderr, code=1)


def _about(module: ModuleType, plugin_type: str) -> bytes:
    about = getattr(module, "ABOUT", f"CNI {plugin_type} plugin (pycni)")
    supported = ", ".join(supported_versions(module))
    return f"{about}\nCNI protocol versions supported: {supported}\n".encode()


def _check_not_own_netns(netns: str) -> None:
    """Refuse a CNI_NETNS that is the namespace the plugin itself runs in."""
    try:
        target = os.stat(netns)
        own = os.stat("/proc/self/ns/net")
    except OSError:
        return  # the plugin reports a missing namespace in its own terms
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        raise CNIError(
            Code.INVALID_ENVIRONMENT_VARIABLES,
            f"CNI_NETNS {netns} is the plugin's own (host) network namespace, not a container's",
        )


def parse_call(
    plugin_type: str,
    module: ModuleType,
    env: Mapping[str, str],
    stdin: bytes,
    mode: CallMode = IN_PROCESS,
    conf: PluginConf | None = None,
    handed_over: object = None,
) -> CmdArgs:
    """Validate the environment and configuration; raise CNIError before anything is touched.
    `conf` is `stdin` parsed already (by the plugin that delegates this call in-process)."""
    command = env.get("CNI_COMMAND", "")
    if command == "":
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, "required env variables [CNI_COMMAND] missing")
    if command not in COMMANDS:
        raise CNIError(
            Code.INVALID_ENVIRONMENT_VARIABLES,
            f"unknown CNI_COMMAND: {command}",
            "expected one of " + ", ".join(COMMANDS),
        )
    missing = [var for var in _REQUIRED_ENV[command] if env.get(var, "") == ""]
    if missing:
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"required env variables [{','.join(missing)}] missing")

    if conf is None:
        conf = PluginConf.parse(stdin, need_type=False)
    supported = supported_versions(module)
    minimum = _MIN_VERSION.get(command)
    if minimum is not None and not versions.at_least(conf.cni_version, minimum):
        raise CNIError(
            Code.INCOMPATIBLE_CNI_VERSION,
            f"config version {conf.cni_version} does not allow {command} (needs {minimum} or later)",
            "plugin supports " + ", ".join(supported),
        )
    versions.require_supported(conf.cni_version, supported)

    container_id = env.get("CNI_CONTAINERID", "")
    ifname = env.get("CNI_IFNAME", "")
    netns = env.get("CNI_NETNS", "")
    if command in ("ADD", "CHECK", "DEL"):
        names.validate_container_id(container_id)
        names.validate_interface_name(ifname)
        if netns:
            _check_not_own_netns(netns)
    path = [p for p in env.get("CNI_PATH", "").split(os.pathsep) if p]
    log = _CallLogAdapter(
        logging.getLogger(f"pycni.plugin.{plugin_type}"),
        {"cmd": command, "net": conf.name, "container": container_id[:12], "if": ifname},
    )
    call = CmdArgs(
        command=command,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        args=env.get("CNI_ARGS", ""),
        path=path,
        stdin=stdin,
        conf=conf,
        env=env,
        plugin_type=plugin_type,
        log=log,
        mode=mode,
        handed_over=handed_over,
    )
    cni_args.parse(call.args)  # a malformed CNI_ARGS is refused for every plugin
    if command in ("ADD", "CHECK", "DEL") and conf.has_prev_result:
        conf.load_prev_result()
    return call


def _version_outcome(module: ModuleType, stdin: bytes) -> Outcome:
    ver = versions.CURRENT
    if stdin.strip():
        try:
            data = jsonfmt.loads_object(stdin, "VERSION input")
            given = gokeys.get(data, "cniVersion")
            if isinstance(given, str) and given:
                ver = given
        except CNIError:
            pass
    body = jsonfmt.dumps(version_result(ver, supported_versions(module)))
    return Outcome(stdout=body.encode())


def _declared_version(stdin: bytes) -> str:
    """The version an error is reported in: the configuration's when it names one."""
    try:
        declared = gokeys.get(jsonfmt.loads_object(stdin, "network configuration"), "cniVersion")
    except CNIError:
        return versions.CURRENT
    return declared if isinstance(declared, str) and declared else versions.CURRENT


def error_outcome(err: CNIError, stdin: bytes) -> Outcome:
    """What a plugin prints for `err`, in the version of the configuration `stdin`."""
    return _error_outcome(err, _declared_version(stdin))


def dispatch(
    plugin: str | ModuleType, env: Mapping[str, str], stdin: bytes, mode: CallMode = IN_PROCESS, module_name: str = ""
) -> Outcome:
    """Run one CNI command of `plugin` (a type, implemented by `module_name` when given, or a
    module) and return what it prints and its exit code."""
    try:
        module = plugin_module(plugin, module_name)
    except CNIError as err:  # a launcher for a type this installation does not ship
        return error_outcome(err, stdin)
    plugin_type = plugin if isinstance(plugin, str) else registry.type_of(module.__name__)
    command = env.get("CNI_COMMAND", "")
    if command == "":
        return Outcome(stderr=_about(module, plugin_type), code=0)
    if command == "VERSION":
        return _version_outcome(module, stdin)

    if gcreport.wanted(env):
        # A GC whose runtime asked what it released: the answer as ever, the report on stderr.
        with gcreport.reporting() as report:
            outcome = _answer(module, plugin_type, env, stdin, mode)
        outcome.stderr += report.line()
        return outcome
    return _answer(module, plugin_type, env, stdin, mode)


def _answer(module: ModuleType, plugin_type: str, env: Mapping[str, str], stdin: bytes, mode: CallMode) -> Outcome:
    try:
        answer = _call(module, plugin_type, env, stdin, mode)
    except CNIError as err:
        return error_outcome(err, stdin)
    if answer is None:
        return Outcome()
    return Outcome(stdout=jsonfmt.dumps_indent(answer[1]).encode())


def run_delegated(
    plugin_type: str,
    module_name: str,
    env: Mapping[str, str],
    stdin: bytes,
    mode: CallMode,
    conf: PluginConf | None = None,
    handed_over: object = None,
) -> Result | None:
    """A delegated call (ADD, DEL, CHECK, GC, STATUS) run in this process, exactly as the
    plugin's launcher would run it: ADD's result as the caller would read it from the
    launcher's output, None for the rest; a failure as the CNIError the launcher would
    print. `conf` (stdin parsed already) and `handed_over` come from the delegating call."""
    answer = _call(plugin_module(plugin_type, module_name), plugin_type, env, stdin, mode, conf, handed_over)
    if answer is None:
        return None
    result, rendered = answer
    return result.in_version(rendered["cniVersion"])


def _call(
    module: ModuleType,
    plugin_type: str,
    env: Mapping[str, str],
    stdin: bytes,
    mode: CallMode,
    conf: PluginConf | None = None,
    handed_over: object = None,
) -> tuple[Result, dict[str, Any]] | None:
    """Parse and run one call; an unexpected exception becomes code 999 (its traceback logged)."""
    try:
        # One netlink socket per namespace for the whole call (delegated calls included).
        with (
            faults.injected(env) if mode.fault_injection else contextlib.nullcontext(),
            gcreport.plugin(plugin_type) if env.get("CNI_COMMAND") == "GC" else contextlib.nullcontext(),
            nlsession.session(),
        ):
            return _run(module, parse_call(plugin_type, module, env, stdin, mode, conf, handed_over))
    except CNIError:
        raise
    except Exception as exc:
        command = env.get("CNI_COMMAND", "")
        logging.getLogger(f"pycni.plugin.{plugin_type}").exception("unexpected error in %s %s", plugin_type, command)
        raise CNIError(
            Code.INTERNAL,
            f"unexpected error in {plugin_type} {command}: {type(exc).__name__}: {exc}",
            f"the traceback is in the plugin log ({logs.destination(env)})",
        ) from None


def _require_agent(call: CmdArgs) -> None:
    """STATUS of a configuration with `requireAgent`: unavailable unless the agent serves it."""
    if not call.conf.fields.get_bool(REQUIRE_AGENT_KEY) or call.mode.via_agent:
        return
    where = call.mode.agent_socket or "its socket"
    problem = call.mode.agent_problem or "the call did not come through the agent"
    raise CNIError(
        Code.PLUGIN_NOT_AVAILABLE,
        f"{call.plugin_type}: this configuration requires the pycni agent ({REQUIRE_AGENT_KEY}), which is not serving calls",
        f"{problem}; start it (`pycni agent`, or the pycni-agent systemd unit) on {where}",
    )


def _run(module: ModuleType, call: CmdArgs) -> tuple[Result, dict[str, Any]] | None:
    """The command's handler; ADD's result with its rendering in the configuration's version."""
    if call.command == "STATUS":
        _require_agent(call)
    handler = _handler(module, call.command)
    if call.command == "ADD":
        result = handler(call)
        if not isinstance(result, Result):
            raise TypeError(f"{call.plugin_type} ADD returned {type(result).__name__}, not a Result")
        try:
            rendered = result.to_dict(call.cni_version)
        except CNIError:
            _undo_add(module, call)  # the runtime gets an error: it must not get an attachment too
            raise
        return result, rendered
    handler(call)
    return None


def _undo_add(module: ModuleType, call: CmdArgs) -> None:
    """DEL what an ADD did whose result cannot be given in the configuration's version
    (e.g. a 0.2.0 result without an address)."""
    undo = dataclasses.replace(call, command="DEL", env={**call.env, "CNI_COMMAND": "DEL"})
    try:
        _handler(module, "DEL")(undo)
    except CNIError as err:
        call.log.warning("could not undo the ADD whose result cannot be rendered: %s", err)


def _noop(call: CmdArgs) -> None:
    return None


def _handler(module: ModuleType, command: str) -> Callable[[CmdArgs], Any]:
    name = {"ADD": "add", "DEL": "delete", "CHECK": "check", "GC": "gc", "STATUS": "status"}[command]
    fn = getattr(module, name, None)
    if fn is None:
        if command in ("GC", "STATUS"):
            return _noop  # a plugin without state has nothing to collect and is always ready
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"plugin does not implement CNI_COMMAND {command}")
    return fn  # type: ignore[no-any-return]


# -- process entry -------------------------------------------------------------


def main(
    plugin_type: str,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    mode: CallMode = IN_PROCESS,
    module_name: str = "",
) -> NoReturn:
    """Run one call in this process (a launcher the agent did not serve) and exit as the plugin.
    The process is the caller's own, so the caller's fault injection is honoured.
    `module_name` is the one the launcher names (no entry points are read then)."""
    mode = dataclasses.replace(mode, fault_injection=True)
    if env is None:
        env = dict(os.environ)
    logs.configure_from_env(env)  # stdout is the protocol, stderr is the runtime's: records go to a file
    if stdin is None:
        stdin = stdio.read_stdin(env.get("CNI_COMMAND", ""))
    outcome = dispatch(plugin_type, env, stdin, mode, module_name)
    stdio.emit(outcome.code, outcome.stdout, outcome.stderr)
