"""nftables through libnftables' JSON API, in-process (no `nft` process per call).

`run` applies a list of commands as one transaction: all of it or none of it,
which is what lets a plugin's ADD or DEL never leave half its rules behind.
libnftables contexts are not thread-safe; calls in one process are serialised
on a lock (a transaction takes well under a millisecond).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from pycni.spec.errors import CNIError, Code

_lock = threading.Lock()
_ctx: Any = None


def _context() -> Any:
    global _ctx
    if _ctx is None:
        import nftables

        ctx = nftables.Nftables()
        ctx.set_json_output(True)
        ctx.set_handle_output(True)
        _ctx = ctx
    return _ctx


class NftError(CNIError):
    def __init__(self, what: str, error: str) -> None:
        super().__init__(Code.KERNEL, f"nftables: {what} failed", error.strip())
        self.error = error


def run(commands: list[dict[str, Any]], what: str = "transaction") -> None:
    """Apply `commands` (libnftables JSON objects, e.g. {"add": {"table": {...}}}) atomically."""
    if not commands:
        return
    payload = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
    with _lock:
        rc, _out, err = _context().cmd(payload)
    if rc != 0:
        raise NftError(what, err)


def run_text(script: str, what: str = "transaction") -> None:
    """Apply an nft script (the `nft -f` language) atomically."""
    with _lock:
        rc, _out, err = _context().cmd(script)
    if rc != 0:
        raise NftError(what, err)


def list_objects(target: str) -> list[dict[str, Any]]:
    """`nft -j list <target>` as a list of objects (table, chain, rule, set, map, element...).

    A target that does not exist gives an empty list."""
    with _lock:
        rc, out, err = _context().cmd(f"list {target}")
    if rc != 0:
        if "No such file or directory" in err or "does not exist" in err:
            return []
        raise NftError(f"list {target}", err)
    data = json.loads(out) if out else {"nftables": []}
    return [item for item in data.get("nftables", []) if "metainfo" not in item]


def table_exists(family: str, name: str) -> bool:
    return bool(list_objects(f"table {family} {name}"))
