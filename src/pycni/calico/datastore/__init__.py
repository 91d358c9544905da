"""Open the datastore a configuration names: the embedded SQLite store (default) or etcd v3.

The etcd backend (and grpc with it) is imported here only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

from pycni.calico.datastore.base import (
    KV,
    Datastore,
    DatastoreError,
    DatastoreUnavailable,
    KeyExists,
    KeyNotFound,
    RevisionConflict,
    Watch,
    WatchEvent,
)

__all__ = [
    "AVAILABLE",
    "EMBEDDED",
    "ETCD",
    "KV",
    "Datastore",
    "DatastoreError",
    "DatastoreSettings",
    "DatastoreUnavailable",
    "KeyExists",
    "KeyNotFound",
    "RevisionConflict",
    "UnsupportedDatastore",
    "Watch",
    "WatchEvent",
    "open_datastore",
]

EMBEDDED = "embedded"
ETCD = "etcdv3"
AVAILABLE = (EMBEDDED, ETCD)
DEFAULT_EMBEDDED_PATH = "/var/lib/calico/calico.db"


class UnsupportedDatastore(DatastoreError):
    """A datastore type pycni cannot serve (e.g. kubernetes: there is no API server)."""

    def __init__(self, kind: str) -> None:
        if kind == "kubernetes":
            why = 'datastore_type "kubernetes" stores Calico data in a Kubernetes API server, which pycni cannot use'
        else:
            why = f"unknown datastore_type {kind!r}"
        super().__init__(f"{why}; available datastores: {EMBEDDED} (the default: one SQLite file on this host), {ETCD}")
        self.kind = kind


@dataclass
class DatastoreSettings:
    kind: str = EMBEDDED
    path: str = DEFAULT_EMBEDDED_PATH
    etcd_endpoints: str = ""
    etcd_key_file: str = ""
    etcd_cert_file: str = ""
    etcd_ca_cert_file: str = ""
    timeout: float = 0.0

    def validate(self) -> None:
        if self.kind not in AVAILABLE:
            raise UnsupportedDatastore(self.kind)


def open_datastore(settings: DatastoreSettings) -> Datastore:
    settings.validate()
    if settings.kind == ETCD:
        from pycni.calico.datastore.etcd import DEFAULT_ENDPOINTS, EtcdDatastore, EtcdSettings

        return EtcdDatastore(
            EtcdSettings(
                endpoints=settings.etcd_endpoints or DEFAULT_ENDPOINTS,
                key_file=settings.etcd_key_file,
                cert_file=settings.etcd_cert_file,
                ca_cert_file=settings.etcd_ca_cert_file,
                timeout=settings.timeout or 5.0,
            )
        )
    from pycni.calico.datastore.sqlite import SQLiteDatastore

    return SQLiteDatastore(settings.path or DEFAULT_EMBEDDED_PATH, timeout=settings.timeout or 10.0)
