"""CHECK's common parts for main plugins: the IPAM plugin's CHECK and the previous result's
container interface first, then the differences found, as one error."""

from __future__ import annotations

from pycni.plugins.delegation import delegate_ipam
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result


def check_prev_result(call: CmdArgs, ipam_type: str) -> Result:
    """CHECK's common start: the IPAM plugin's CHECK, then the prevResult, which must name
    the container interface (CNI_IFNAME in CNI_NETNS)."""
    delegate_ipam(call, ipam_type, "CHECK")
    prev = call.prev_result
    if prev is None:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{call.plugin_type}: required prevResult missing")
    if prev.container_interface(call.ifname, call.netns) is None:
        raise CNIError(
            Code.INVALID_NETWORK_CONFIG,
            f"the prevResult has no interface {call.ifname} in sandbox {call.netns}",
        )
    return prev


def check_failed(plugin: str, problems: list[str], code: int = Code.KERNEL) -> CNIError:
    return CNIError(code, f"{plugin}: the container's network differs from what ADD set up: " + "; ".join(problems))
