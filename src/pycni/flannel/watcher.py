"""The leases of the network, kept current from etcd: one listing, then a watch from its
revision; when the watch breaks (etcd away, compaction), or every `relist` seconds, a fresh
listing replaces everything (level-triggered: a change missed while etcd was away is seen in
the next listing). While etcd is unreachable the last known leases stay, so the dataplane
built from them stays too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pycni.flannel.etcd import EtcdUnavailable, Registry
from pycni.flannel.lease import Lease, from_kv, parse_key

log = logging.getLogger("flanneld")


class LeaseWatcher:
    def __init__(self, registry: Registry, wake: Callable[[], None], relist: float = 60.0) -> None:
        self.registry = registry
        self.wake = wake
        self.relist = relist
        self.leases: dict[str, Lease] = {}  # by subnet key (the part after subnets/)
        self.synced = False  # a listing has been read at least once
        self.problem = "etcd not read yet"
        self.events = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._cancel: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name="lease-watch", daemon=True)

    def start(self, leases: list[Lease] | None = None, revision: int = 0) -> None:
        """Start watching; `leases` and `revision` from a listing just read, to start from."""
        if leases is not None:
            self._replace(leases)
        self._start_revision = revision
        self._thread.start()

    def snapshot(self) -> list[Lease]:
        with self._lock:
            return list(self.leases.values())

    def get(self, key: str) -> Lease | None:
        with self._lock:
            return self.leases.get(key)

    def _replace(self, leases: list[Lease]) -> None:
        with self._lock:
            self.leases = {lease.key: lease for lease in leases}
            self.synced = True

    def _run(self) -> None:
        revision = self._start_revision
        pause = 0.2
        while not self._stop.is_set():
            if not revision:
                try:
                    leases, bad, revision = self.registry.leases()
                except EtcdUnavailable as exc:
                    if self.problem != str(exc):
                        log.error("Cannot list the subnet leases (keeping the dataplane as it is; retrying): %s", exc)
                    self.problem = str(exc)
                    self._stop.wait(pause)
                    pause = min(pause * 2, 5.0)
                    continue
                for problem in bad:
                    log.warning("Ignoring a bad subnet lease: %s", problem)
                if self.problem:
                    log.info("Subnet leases listed again (%d)", len(leases))
                self._replace(leases)
                self.wake()
            pause = 0.2
            self.problem = ""
            self._watch(revision + 1)
            revision = 0  # the watch ended: list again

    def _watch(self, start: int) -> None:
        try:
            batches, cancel = self.registry.watch(start)
        except EtcdUnavailable as exc:
            self.problem = str(exc)
            return
        self._cancel = cancel
        timer = threading.Timer(self.relist, cancel)
        timer.daemon = True
        timer.start()
        try:
            for batch in batches:
                with self._lock:
                    for event in batch:
                        subnets = parse_key(event.key)
                        if subnets is None:
                            continue
                        key = event.key.rsplit("/", 1)[-1]
                        if event.kind == "delete":
                            self.leases.pop(key, None)
                            continue
                        try:
                            self.leases[key] = from_kv(event.key, event.value, event.etcd_lease, event.mod_revision)
                        except ValueError as exc:
                            log.warning("Ignoring a bad subnet lease: %s", exc)
                            self.leases.pop(key, None)
                    self.events += len(batch)
                self.wake()
                if self._stop.is_set():
                    break
        except EtcdUnavailable as exc:
            self.problem = str(exc)
            log.warning("The etcd watch broke (listing again): %s", exc)
        except Exception as exc:  # noqa: BLE001 - a watch that fails any other way is listed again too
            self.problem = f"{type(exc).__name__}: {exc}"
            log.warning("The etcd watch failed (listing again): %s", self.problem)
        finally:
            timer.cancel()
            self._cancel = None
        if not self._stop.is_set():
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        cancel = self._cancel
        if cancel is not None:
            try:
                cancel()
            except Exception:  # noqa: BLE001 - the connection may be gone already
                pass
