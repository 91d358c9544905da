"""The datastore interface every backend implements, and its errors.

A datastore is a flat key space of JSON documents, each with a revision that
changes on every write (etcd's mod_revision). Writers never overwrite blindly:
`create` fails when the key exists and `update`/`delete` take the revision they
read, so two writers racing on a key see one of them fail with `RevisionConflict`
and retry with fresh data (compare-and-swap).
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass


class DatastoreError(Exception):
    """Base of every datastore failure."""


class KeyNotFound(DatastoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"resource does not exist: {key}")
        self.key = key


class KeyExists(DatastoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"resource already exists: {key}")
        self.key = key


class RevisionConflict(DatastoreError):
    def __init__(self, key: str, revision: int) -> None:
        super().__init__(f"update conflict: {key} changed since revision {revision}")
        self.key = key
        self.revision = revision


class DatastoreUnavailable(DatastoreError):
    """The store cannot be reached (or stays locked) within the configured time."""


@dataclass(frozen=True)
class KV:
    key: str
    value: str
    revision: int
    create_revision: int = 0


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    key: str
    value: str | None
    revision: int


class Watch(abc.ABC):
    """An iterator of changes under a prefix; `close` ends it (also from another thread)."""

    @abc.abstractmethod
    def __iter__(self) -> Iterator[WatchEvent]: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class Datastore(abc.ABC):
    """get, list by prefix, create, compare-and-swap update, delete, watch."""

    #: "embedded" or "etcdv3"
    kind: str = ""

    @property
    @abc.abstractmethod
    def identity(self) -> str:
        """Names this store (type and location), e.g. to match journal entries to it."""

    @abc.abstractmethod
    def get(self, key: str) -> KV | None: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> list[KV]:
        """Every key starting with `prefix`, sorted by key."""

    @abc.abstractmethod
    def create(self, key: str, value: str) -> KV:
        """Write a new key; KeyExists when it is already there."""

    @abc.abstractmethod
    def update(self, key: str, value: str, revision: int) -> KV:
        """Replace the key's value if it is still at `revision`; RevisionConflict otherwise
        (KeyNotFound when it is gone)."""

    @abc.abstractmethod
    def delete(self, key: str, revision: int | None = None) -> None:
        """Remove the key (only if still at `revision`, when given); KeyNotFound when missing."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int | None = None) -> Watch:
        """Changes under `prefix` after `start_revision` (default: from now on)."""

    @abc.abstractmethod
    def revision(self) -> int:
        """The store's current revision (the latest write anywhere)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Datastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with `prefix` (etcd's range_end)."""
    data = bytearray(prefix.encode())
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return data.decode(errors="surrogateescape")
        data.pop()
    return "\0"
