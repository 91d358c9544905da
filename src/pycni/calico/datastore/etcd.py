"""The etcd v3 datastore, for clusters (Calico's `datastore_type: etcdv3`).

Client choice: `etcd-sdk-python` (module `pyetcd`), a maintained fork of
python-etcd3 with the same synchronous API, regenerated for current protobuf and
grpcio. `etcd3` itself has been unmaintained since 2020 and its generated code
fails to import with protobuf 4+; `aetcd` is maintained too but asyncio-only,
which would force an event loop into every plugin call; `etcd3gw` talks to the
JSON gateway and cannot carry a revision compare in a typed transaction as
cleanly. grpc costs ~80 ms to import, so this module (and grpc with it) is loaded
only when a configuration names etcdv3: a plugin call on the embedded store never
pays for it. The client and grpc come with `pycni[etcd]`; without them this datastore is
refused, naming the extra (`pycni.extras`).

Every write is one etcd transaction comparing the key's create or mod revision,
so a stale writer fails with RevisionConflict and retries with fresh data.
"""

from __future__ import annotations

import builtins
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pycni import extras
from pycni.calico.datastore.base import (
    KV,
    Datastore,
    DatastoreUnavailable,
    KeyExists,
    KeyNotFound,
    RevisionConflict,
    Watch,
    WatchEvent,
)

T = TypeVar("T")
DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
DEFAULT_TIMEOUT = 5.0


@dataclass
class EtcdSettings:
    endpoints: str = DEFAULT_ENDPOINTS
    key_file: str = ""
    cert_file: str = ""
    ca_cert_file: str = ""
    timeout: float = DEFAULT_TIMEOUT


def parse_endpoints(text: str) -> builtins.list[tuple[str, str, int]]:
    """`http://h1:2379,https://h2:2379` as (scheme, host, port); ValueError naming a bad one."""
    out = []
    for item in [e.strip() for e in text.split(",") if e.strip()]:
        if "://" not in item:
            item = "http://" + item
        url = urllib.parse.urlsplit(item)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"etcd endpoint {item!r} is not an http(s)://host:port URL")
        try:
            port = url.port or 2379
        except ValueError:
            raise ValueError(f"etcd endpoint {item!r} has an invalid port") from None
        out.append((url.scheme, url.hostname, port))
    if not out:
        raise ValueError("no etcd endpoints given")
    return out


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


