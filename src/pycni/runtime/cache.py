"""libcni's result cache (``cniCacheV1``), read and written in its exact format.

An attachment added by containerd, CRI-O or podman (all libcni) can be checked
or deleted by pycni, and the other way round: the file is
``<cacheDir>/results/<network>-<containerID>-<ifname>`` (directory 0700, file 0600)
holding the conflist bytes (base64, as Go encodes []byte), the runtime arguments
and the final result as a JSON object with sorted keys (a Go map).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from typing import Any

from pycni import files
from pycni.spec import jsonfmt
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import Result

KIND = "cniCacheV1"
DEFAULT_CACHE_DIR = "/var/lib/cni"


@dataclass
class CachedAttachment:
    container_id: str
    network: str
    ifname: str
    config: bytes = b""
    netns: str = ""
    cni_args: list[tuple[str, str]] | None = None
    capability_args: dict[str, Any] = field(default_factory=dict)
    raw_result: dict[str, Any] | None = None

    def result(self) -> Result | None:
        if self.raw_result is None:
            return None
        return Result.from_dict(self.raw_result)


def results_dir(cache_dir: str) -> str:
    return os.path.join(cache_dir, "results")


def cache_path(cache_dir: str, network: str, container_id: str, ifname: str) -> str:
    if not network or not container_id or not ifname:
        raise CNIError(
            Code.INVALID_ENVIRONMENT_VARIABLES,
            f"cache file path requires network name ({network!r}), container ID ({container_id!r}), "
            f"and interface name ({ifname!r})",
        )
    return os.path.join(results_dir(cache_dir), _file_name(network, container_id, ifname))


def _sorted(value: Any) -> Any:
    """Go marshals a map[string]interface{} with its keys sorted, at every depth."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def encode(entry: CachedAttachment) -> bytes:
    doc: dict[str, Any] = {
        "kind": KIND,
        "containerId": entry.container_id,
        "config": base64.b64encode(entry.config).decode(),
        "ifName": entry.ifname,
        "networkName": entry.network,
    }
    if entry.netns:
        doc["netns"] = entry.netns
    if entry.cni_args:
        doc["cniArgs"] = [[k, v] for k, v in entry.cni_args]
    if entry.capability_args:
        doc["capabilityArgs"] = _sorted(entry.capability_args)
    if entry.raw_result:
        doc["result"] = _sorted(entry.raw_result)
    return jsonfmt.dumps(doc).encode()


def write(cache_dir: str, entry: CachedAttachment) -> str:
    """Write atomically (a reader never sees half a file), 0600 in a 0700 directory."""
    path = cache_path(cache_dir, entry.network, entry.container_id, entry.ifname)
    files.replace_file(path, encode(entry), 0o600, dir_mode=0o700)
    return path


class CorruptCache(ValueError):
    """A cache file that cannot be read or is not what libcni writes."""


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CorruptCache(f"not JSON: {exc}") from None


