"""Backing services of plugins (a datastore, a daemon): readiness for STATUS, and
connections kept warm across calls.

A plugin with a datastore uses both:

    def _store(call):
        endpoints = ...
        return service.shared(("etcd", endpoints), lambda: connect(endpoints), close=lambda c: c.close())

    def status(call):
        service.probe("etcd datastore at " + endpoints, _store(call).ping, fix="start etcd or fix etcd_endpoints")

`probe` turns a failed or hung check into code 50 (the spec's "cannot service
ADD"); `unavailable` builds that error for a plugin that finds out another way.
In a plugin process `shared` lasts as long as the process, one call; in the agent
it lasts across calls, which is the point: a connection is built once. Only
connections and clients belong in it, never results (addresses, endpoints):
those are read fresh on every call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar, cast

from pycni.spec.errors import CNIError, Code

T = TypeVar("T")

DEFAULT_PROBE_TIMEOUT = 5.0


def unavailable(service: str, problem: str, fix: str = "") -> CNIError:
    """Code 50 for STATUS (and ADD): `service` cannot be used, why, and what to do."""
    return CNIError(Code.PLUGIN_NOT_AVAILABLE, f"{service} is not usable: {problem}", fix)


def probe(service: str, check: Callable[[], object], timeout: float = DEFAULT_PROBE_TIMEOUT, fix: str = "") -> None:
    """Run `check` with a deadline; raise code 50 when it fails or does not answer in time.

    A CNIError of code 50 or 51 raised by `check` is passed on as it is."""
    box: dict[str, BaseException] = {}

    def run() -> None:
        try:
            check()
        except BaseException as exc:  # noqa: BLE001 - reported in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"probe:{service}", daemon=True)  # a hung check is left behind
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise unavailable(service, f"no answer within {timeout:g}s", fix)
    error = box.get("error")
    if isinstance(error, CNIError) and error.code in (Code.PLUGIN_NOT_AVAILABLE, Code.PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY):
        raise error
    if error is not None:
        raise unavailable(service, f"{type(error).__name__}: {error}", fix)


class _Entry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value: Any = None
        self.ready = False
        self.close: Callable[[Any], None] | None = None


_lock = threading.Lock()
_entries: dict[Hashable, _Entry] = {}


def shared(key: Hashable, create: Callable[[], T], close: Callable[[T], None] | None = None) -> T:
    """The long-lived resource for `key`, created by `create` on first use (once, even
    when calls ask for it at the same time). The resource itself must be safe to use
    from several threads, or guard itself."""
    with _lock:
        entry = _entries.setdefault(key, _Entry())
    with entry.lock:
        if not entry.ready:
            entry.value = create()
            entry.close = cast("Callable[[Any], None] | None", close)
            entry.ready = True
        return cast(T, entry.value)


def discard(key: Hashable) -> None:
    """Forget (and close) the resource for `key`, found broken: the next `shared` builds a new one."""
    with _lock:
        entry = _entries.pop(key, None)
    if entry is None:
        return
    with entry.lock:
        if entry.ready and entry.close is not None:
            try:
                entry.close(entry.value)
            except Exception:  # noqa: BLE001 - it is broken already; closing is a courtesy
                pass
        entry.ready = False


def discard_all() -> None:
    """Close every shared resource (the agent, when it stops)."""
    with _lock:
        keys = list(_entries)
    for key in keys:
        discard(key)
