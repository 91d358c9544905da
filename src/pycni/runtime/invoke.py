"""Finding and executing plugin executables, as libcni's invoke package does.

Every execution runs in its own process group so that a timeout kills the
plugin and anything it started (a delegated IPAM plugin, say), never leaving a
half-finished child behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pycni.spec import jsonfmt, names
from pycni.spec import version as versions
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result

DEFAULT_TIMEOUT = 120.0


@dataclass
class Args:
    """The CNI_* environment of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    cni_args: str = ""
    path: str = ""

    def as_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(
            CNI_COMMAND=self.command,
            CNI_CONTAINERID=self.container_id,
            CNI_NETNS=self.netns,
            CNI_ARGS=self.cni_args,
            CNI_IFNAME=self.ifname,
            CNI_PATH=self.path,
        )
        return env


@dataclass
class Execution:
    stdout: bytes
    stderr: bytes
    returncode: int


def find_in_path(plugin_type: str, paths: Sequence[str]) -> str:
    """The executable for `plugin_type` in the first directory of `paths` that has one."""
    names.validate_plugin_type(plugin_type)
    if not paths:
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f'no paths provided to find plugin "{plugin_type}": set CNI_PATH')
    for directory in paths:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(
        Code.INVALID_NETWORK_CONFIG,
        f'failed to find plugin "{plugin_type}" in path {list(paths)}',
    )


def execute(plugin_path: str, stdin: bytes, env: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT) -> Execution:
    """Run a plugin; on timeout kill its whole process group and report code 11."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            [plugin_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise CNIError(Code.IO_FAILURE, f"cannot execute plugin {plugin_path}: {exc.strerror}") from None
    except (ValueError, UnicodeEncodeError) as exc:  # an environment no process can have (NUL, not UTF-8)
        raise CNIError(Code.INVALID_ENVIRONMENT_VARIABLES, f"cannot execute plugin {plugin_path}: {exc}") from None
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise CNIError(
            Code.TRY_AGAIN_LATER,
            f"plugin {os.path.basename(plugin_path)} timed out after {time.monotonic() - started:.1f}s and was killed",
            "the call is safe to repeat",
        ) from None
    finally:
        if proc.returncode is None:
            _kill_group(proc)
    return Execution(out, err, proc.returncode)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def error_from(execution: Execution, plugin_path: str) -> CNIError:
    """The CNIError a failed plugin printed, or one that says what it printed instead."""
    text = execution.stdout.strip()
    if text:
        try:
            return CNIError.from_dict(json.loads(text))
        except (ValueError, TypeError, RecursionError):
            pass
    stderr = execution.stderr.decode(errors="replace").strip()
    shown = stderr or text.decode(errors="replace") or f"exit status {execution.returncode}"
    return CNIError(Code.INTERNAL, f"netplugin failed: {shown!r}", f"plugin {plugin_path}")


def exec_with_result(
    plugin_path: str, stdin: bytes, env: Mapping[str, str], conf_version: str, timeout: float = DEFAULT_TIMEOUT
) -> Result:
    execution = execute(plugin_path, stdin, env, timeout)
    if execution.returncode != 0:
        raise error_from(execution, plugin_path)
    data = jsonfmt.loads_object(execution.stdout, f"result of plugin {plugin_path}")
    # libcni: a result without a version is taken to be in the configuration's version.
    if not data.get("cniVersion"):
        data["cniVersion"] = conf_version or versions.IMPLICIT_VERSION
    return Result.from_dict(data)


def exec_without_result(plugin_path: str, stdin: bytes, env: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT) -> None:
    execution = execute(plugin_path, stdin, env, timeout)
    if execution.returncode != 0:
        raise error_from(execution, plugin_path)


def version_info(plugin_path: str, env: Mapping[str, str] | None = None, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """The spec versions a plugin reports with VERSION (libcni's GetVersionInfo)."""
    stdin = jsonfmt.dumps({"cniVersion": versions.CURRENT}).encode()
    execution = execute(plugin_path, stdin, Args(command="VERSION").as_env(env), timeout)
    if execution.returncode != 0:
        raise error_from(execution, plugin_path)
    data = jsonfmt.loads_object(execution.stdout, f"VERSION answer of {plugin_path}")
    supported = data.get("supportedVersions")
    if supported is None:
        # A plugin older than VERSION support speaks 0.1.0 (and 0.2.0 if it says so).
        given = data.get("cniVersion", versions.IMPLICIT_VERSION)
        return ["0.1.0", "0.2.0"] if given == "0.2.0" else ["0.1.0"]
    if not isinstance(supported, list) or not all(isinstance(v, str) for v in supported):
        raise CNIError(Code.DECODING_FAILURE, f"plugin {plugin_path} answered VERSION with invalid supportedVersions")
    return list(supported)
