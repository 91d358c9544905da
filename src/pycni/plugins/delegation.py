"""A main plugin's IPAM: ADD with its release when the rest of the ADD fails, and the other
commands forwarded (`pycni.runtime.delegate` does the running)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pycni.runtime import delegate
from pycni.skel import CmdArgs
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result


@contextmanager
def ipam_allocation(call: CmdArgs, ipam_type: str, log: Any = None, handover: object = None) -> Iterator[Result | None]:
    """The IPAM plugin's ADD result (None without IPAM); its DEL when the block fails, so a
    failed ADD gives every address back (best effort: the error that got there wins).
    `log` (default the call's) says so; `handover` goes to an IPAM plugin run in-process."""
    if not ipam_type:
        yield None
        return
    result = delegate.add(call, ipam_type, handover=handover)
    try:
        if not result.ips:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"IPAM plugin {ipam_type!r} returned missing IP config")
        yield result
    except BaseException:
        log = log or call.log
        log.info("Cleaning up IP allocations for failed ADD")
        try:
            delegate.delete(call, ipam_type, handover=handover)
        except CNIError as exc:
            log.warning("Failed to clean up IP allocations for failed ADD: %s", exc)
        raise


def delegate_ipam(call: CmdArgs, ipam_type: str, command: str) -> None:
    """Forward DEL, CHECK, GC or STATUS to the IPAM plugin (nothing without IPAM)."""
    if not ipam_type:
        return
    {"DEL": delegate.delete, "CHECK": delegate.check, "GC": delegate.gc, "STATUS": delegate.status}[command](call, ipam_type)
