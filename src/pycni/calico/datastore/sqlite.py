"""The embedded datastore: one SQLite file shared by every process on the host.

SQLite gives us what etcd gives a cluster, on one machine: atomic multi-row
transactions, a durable file, and safe concurrent access from many processes
(plugin calls, calicoctl, an agent). WAL mode lets readers run while a writer
commits; a busy timeout makes a writer wait for another writer instead of failing;
`BEGIN IMMEDIATE` takes the write lock before the compare-and-swap check, so the
check and the write are one step. A store-wide revision counter stands in for
etcd's revision, and an events table (pruned to the latest entries) backs `watch`.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from pycni.calico.datastore.base import (
    KV,
    Datastore,
    DatastoreUnavailable,
    KeyExists,
    KeyNotFound,
    RevisionConflict,
    Watch,
    WatchEvent,
    prefix_end,
)

T = TypeVar("T")

DEFAULT_PATH = "/var/lib/calico/calico.db"
DEFAULT_TIMEOUT = 10.0
_EVENTS_KEPT = 10000
_WATCH_POLL = 0.05

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    rev INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0);
"""


class SQLiteDatastore(Datastore):
    kind = "embedded"

    def __init__(self, path: str = DEFAULT_PATH, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = os.path.abspath(path)
        self.timeout = timeout
        self._lock = threading.Lock()
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as exc:
            raise DatastoreUnavailable(f"cannot create the directory of {self.path}: {exc.strerror}") from None
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise DatastoreUnavailable(f"cannot open the embedded datastore {self.path}: {exc}") from None
        try:
            self._call(self._init_schema)
        except BaseException:
            self._db.close()
            raise

    @property
    def identity(self) -> str:
        return f"embedded:{self.path}"

    def _init_schema(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode").fetchone()[0]
        if str(mode).lower() != "wal":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone() is None:
            self._db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")

    def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` holding this connection; a lock held past the timeout means unavailable."""
        with self._lock:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                text = str(exc)
                if "locked" in text or "busy" in text:
                    raise DatastoreUnavailable(
                        f"the embedded datastore {self.path} stayed locked for more than {self.timeout:g}s"
                    ) from None
                raise DatastoreUnavailable(f"embedded datastore {self.path}: {text}") from None
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _write(self, fn: Callable[[int], T]) -> T:
        """One write transaction at the next revision."""

        def txn() -> T:
            self._db.execute("BEGIN IMMEDIATE")
            rev = int(self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0]) + 1
            out = fn(rev)
            self._db.execute("UPDATE meta SET value=? WHERE name='revision'", (rev,))
            if rev % 500 == 0:
                self._db.execute("DELETE FROM events WHERE rev <= ?", (rev - _EVENTS_KEPT,))
            self._db.execute("COMMIT")
            return out

        return self._call(txn)

    def _row(self, key: str) -> tuple[str, int, int] | None:
        row = self._db.execute("SELECT value, mod_rev, create_rev FROM kv WHERE key=?", (key,)).fetchone()
        return None if row is None else (str(row[0]), int(row[1]), int(row[2]))

    def get(self, key: str) -> KV | None:
        row = self._call(lambda: self._row(key))
        return None if row is None else KV(key, row[0], row[1], row[2])

    def list(self, prefix: str) -> list[KV]:
        rows = self._call(
            lambda: self._db.execute(
                "SELECT key, value, mod_rev, create_rev FROM kv WHERE key >= ? AND key < ? ORDER BY key",
                (prefix, prefix_end(prefix)),
            ).fetchall()
        )
        return [KV(str(k), str(v), int(m), int(c)) for k, v, m, c in rows]

    def create(self, key: str, value: str) -> KV:
        def put(rev: int) -> KV:
            if self._row(key) is not None:
                raise KeyExists(key)
            self._db.execute("INSERT INTO kv (key, value, create_rev, mod_rev) VALUES (?, ?, ?, ?)", (key, value, rev, rev))
            self._db.execute("INSERT INTO events (rev, kind, key, value) VALUES (?, 'put', ?, ?)", (rev, key, value))
            return KV(key, value, rev, rev)

        return self._write(put)

    def update(self, key: str, value: str, revision: int) -> KV:
        def put(rev: int) -> KV:
            row = self._row(key)
            if row is None:
                raise KeyNotFound(key)
            if row[1] != revision:
                raise RevisionConflict(key, revision)
            self._db.execute("UPDATE kv SET value=?, mod_rev=? WHERE key=?", (value, rev, key))
            self._db.execute("INSERT INTO events (rev, kind, key, value) VALUES (?, 'put', ?, ?)", (rev, key, value))
            return KV(key, value, rev, row[2])

        return self._write(put)

    def delete(self, key: str, revision: int | None = None) -> None:
        def remove(rev: int) -> None:
            row = self._row(key)
            if row is None:
                raise KeyNotFound(key)
            if revision is not None and row[1] != revision:
                raise RevisionConflict(key, revision)
            self._db.execute("DELETE FROM kv WHERE key=?", (key,))
            self._db.execute("INSERT INTO events (rev, kind, key, value) VALUES (?, 'delete', ?, NULL)", (rev, key))

        self._write(remove)

    def revision(self) -> int:
        return self._call(lambda: int(self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()[0]))

    def events_after(self, prefix: str, after: int) -> builtins.list[WatchEvent]:
        rows = self._call(
            lambda: self._db.execute(
                "SELECT rev, kind, key, value FROM events WHERE rev > ? AND key >= ? AND key < ? ORDER BY rev",
                (after, prefix, prefix_end(prefix)),
            ).fetchall()
        )
        return [WatchEvent(str(kind), str(key), value, int(rev)) for rev, kind, key, value in rows]

    def oldest_event(self) -> int:
        return self._call(lambda: int(self._db.execute("SELECT COALESCE(MIN(rev), 0) FROM events").fetchone()[0]))

    def watch(self, prefix: str, start_revision: int | None = None) -> Watch:
        after = self.revision() if start_revision is None else start_revision - 1
        if start_revision is not None and 0 < start_revision < self.oldest_event():
            raise DatastoreUnavailable(f"cannot watch from revision {start_revision}: it has been compacted")
        return _PollingWatch(self, prefix, after)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _PollingWatch(Watch):
    """Polls the events table: SQLite has no cross-process notification."""

    def __init__(self, store: SQLiteDatastore, prefix: str, after: int) -> None:
        self._store = store
        self._prefix = prefix
        self._after = after
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[WatchEvent]:
        while not self._closed.is_set():
            events = self._store.events_after(self._prefix, self._after)
            for event in events:
                self._after = event.revision
                yield event
            if not events:
                self._closed.wait(_WATCH_POLL)

    def close(self) -> None:
        self._closed.set()
