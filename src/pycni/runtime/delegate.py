"""Delegation (spec section 4): a plugin running another plugin, usually its IPAM.

The delegated plugin gets the same environment and the same configuration bytes
as the calling plugin, with only CNI_COMMAND set; its stderr is passed on to the
caller's log. Used by every main plugin that has an `ipam` section:

    result = delegate.add(call, ipam_type)      # on failure the caller DELs what it did
    delegate.delete(call, ipam_type)            # DEL, CHECK, GC and STATUS forward too

When the executable found in CNI_PATH is a launcher of this very installation
(`pycni.launcher.runs_here`), the delegated call runs in this process
(`pycni.skel.run_delegated`): exactly what the launcher would run, without a
process start, its imports and a second parse of the configuration, whether the
caller runs in the agent or in a launcher of its own. Its result and its error come
back as objects, and the caller may hand it what it holds already (`handover`:
calico gives calico-ipam its open datastore session). Anything else (the Go
reference plugins, another installation's launchers) is executed as the spec says,
and answers in JSON.
"""

from __future__ import annotations

from pycni import gcreport, launcher, skel
from pycni.runtime import invoke
from pycni.skel import CmdArgs
from pycni.spec import jsonfmt
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result

# Set for a delegated plugin run as a process: if that process hands its call to the
# agent, the agent must not queue it behind the call that delegated it (the same
# attachment, waiting for it): that would deadlock until the deadline.
DELEGATED_ENV = "PYCNI_DELEGATED_CALL"


def _run(call: CmdArgs, plugin_type: str, command: str, stdin: bytes | None, handover: object) -> Result | None:
    if not call.path:
        raise CNIError(
            Code.INVALID_ENVIRONMENT_VARIABLES,
            f'CNI_PATH is empty: cannot find the "{plugin_type}" plugin this configuration delegates to',
        )
    plugin_path = invoke.find_in_path(plugin_type, call.path)
    env = dict(call.env)
    env["CNI_COMMAND"] = command
    data = call.stdin if stdin is None else stdin
    module = launcher.runs_here(plugin_path, plugin_type)
    if module is not None:
        conf = call.conf if data is call.stdin else None
        try:
            return skel.run_delegated(plugin_type, module, env, data, call.mode, conf, handover)
        except CNIError as err:
            raise CNIError(err.code, f"{plugin_type}: {err.msg}", err.details) from None
    env[DELEGATED_ENV] = "1"
    if gcreport.REPORT_ENV in env and not launcher.is_launcher(plugin_path):
        del env[gcreport.REPORT_ENV]  # a reference plugin sees what libcni would give it
    execution = invoke.execute(plugin_path, data, env)
    stderr = execution.stderr
    if command == "GC":
        gcreport.delegate_report(plugin_type, stderr)
        stderr = gcreport.without_line(stderr)
    if stderr.strip():
        call.log.info("%s %s stderr: %s", plugin_type, command, stderr.decode(errors="replace").strip())
    if execution.returncode != 0:
        failed = invoke.error_from(execution, plugin_path)
        raise CNIError(failed.code, f"{plugin_type}: {failed.msg}", failed.details)
    if command != "ADD":
        return None
    answer = jsonfmt.loads_object(execution.stdout, f"result of {plugin_type}")
    if not answer.get("cniVersion"):
        answer["cniVersion"] = call.cni_version
    return Result.from_dict(answer)


def add(call: CmdArgs, plugin_type: str, stdin: bytes | None = None, handover: object = None) -> Result:
    """ADD through the delegated plugin; its result, in the canonical model."""
    result = _run(call, plugin_type, "ADD", stdin, handover)
    assert result is not None  # an ADD that succeeds has a result
    return result


def delete(call: CmdArgs, plugin_type: str, stdin: bytes | None = None, handover: object = None) -> None:
    _run(call, plugin_type, "DEL", stdin, handover)


def check(call: CmdArgs, plugin_type: str, stdin: bytes | None = None, handover: object = None) -> None:
    _run(call, plugin_type, "CHECK", stdin, handover)


def gc(call: CmdArgs, plugin_type: str, stdin: bytes | None = None, handover: object = None) -> None:
    _run(call, plugin_type, "GC", stdin, handover)


def status(call: CmdArgs, plugin_type: str, stdin: bytes | None = None, handover: object = None) -> None:
    _run(call, plugin_type, "STATUS", stdin, handover)
