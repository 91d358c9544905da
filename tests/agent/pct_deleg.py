"""A main plugin for the agent's tests (type `pct-deleg`): it delegates every command to
the plugin its `ipam.type` names, as bridge does to host-local."""

from __future__ import annotations

from pycni.runtime import delegate
from pycni.skel import CmdArgs
from pycni.spec.result import Result


def _ipam(call: CmdArgs) -> str:
    return call.conf.ipam.get_str("type", required=True)


def add(call: CmdArgs) -> Result:
    return delegate.add(call, _ipam(call))


def check(call: CmdArgs) -> None:
    delegate.check(call, _ipam(call))


def delete(call: CmdArgs) -> None:
    delegate.delete(call, _ipam(call))
