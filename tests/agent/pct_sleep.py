"""A plugin for the agent's tests (type `pct-sleep`): it sleeps, and records when each call ran.

Configuration keys: `sleep` (seconds), `record` (a file that gets one JSON line
per call start and end), `statusFail` (STATUS answers code 50), `crash` (ADD
raises an unexpected exception).
"""

from __future__ import annotations

import ipaddress
import json
import os
import time

from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import IPConfig, Result


def _record(call: CmdArgs, phase: str) -> None:
    path = call.conf.raw.get("record")
    if not path:
        return
    line = json.dumps({"command": call.command, "container": call.container_id, "phase": phase, "at": time.monotonic()})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())  # one write with O_APPEND: lines never interleave
    finally:
        os.close(fd)


def _sleep(call: CmdArgs) -> None:
    _record(call, "start")
    time.sleep(float(call.conf.raw.get("sleep", 0)))
    _record(call, "end")


def add(call: CmdArgs) -> Result:
    _sleep(call)
    if call.conf.raw.get("crash"):
        raise ZeroDivisionError("pct-sleep was told to crash")
    return Result(cni_version=call.cni_version, ips=[IPConfig(address=ipaddress.ip_interface("10.99.0.2/24"))])


def check(call: CmdArgs) -> None:
    _sleep(call)


def delete(call: CmdArgs) -> None:
    _sleep(call)


def status(call: CmdArgs) -> None:
    if call.conf.raw.get("statusFail"):
        raise CNIError(Code.PLUGIN_NOT_AVAILABLE, "pct-sleep is told to be unavailable")
