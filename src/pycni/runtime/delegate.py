"""Delegation (spec section 4): a plugin running another plugin, usually its IPAM.

The delegated plugin gets the same environment and the same configuration bytes
as the calling plugin, with only CNI_COMMAND set; its stderr is passed on to the
caller's log. Used by every main plugin that has an `ipam` section:

    result = delegate.add(call, ipam_type)      # on failure the caller DELs what it did
    delegate.delete(call, ipam_type)            # DEL, CHECK, GC and STATUS forward too

When the executable found in CNI_PATH is a launcher of this very installation
(`pycni.launcher.runs_here`), the delegated call is dispatched in this process
(same environment with CNI_COMMAND set, same stdin): that is exactly what the
launcher would run, without a process start and its imports, whether the caller
runs in the agent or in a launcher of its own. Anything else (the Go reference
plugins, another installation's launchers) is executed as the spec says.
"""

from __future__ import annotations

from pycni import launcher
from pycni.runtime import invoke
from pycni.skel import CmdArgs, dispatch
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result

# Set for a delegated plugin run as a process: if that process hands its call to the
# agent, the agent must not queue it behind the call that delegated it (the same
# attachment, waiting for it): that would deadlock until the deadline.
DELEGATED_ENV = "PYCNI_DELEGATED_CALL"


def _execute(call: CmdArgs, plugin_type: str, plugin_path: str, env: dict[str, str], stdin: bytes) -> invoke.Execution:
    if launcher.runs_here(plugin_path, plugin_type):
        outcome = dispatch(plugin_type, env, stdin, call.mode)
        return invoke.Execution(outcome.stdout, outcome.stderr, outcome.code)
    return invoke.execute(plugin_path, stdin, {**env, DELEGATED_ENV: "1"})


def _run(call: CmdArgs, plugin_type: str, command: str, stdin: bytes | None) -> invoke.Execution:
    if not call.path:
        raise CNIError(
            Code.INVALID_ENVIRONMENT_VARIABLES,
            f'CNI_PATH is empty: cannot find the "{plugin_type}" plugin this configuration delegates to',
        )
    plugin_path = invoke.find_in_path(plugin_type, call.path)
    env = dict(call.env)
    env["CNI_COMMAND"] = command
    execution = _execute(call, plugin_type, plugin_path, env, call.stdin if stdin is None else stdin)
    if execution.stderr:
        call.log.info("%s %s stderr: %s", plugin_type, command, execution.stderr.decode(errors="replace").strip())
    if execution.returncode != 0:
        err = invoke.error_from(execution, plugin_path)
        raise CNIError(err.code, f"{plugin_type}: {err.msg}", err.details)
    return execution


def add(call: CmdArgs, plugin_type: str, stdin: bytes | None = None) -> Result:
    """ADD through the delegated plugin; its result, in the canonical model."""
    from pycni.spec import jsonfmt

    execution = _run(call, plugin_type, "ADD", stdin)
    data = jsonfmt.loads_object(execution.stdout, f"result of {plugin_type}")
    if not data.get("cniVersion"):
        data["cniVersion"] = call.cni_version
    return Result.from_dict(data)


def delete(call: CmdArgs, plugin_type: str, stdin: bytes | None = None) -> None:
    _run(call, plugin_type, "DEL", stdin)


def check(call: CmdArgs, plugin_type: str, stdin: bytes | None = None) -> None:
    _run(call, plugin_type, "CHECK", stdin)


def gc(call: CmdArgs, plugin_type: str, stdin: bytes | None = None) -> None:
    _run(call, plugin_type, "GC", stdin)


def status(call: CmdArgs, plugin_type: str, stdin: bytes | None = None) -> None:
    _run(call, plugin_type, "STATUS", stdin)
