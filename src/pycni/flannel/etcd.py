"""flannel's subnet registry in etcd v3 (pkg/subnet/etcd/registry.go), through etcd-sdk-python,
the client the calico wing uses (see pycni/calico/datastore/etcd.py for why that one).

    <prefix>/config              the network configuration (written by the operator)
    <prefix>/subnets/<key>       one lease per node (see lease.py), bound to an etcd lease

A lease is created in one transaction that succeeds only while the key has no version, so two
nodes can never hold one subnet; a restarted node takes its key back in a transaction that
compares the revision it read.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pycni import extras
from pycni.flannel.lease import SUBNET_TTL, Lease, from_kv, parse_key

T = TypeVar("T")
DEFAULT_ENDPOINTS = "http://127.0.0.1:4001,http://127.0.0.1:2379"
DEFAULT_PREFIX = "/coreos.com/network"


class EtcdUnavailable(RuntimeError):
    """etcd did not answer (down, unreachable, or refusing the credentials)."""


class ConfigNotFound(RuntimeError):
    pass


@dataclass
class EtcdOptions:
    endpoints: str = DEFAULT_ENDPOINTS
    prefix: str = DEFAULT_PREFIX
    keyfile: str = ""
    certfile: str = ""
    cafile: str = ""
    username: str = ""
    password: str = ""
    timeout: float = 5.0


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    key: str
    value: str
    etcd_lease: int
    mod_revision: int


def _endpoints(text: str) -> list[tuple[bool, str, int]]:
    """`--etcd-endpoints` (comma-separated URLs) as (secure, host, port)."""
    out = []
    for item in (e.strip() for e in text.split(",")):
        if not item:
            continue
        url = urllib.parse.urlsplit(item if "://" in item else "http://" + item)
        try:
            port = url.port or 2379
        except ValueError:
            port = 0
        if url.scheme not in ("http", "https") or not url.hostname or not port:
            raise ValueError(f"--etcd-endpoints: {item!r} is not an http(s)://host:port URL")
        out.append((url.scheme == "https", url.hostname, port))
    if not out:
        raise ValueError("--etcd-endpoints is empty")
    return out


class Registry:
    def __init__(self, options: EtcdOptions) -> None:
        feature = "flanneld's subnet registry in etcd"
        grpc = extras.require("grpc", "etcd", feature)
        pyetcd = extras.require("pyetcd", "etcd", feature)
        exceptions = extras.require("pyetcd.exceptions", "etcd", feature)

        self.options = options
        self.prefix = "/" + options.prefix.strip("/")
        self._errors: tuple[type[BaseException], ...] = (exceptions.Etcd3Exception, grpc.RpcError)
        self._tx = pyetcd.transactions
        endpoints = _endpoints(options.endpoints)
        creds = None
        if any(secure for secure, _, _ in endpoints):
            try:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=_read(options.cafile),
                    private_key=_read(options.keyfile),
                    certificate_chain=_read(options.certfile),
                )
            except OSError as exc:
                raise EtcdUnavailable(f"cannot read an etcd TLS file: {exc.filename}: {exc.strerror}") from None
        self._lock = threading.Lock()
        self._endpoints = [
            pyetcd.Endpoint(host, port, secure=secure, creds=creds if secure else None, time_retry=1.0)
            for secure, host, port in endpoints
        ]
        self._client: Any = None

    def _make(self) -> Any:
        import pyetcd

        return pyetcd.MultiEndpointEtcd3Client(
            endpoints=self._endpoints,
            timeout=self.options.timeout,
            user=self.options.username or None,
            password=self.options.password or None,
            failover=True,
        )

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, fn: Callable[[Any], T]) -> T:
        try:
            with self._lock:
                if self._client is None:
                    self._client = self._make()  # authenticates: may fail like any request
                client = self._client
            return fn(client)
        except self._errors as exc:
            raise EtcdUnavailable(f"etcd at {self.options.endpoints} did not answer: {str(exc) or type(exc).__name__}") from None

    def key(self, lease_key: str) -> str:
        return f"{self.prefix}/subnets/{lease_key}"

    @property
    def subnets_prefix(self) -> str:
        return f"{self.prefix}/subnets/"

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            for endpoint in client.endpoints.values():
                endpoint.close()

    # -- reads -----------------------------------------------------------------------------

    def network_config(self) -> str:
        value, _meta = self._call(lambda c: c.get(f"{self.prefix}/config"))
        if value is None:
            raise ConfigNotFound(
                f"no network configuration at {self.prefix}/config in etcd: write one, e.g."
                f' etcdctl put {self.prefix}/config \'{{"Network": "10.244.0.0/16", "Backend": {{"Type": "vxlan"}}}}\''
            )
        return bytes(value).decode()

    def leases(self) -> tuple[list[Lease], list[str], int]:
        """Every lease, the keys under subnets/ that are not valid leases, and the revision."""

        def read(c: Any) -> tuple[list[Any], int]:
            response = c.get_prefix_response(self.subnets_prefix)
            return list(response.kvs), int(response.header.revision)

        kvs, revision = self._call(read)
        leases, bad = [], []
        for kv in kvs:
            key = bytes(kv.key).decode()
            try:
                leases.append(from_kv(key, bytes(kv.value), int(kv.lease), int(kv.mod_revision)))
            except ValueError as exc:
                bad.append(f"{key}: {exc}")
        return leases, bad, revision

    def ttl(self, etcd_lease: int) -> int:
        """Seconds left on an etcd lease (-1 when it is gone)."""
        return int(self._call(lambda c: c.get_lease_info(etcd_lease)).TTL)

    # -- writes ----------------------------------------------------------------------------

    def create(self, lease: Lease, ttl: int = SUBNET_TTL) -> Lease | None:
        """The lease written with a new etcd lease if its key does not exist (None if it does)."""
        key = self.key(lease.key)
        granted = self._call(lambda c: c.lease(ttl))
        ok, _ = self._call(
            lambda c: c.transaction(
                compare=[self._tx.Version(key) == 0], success=[self._tx.Put(key, lease.value(), granted.id)], failure=[]
            )
        )
        if not ok:
            self._revoke(granted.id)
            return None
        return _with(lease, granted.id, 0)

    def take_back(self, lease: Lease, seen: Lease, ttl: int = SUBNET_TTL) -> Lease | None:
        """Rewrite a lease this node held (same key) if nobody changed it since it was read as
        `seen`; keeps its etcd lease when the value is unchanged and the lease is alive."""
        key = self.key(lease.key)
        if lease.value() == seen.value() and seen.etcd_lease and self.refresh(seen.etcd_lease) > 0:
            return _with(lease, seen.etcd_lease, seen.mod_revision)
        if not seen.etcd_lease:  # a reservation (a key without an etcd lease, written by hand): it stays one
            ok, _ = self._call(
                lambda c: c.transaction(
                    compare=[self._tx.Mod(key) == seen.mod_revision], success=[self._tx.Put(key, lease.value())], failure=[]
                )
            )
            return _with(lease, 0, 0) if ok else None
        granted = self._call(lambda c: c.lease(ttl))
        ok, _ = self._call(
            lambda c: c.transaction(
                compare=[self._tx.Mod(key) == seen.mod_revision],
                success=[self._tx.Put(key, lease.value(), granted.id)],
                failure=[],
            )
        )
        if not ok:
            self._revoke(granted.id)
            return None
        if seen.etcd_lease:
            self._revoke(seen.etcd_lease)  # bound to nothing now
        return _with(lease, granted.id, 0)

    def refresh(self, etcd_lease: int) -> int:
        """Renew an etcd lease; its new TTL (0 or less when it no longer exists)."""
        answers = self._call(lambda c: list(c.refresh_lease(etcd_lease)))
        return int(answers[0].TTL) if answers else 0

    def delete(self, lease_key: str) -> None:
        key = self.key(lease_key)
        self._call(lambda c: c.delete(key))

    def _revoke(self, etcd_lease: int) -> None:
        try:
            self._call(lambda c: c.revoke_lease(etcd_lease))
        except EtcdUnavailable:
            pass  # it expires on its own

    # -- watch -----------------------------------------------------------------------------

    def watch(self, start_revision: int) -> tuple[Iterator[list[WatchEvent]], Callable[[], None]]:
        """Batches of changes under subnets/ from `start_revision`; the iterator ends (or
        raises EtcdUnavailable) when the watch breaks."""
        responses, cancel = self._call(lambda c: c.watch_prefix_response(self.subnets_prefix, start_revision=start_revision))

        def batches() -> Iterator[list[WatchEvent]]:
            try:
                for response in responses:
                    out = []
                    for event in response.events:  # pyetcd's PutEvent / DeleteEvent around the kv
                        key = bytes(event.key).decode()
                        if parse_key(key) is None:
                            continue
                        kind = "delete" if type(event).__name__ == "DeleteEvent" else "put"
                        out.append(WatchEvent(kind, key, bytes(event.value).decode(), int(event.lease), int(event.mod_revision)))
                    if out:
                        yield out
            except self._errors as exc:
                raise EtcdUnavailable(f"the etcd watch broke: {str(exc) or type(exc).__name__}") from None

        return batches(), cancel


def _with(lease: Lease, etcd_lease: int, revision: int) -> Lease:
    from dataclasses import replace

    return replace(lease, etcd_lease=etcd_lease, mod_revision=revision)


def _read(path: str) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as fh:
        return fh.read()
