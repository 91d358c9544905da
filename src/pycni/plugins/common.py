"""Pieces several plugins share: IPAM delegation with rollback, GC's valid attachments,
DNS and MAC from the configuration, prevResult lookups for CHECK, records of an attachment."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pycni import faults
from pycni.skel import CmdArgs
from pycni.spec import gokeys
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import DNS, Result

VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"
LEGACY_ATTACHMENTS_KEY = "cni.dev/attachments"  # an earlier draft's name, which libcni still sends


def require_netns(call: CmdArgs) -> None:
    """ADD needs the container's namespace: fail before anything is allocated when it is missing."""
    from pycni.net import netns

    os.close(netns.open_fd(call.netns))


def valid_attachments(call: CmdArgs) -> set[tuple[str, str]]:
    """GC's still-valid (containerID, ifname) pairs (spec 1.1.0, section 2)."""
    fields = call.conf.fields
    key = VALID_ATTACHMENTS_KEY if VALID_ATTACHMENTS_KEY in fields else LEGACY_ATTACHMENTS_KEY
    items = fields.raw(key) or []
    if not isinstance(items, list):
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"{key!r} must be a list of {{containerID, ifname}} objects")
    out: set[tuple[str, str]] = set()
    for item in items:
        container = gokeys.get(item, "containerID") if isinstance(item, dict) else None
        if not isinstance(container, str):
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid entry in {key!r}: {item!r}")
        out.add((container, str(gokeys.get(item, "ifname", ""))))
    return out


def conf_dns(call: CmdArgs) -> DNS | None:
    """The configuration's own `dns`, when any field of it is set (it then overrides IPAM's)."""
    raw = call.conf.fields.raw("dns")
    if not isinstance(raw, dict):
        return None
    try:
        dns = DNS.from_dict(raw)
    except CNIError as exc:
        raise CNIError(Code.INVALID_NETWORK_CONFIG, f"invalid dns: {exc.msg}") from None
    return None if dns.is_empty() else dns


@contextmanager
def ipam_allocation(call: CmdArgs, ipam_type: str) -> Iterator[Result | None]:
    """The IPAM plugin's ADD result (None without IPAM); its DEL when the block fails, so a
    failed ADD gives every address back."""
    if not ipam_type:
        yield None
        return
    from pycni.runtime import delegate

    result = delegate.add(call, ipam_type)
    try:
        if not result.ips:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"IPAM plugin {ipam_type!r} returned missing IP config")
        yield result
    except BaseException:
        try:
            delegate.delete(call, ipam_type)
        except CNIError as exc:
            call.log.warning("releasing the addresses of the failed ADD: %s", exc)
        raise


def delegate_ipam(call: CmdArgs, ipam_type: str, command: str) -> None:
    """Forward DEL, CHECK, GC or STATUS to the IPAM plugin (nothing without IPAM)."""
    if not ipam_type:
        return
    from pycni.runtime import delegate

    {"DEL": delegate.delete, "CHECK": delegate.check, "GC": delegate.gc, "STATUS": delegate.status}[command](call, ipam_type)


def parse_mac(value: str, where: str, code: int = Code.INVALID_NETWORK_CONFIG) -> str:
    """A MAC address in the kernel's spelling (lower case, colons)."""
    parts = value.replace("-", ":").split(":")
    if len(parts) == 6 and all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        return ":".join(parts).lower()
    raise CNIError(code, f"invalid MAC address {value!r} in {where}")


def requested_mac(call: CmdArgs, args_cni: bool = True, conf_key: bool = False) -> str:
    """The MAC asked for: runtimeConfig.mac over args.cni.mac over CNI_ARGS MAC (over the
    configuration's own "mac" with `conf_key`, as macvlan and tap read it; they have no
    args.cni.mac, as `args_cni=False` says)."""
    mac = parse_mac(call.conf.fields.get_str("mac"), '"mac"') if conf_key and call.conf.fields.get_str("mac") else ""
    if call.args:
        env = call.cni_args_dict(known=("MAC",)).get("MAC", "")
        mac = parse_mac(env, "CNI_ARGS MAC", Code.INVALID_ENVIRONMENT_VARIABLES) if env else mac
    sources = [(call.conf.args_cni, "args.cni.mac")] if args_cni else []
    for fields, where in [*sources, (call.conf.runtime_config, "runtimeConfig.mac")]:
        value = fields.get_str("mac")
        if value:
            mac = parse_mac(value, where)
    return mac


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


# -- records: what an attachment changed, kept in a JSON file of its own -----------------------

PARTIAL = ".tmp"  # a record being written; left behind only by a killed process


def create_new(path: str, mode: int = 0o600) -> int:
    """Open `path` for writing as a new file. Whatever had that name (what a killed writer
    left, a symlink planted to a file elsewhere) is removed first, never written through."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def write_record(path: str, body: Any, env: Mapping[str, str] = faults.NO_FAULTS, point: str = "") -> None:
    """Write `body` as JSON to `path` atomically: to `<path>.tmp`, then renamed over it.

    The temporary name is the attachment's own (calls for one attachment never run at the
    same time), so a DEL after a killed write finds it without listing the directory
    (`remove_record`). `point` names the fault-injection point between the two steps."""
    partial = path + PARTIAL
    for attempt in range(5):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        try:
            fd = create_new(partial)
            break
        except FileNotFoundError:  # another attachment's DEL removed the emptied directory just now
            if attempt == 4:
                raise
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh, indent=1)
    if point:
        faults.checkpoint(env, point)
    os.replace(partial, path)


def remove_record(path: str) -> None:
    """Remove a record and what a killed write of it left; what is missing is fine."""
    for name in (path, path + PARTIAL):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def is_partial_record(name: str) -> bool:
    """A temporary file of a write that never finished (this version's, or an older one's)."""
    return name.endswith(PARTIAL) or ".tmp-" in name
