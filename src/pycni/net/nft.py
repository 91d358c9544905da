"""nftables through libnftables' JSON API, in-process (no `nft` process per call).

`run` applies a list of commands as one transaction: all of it or none of it,
which is what lets a plugin's ADD or DEL never leave half its rules behind.
libnftables contexts are not thread-safe; calls in one process are serialised
on a lock (a transaction takes well under a millisecond).

A context keeps the netlink socket it opened on first use, in the network
namespace of the thread that used it: the kept one serves only threads in the
process's own namespace (the agent's host), and a thread inside another
namespace (`netns.run_in`) gets a context of its own for that one command.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pycni.spec.errors import CNIError, Code

_lock = threading.Lock()
_ctx: Any = None


def _new_context() -> Any:
    import nftables

    ctx = nftables.Nftables()
    ctx.set_json_output(True)
    ctx.set_handle_output(True)
    return ctx


def _in_own_namespace() -> bool:
    return os.stat("/proc/thread-self/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino


@contextmanager
def _context() -> Iterator[Any]:
    """A libnftables context bound to the calling thread's network namespace."""
    global _ctx
    if not _in_own_namespace():
        yield _new_context()  # freed with the object
        return
    with _lock:
        if _ctx is None:
            _ctx = _new_context()
        yield _ctx


class NftError(CNIError):
    def __init__(self, what: str, error: str) -> None:
        super().__init__(Code.KERNEL, f"nftables: {what} failed", error.strip())
        self.error = error


def run(commands: list[dict[str, Any]], what: str = "transaction") -> None:
    """Apply `commands` (libnftables JSON objects, e.g. {"add": {"table": {...}}}) atomically."""
    if not commands:
        return
    payload = json.dumps({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
    with _context() as ctx:
        rc, _out, err = ctx.cmd(payload)
    if rc != 0:
        raise NftError(what, err)


def run_text(script: str, what: str = "transaction") -> None:
    """Apply an nft script (the `nft -f` language) atomically."""
    with _context() as ctx:
        rc, _out, err = ctx.cmd(script)
    if rc != 0:
        raise NftError(what, err)


def list_objects(target: str) -> list[dict[str, Any]]:
    """`nft -j list <target>` as a list of objects (table, chain, rule, set, map, element...).

    A target that does not exist gives an empty list."""
    with _context() as ctx:
        rc, out, err = ctx.cmd(f"list {target}")
    if rc != 0:
        if "No such file or directory" in err or "does not exist" in err:
            return []
        raise NftError(f"list {target}", err)
    data = json.loads(out) if out else {"nftables": []}
    return [item for item in data.get("nftables", []) if "metainfo" not in item]


def table_exists(family: str, name: str) -> bool:
    return bool(list_objects(f"table {family} {name}"))