def _text(value: str, key: str) -> str:
    """A string that can go into a plugin's environment: no NUL, and UTF-8 (JSON can spell a
    lone surrogate, which no environment can hold)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"{key} is not valid UTF-8") from None
    if "\0" in value:
        raise ValueError(f"{key} contains a NUL character")
    return value


def decode(data: bytes) -> CachedAttachment:
    """Parse a cache file; ValueError when it is not a cniCacheV1 document."""
    doc = _json(data)
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise ValueError(f"not a {KIND} document")
    try:
        config = base64.b64decode(doc.get("config") or "", validate=True)
    except (binascii.Error, TypeError) as exc:
        raise ValueError(f"config is not base64: {exc}") from None
    raw_args = doc.get("cniArgs")
    cni_args = None
    if raw_args is not None:
        if not isinstance(raw_args, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in raw_args
        ):
            raise ValueError("cniArgs is not a list of pairs")
        cni_args = [(_text(p[0], "cniArgs"), _text(p[1], "cniArgs")) for p in raw_args]
    caps = doc.get("capabilityArgs") or {}
    result = doc.get("result")
    if not isinstance(caps, dict) or (result is not None and not isinstance(result, dict)):
        raise ValueError("capabilityArgs and result must be objects")
    fields = {k: doc.get(k, "") for k in ("containerId", "networkName", "ifName", "netns")}
    if not all(isinstance(v, str) for v in fields.values()):
        raise ValueError("containerId, networkName, ifName and netns must be strings")
    for key, value in fields.items():
        _text(value, key)
    return CachedAttachment(
        container_id=fields["containerId"],
        network=fields["networkName"],
        ifname=fields["ifName"],
        config=config,
        netns=fields["netns"],
        cni_args=cni_args,
        capability_args=caps,
        raw_result=result,
    )


def _read_bytes(cache_dir: str, network: str, container_id: str, ifname: str) -> bytes | None:
    path = cache_path(cache_dir, network, container_id, ifname)
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:  # a directory, a dangling lock-up of permissions: unreadable, not absent
        raise CorruptCache(f"cannot read {path}: {exc.strerror}") from None


def _is(entry: CachedAttachment, network: str, container_id: str, ifname: str) -> bool:
    """Whether a cache file is this attachment's: `<network>-<containerID>-<ifname>` is the same
    name for network "a" container "b-c" and network "a-b" container "c". A file that names no
    attachment (fields missing) is taken to be the one its name says."""
    named = (entry.network, entry.container_id, entry.ifname)
    if not all(named) or named == (network, container_id, ifname):
        return True
    # Another attachment's only if this is where its own file is; otherwise the file is just corrupt.
    return _file_name(*named) != _file_name(network, container_id, ifname)


def _file_name(network: str, container_id: str, ifname: str) -> str:
    return f"{network}-{container_id}-{ifname}"


def read(cache_dir: str, network: str, container_id: str, ifname: str) -> CachedAttachment | None:
    """The cached attachment, None when there is none (or the file is another attachment's);
    ValueError when the file is corrupt."""
    data = _read_bytes(cache_dir, network, container_id, ifname)
    if data is None:
        return None
    entry = decode(data)
    return entry if _is(entry, network, container_id, ifname) else None


def foreign(cache_dir: str, network: str, container_id: str, ifname: str) -> CachedAttachment | None:
    """The other attachment whose cache file has this attachment's name, if any."""
    try:
        data = _read_bytes(cache_dir, network, container_id, ifname)
        entry = decode(data) if data is not None else None
    except ValueError:
        return None
    return entry if entry is not None and not _is(entry, network, container_id, ifname) else None


def read_result(cache_dir: str, network: str, container_id: str, ifname: str) -> Result | None:
    """The cached result; a legacy file holding a bare result (pre-cniCacheV1) is read too.
    CorruptCache (a ValueError) or a CNIError (code 6) when the file holds neither."""
    data = _read_bytes(cache_dir, network, container_id, ifname)
    if data is None:
        return None
    try:
        entry = decode(data)
    except ValueError:
        return Result.from_dict(_json(data))  # libcni's legacy cache: the result itself
    return entry.result() if _is(entry, network, container_id, ifname) else None


def remove(cache_dir: str, network: str, container_id: str, ifname: str) -> None:
    if foreign(cache_dir, network, container_id, ifname) is not None:
        return
    try:
        os.unlink(cache_path(cache_dir, network, container_id, ifname))
    except (FileNotFoundError, IsADirectoryError):
        pass  # not a cache file of ours (a directory someone made): not ours to remove either


def list_attachments(cache_dir: str, container_id: str = "") -> list[CachedAttachment]:
    """Every readable cached attachment (libcni's GetCachedAttachments); corrupt files are skipped."""
    directory = results_dir(cache_dir)
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    found = []
    for name in entries:
        if name.startswith(".tmp-"):
            continue
        if container_id and f"-{container_id}-" not in name:
            continue
        try:
            with open(os.path.join(directory, name), "rb") as fh:
                entry = decode(fh.read())
        except (OSError, ValueError):
            continue
        if container_id and entry.container_id != container_id:
            continue
        if not entry.ifname or not entry.network:
            continue
        if name != _file_name(entry.network, entry.container_id, entry.ifname):
            continue  # not where that attachment's file is: a corrupt (or planted) file, not an attachment
        found.append(entry)
    return found
