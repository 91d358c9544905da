"""calico-node's main loop, to the contract of `component.py`.

    connect:   revision R = store.revision(); listing = store.list("/calico/")
               every component.resync(its part of the listing)
    follow:    one watch on "/calico/" from R + 1; events are batched (whatever arrived
               within `batch_window`) and each batch is handed, in revision order, to the
               components whose prefixes match
    periodic:  reconcile() every `reconcile_interval` (repairs drift in the kernel);
               a full listing and resync() every `resync_interval`
    lost:      the watch ends or the datastore fails: the dataplane is left as it is,
               readiness says why (NodeContext.problems["datastore"]), and the loop
               reconnects with backoff, starting again with a full listing

Reading the revision before the listing is what makes one watch enough: a write that
lands between the two is in the listing and is replayed by the watch; replaying a key's
latest events onto a view that already has them ends in the same view.

A component that raises is logged and reported not-ready; the loop goes on (a bug in one
part must not stop routing). Adding a component is adding it to the list given to
`MainLoop`: nothing here knows what a component does.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pycni.calico.datastore import KV, Datastore, DatastoreError, Watch, WatchEvent
from pycni.calico.node.component import Component, NodeContext

log = logging.getLogger("calico-node")

ROOT = "/calico/"
_END = object()


def matches(component: Component, key: str) -> bool:
    return any(key.startswith(prefix) for prefix in component.prefixes)


class MainLoop:
    def __init__(
        self,
        store_factory: Callable[[], Datastore],
        components: Sequence[Component],
        context: NodeContext,
        *,
        reconcile_interval: float = 10.0,
        resync_interval: float = 90.0,
        batch_window: float = 0.02,
        probe_interval: float = 2.0,
        metrics: Any = None,
    ) -> None:
        self.store_factory = store_factory
        self.components = list(components)
        self.context = context
        self.reconcile_interval = reconcile_interval
        self.resync_interval = resync_interval
        self.batch_window = batch_window
        self.probe_interval = probe_interval
        self.metrics = metrics
        self.stopping = threading.Event()
        self.synced = threading.Event()  # the first full resync finished
        self.heartbeat = time.monotonic()
        self.revision = 0
        #: events at or below the last full listing's revision are already in the views
        self.floor = 0
        self._store: Datastore | None = None
        self._watch: Watch | None = None

    # -- readiness ---------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What keeps the node from being ready ("" entries dropped); empty when ready."""
        out = [f"{name}: {msg}" for name, msg in sorted(self.context.problems.items()) if msg]
        if not self.synced.is_set():
            out.append("calico-node has not synced with the datastore yet")
        for comp in self.components:
            try:
                msg = comp.ready()
            except Exception as exc:  # noqa: BLE001 - a broken component is not ready
                msg = f"readiness check failed: {exc}"
            if msg:
                out.append(f"{comp.name}: {msg}")
        return out

    def live(self, max_age: float = 60.0) -> bool:
        return time.monotonic() - self.heartbeat < max_age

    # -- running -----------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()
        watch = self._watch
        if watch is not None:
            watch.close()

    def _guard(self, comp: Component, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            self.context.problems.pop(f"{comp.name}/{what}", None)
        except Exception as exc:
            log.exception("Component %s failed in %s", comp.name, what)
            self.context.problems[f"{comp.name}/{what}"] = str(exc) or type(exc).__name__
            if self.metrics is not None:
                self.metrics.component_error(comp.name)

    def _datastore_failed(self, exc: BaseException) -> None:
        msg = f"datastore unreachable ({exc}); keeping the dataplane as it is"
        if self.context.problems.get("datastore") != msg:
            log.warning("%s", msg)
        self.context.problems["datastore"] = msg
        if self.metrics is not None:
            self.metrics.datastore_error()

    def full_resync(self, store: Datastore) -> int:
        revision = store.revision()
        listing = store.list(ROOT)
        self._dispatch_listing(listing)
        self.revision = max(self.revision, revision)
        self.floor = revision
        self.synced.set()
        return revision

    def _dispatch_listing(self, listing: Sequence[KV]) -> None:
        started = time.monotonic()
        for comp in self.components:
            part = [kv for kv in listing if matches(comp, kv.key)]
            self._guard(comp, "resync", functools.partial(comp.resync, part))
        self._applied(started)

    def dispatch(self, events: Sequence[WatchEvent]) -> None:
        started = time.monotonic()
        for comp in self.components:
            part = [e for e in events if matches(comp, e.key)]
            if part:
                self._guard(comp, "events", functools.partial(comp.on_events, part))
        self._applied(started)

    def _applied(self, started: float) -> None:
        if self.metrics is not None:
            self.metrics.dataplane_applied(time.monotonic() - started)

    def reconcile_all(self) -> None:
        for comp in self.components:
            self._guard(comp, "reconcile", comp.reconcile)

    def run(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            try:
                store = self._store or self.store_factory()
                self._store = store
                self.revision = 0
                self.full_resync(store)
                self.context.problems.pop("datastore", None)
                backoff = 0.5
                self._follow(store)
            except DatastoreError as exc:
                self._datastore_failed(exc)
            if self.stopping.is_set():
                break
            # The watch ended or the store failed: drop the connection and start again.
            self._close_store()
            self.heartbeat = time.monotonic()
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, 5.0)
        self._close_store()

    def _close_store(self) -> None:
        if self._store is not None:
            try:
                self._store.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._store = None

    def _follow(self, store: Datastore) -> None:
        """Follow the watch until it ends, the store fails, or a full resync is due."""
        events: queue.Queue[Any] = queue.Queue()
        watch = store.watch(ROOT, start_revision=self.revision + 1)
        self._watch = watch

        def pump() -> None:
            try:
                for event in watch:
                    events.put(event)
            except Exception as exc:  # noqa: BLE001 - the loop sees the end and reconnects
                events.put(exc)
            events.put(_END)

        reader = threading.Thread(target=pump, name="calico-watch", daemon=True)
        reader.start()
        now = time.monotonic()
        next_reconcile, next_resync, next_probe = (
            now + self.reconcile_interval,
            now + self.resync_interval,
            now + self.probe_interval,
        )
        try:
            while not self.stopping.is_set():
                self.heartbeat = time.monotonic()
                timeout = max(0.0, min(next_reconcile, next_resync, next_probe) - time.monotonic())
                try:
                    item = events.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is _END:
                    raise DatastoreErrorWatchEnded()
                if isinstance(item, BaseException):
                    raise DatastoreErrorWatchEnded(str(item))
                if item is not None:
                    batch = [item]
                    deadline = time.monotonic() + self.batch_window
                    ended = False
                    while True:
                        try:
                            more = events.get(timeout=max(0.0, deadline - time.monotonic()))
                        except queue.Empty:
                            break
                        if more is _END or isinstance(more, BaseException):
                            ended = True
                            break
                        batch.append(more)
                    self.revision = max(self.revision, batch[-1].revision)
                    batch = [e for e in batch if e.revision > self.floor]
                    if batch:
                        self.dispatch(batch)
                    if ended:
                        raise DatastoreErrorWatchEnded()
                now = time.monotonic()
                if now >= next_probe:
                    next_probe = now + self.probe_interval
                    store.revision()  # DatastoreUnavailable when it went away: readiness must say so
                    self.context.problems.pop("datastore", None)
                if now >= next_reconcile:
                    next_reconcile = now + self.reconcile_interval
                    self.reconcile_all()
                if now >= next_resync:
                    next_resync = now + self.resync_interval
                    self.full_resync(store)
        finally:
            self._watch = None
            watch.close()


class DatastoreErrorWatchEnded(DatastoreError):
    def __init__(self, detail: str = "") -> None:
        super().__init__("the datastore watch ended" + (f": {detail}" if detail else ""))