class EtcdDatastore(Datastore):
    kind = "etcdv3"

    def __init__(self, settings: EtcdSettings) -> None:
        feature = "the etcdv3 datastore"
        grpc = extras.require("grpc", "etcd", feature)
        pyetcd = extras.require("pyetcd", "etcd", feature)
        etcd_errors = extras.require("pyetcd.exceptions", "etcd", feature)

        self._grpc = grpc
        self._errors: tuple[type[BaseException], ...] = (etcd_errors.Etcd3Exception, grpc.RpcError)
        # A member that went away (or a cluster between leaders): the client marks the endpoint
        # failed and the next request goes to another one. pyetcd does not repeat the request.
        self._failover: tuple[type[BaseException], ...] = (
            etcd_errors.ConnectionFailedError,
            etcd_errors.ConnectionTimeoutError,
            etcd_errors.NoServerAvailableError,
            etcd_errors.InternalServerError,
        )
        self.retried = 0  # requests repeated on another member (tests and logs read it)
        self.settings = settings
        endpoints = parse_endpoints(settings.endpoints)
        creds = None
        if any(scheme == "https" for scheme, _, _ in endpoints):
            try:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=_read(settings.ca_cert_file) if settings.ca_cert_file else None,
                    private_key=_read(settings.key_file) if settings.key_file else None,
                    certificate_chain=_read(settings.cert_file) if settings.cert_file else None,
                )
            except OSError as exc:
                raise DatastoreUnavailable(f"cannot read etcd TLS file {exc.filename}: {exc.strerror}") from None
        self._client = pyetcd.MultiEndpointEtcd3Client(
            endpoints=[
                pyetcd.Endpoint(host, port, secure=scheme == "https", creds=creds if scheme == "https" else None, time_retry=1.0)
                for scheme, host, port in endpoints
            ],
            # Half the call's budget per request: a request that hangs on a member that just died
            # (or waits out an election) leaves time to repeat it on another member.
            timeout=max(1.0, settings.timeout / 2),
            failover=True,
        )
        self._tx = self._client.transactions

    @property
    def identity(self) -> str:
        return "etcdv3:" + ",".join(sorted(f"{s}://{h}:{p}" for s, h, p in parse_endpoints(self.settings.endpoints)))

    def _call(self, fn: Callable[[], T]) -> T:
        return self._repeating(fn)[0]

    def _repeating(self, fn: Callable[[], T]) -> tuple[T, bool]:
        """Run one request; when its member fails, repeat it on another until the timeout.
        Returns the answer and whether the request was repeated.

        Repeating is safe: reads are reads, and every write is a transaction that compares a
        revision, so a write whose answer was lost (it did happen) fails its compare the second
        time; the writes below then recognise their own value."""
        deadline = time.monotonic() + self.settings.timeout
        pause = 0.05
        repeated = False
        while True:
            try:
                return fn(), repeated
            except self._failover as exc:
                if time.monotonic() + pause >= deadline:
                    raise self._unavailable(exc) from None
                repeated = True
                self.retried += 1
                time.sleep(pause)
                pause = min(pause * 2, 0.4)
            except self._errors as exc:
                raise self._unavailable(exc) from None

    def _unavailable(self, exc: BaseException) -> DatastoreUnavailable:
        detail = str(exc) or type(exc).__name__
        return DatastoreUnavailable(
            f"etcd at {self.settings.endpoints} is unreachable (timeout {self.settings.timeout:g}s): {detail}"
        )

    def get(self, key: str) -> KV | None:
        value, meta = self._call(lambda: self._client.get(key))
        if meta is None:
            return None
        return KV(key, value.decode(), int(meta.mod_revision), int(meta.create_revision))

    def list(self, prefix: str) -> list[KV]:
        items = self._call(lambda: list(self._client.get_prefix(prefix, sort_order="ascend", sort_target="key")))
        return [KV(m.key.decode(), v.decode(), int(m.mod_revision), int(m.create_revision)) for v, m in items]

    def _txn(self, key: str, compare: Any, success: builtins.list[Any]) -> tuple[bool, int, KV | None, bool]:
        """Run compare → success, else read the key; return (ok, new revision, current kv on
        failure, whether the request was repeated)."""
        (ok, responses), repeated = self._repeating(
            lambda: self._client.transaction(compare=[compare], success=success, failure=[self._tx.get(key)])
        )
        if ok:
            header = responses[0].response_put.header if responses[0].HasField("response_put") else None
            if header is None:
                header = responses[0].response_delete_range.header
            return True, int(header.revision), None, repeated
        found = responses[0] if responses else []
        if not found:
            return False, 0, None, repeated
        value, meta = found[0]
        return False, 0, KV(key, value.decode(), int(meta.mod_revision), int(meta.create_revision)), repeated

    def create(self, key: str, value: str) -> KV:
        ok, rev, current, repeated = self._txn(key, self._tx.create(key) == 0, [self._tx.put(key, value)])
        if ok:
            return KV(key, value, rev, rev)
        if repeated and current is not None and current.value == value:
            return current  # the first request was applied; only its answer was lost
        raise KeyExists(key)

    def update(self, key: str, value: str, revision: int) -> KV:
        ok, rev, current, repeated = self._txn(key, self._tx.mod(key) == revision, [self._tx.put(key, value)])
        if ok:
            return KV(key, value, rev, 0)
        if current is None:
            raise KeyNotFound(key)
        if repeated and current.value == value:
            return current  # the first request was applied; only its answer was lost
        raise RevisionConflict(key, revision)

    def delete(self, key: str, revision: int | None = None) -> None:
        if revision is None:
            deleted, repeated = self._repeating(lambda: self._client.delete(key))
            if not deleted and not repeated:
                raise KeyNotFound(key)  # (after a repeat, "not found" may be the first request's doing)
            return
        ok, _, current, repeated = self._txn(key, self._tx.mod(key) == revision, [self._tx.delete(key)])
        if ok or (repeated and current is None):
            return
        if current is None:
            raise KeyNotFound(key)
        raise RevisionConflict(key, revision)

    def revision(self) -> int:
        status = self._call(lambda: self._client.get_response("/calico/ipam/v2/config", count_only=True))
        return int(status.header.revision)

    def watch(self, prefix: str, start_revision: int | None = None) -> Watch:
        kwargs: dict[str, Any] = {}
        if start_revision is not None:
            kwargs["start_revision"] = start_revision
        iterator, cancel = self._call(lambda: self._client.watch_prefix(prefix, **kwargs))
        return _EtcdWatch(iterator, cancel)

    def close(self) -> None:
        for endpoint in self._client.endpoints.values():
            endpoint.close()


class _EtcdWatch(Watch):
    def __init__(self, iterator: Iterator[Any], cancel: Callable[[], None]) -> None:
        self._events: queue.Queue[WatchEvent | None] = queue.Queue()
        self._cancel = cancel
        self._closed = False
        self._thread = threading.Thread(target=self._pump, args=(iterator,), daemon=True, name="etcd-watch")
        self._thread.start()

    def _pump(self, iterator: Iterator[Any]) -> None:
        try:
            for event in iterator:
                kind = "delete" if type(event).__name__ == "DeleteEvent" else "put"
                value = None if kind == "delete" else bytes(event.value).decode()
                self._events.put(WatchEvent(kind, bytes(event.key).decode(), value, int(event.mod_revision)))
        except Exception:  # noqa: BLE001 - the watch ends; the consumer sees the end of iteration
            pass
        finally:
            self._events.put(None)

    def __iter__(self) -> Iterator[WatchEvent]:
        while True:
            event = self._events.get()
            if event is None:
                return
            yield event

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._cancel()
            except Exception:  # noqa: BLE001 - the watch may already be gone with the connection
                pass
