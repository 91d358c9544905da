"""One test suite, run against both datastores: the embedded SQLite file and a real etcd."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycni.calico.datastore import (
    Datastore,
    DatastoreSettings,
    DatastoreUnavailable,
    KeyExists,
    KeyNotFound,
    RevisionConflict,
    UnsupportedDatastore,
    open_datastore,
)

from .conftest import EtcdServer


@pytest.fixture(params=["embedded", "etcdv3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Datastore]:
    if request.param == "embedded":
        settings = DatastoreSettings(kind="embedded", path=str(tmp_path / "calico.db"))
    else:
        server: EtcdServer = request.getfixturevalue("etcd")
        settings = DatastoreSettings(kind="etcdv3", etcd_endpoints=server.endpoint)
    ds = open_datastore(settings)
    try:
        yield ds
    finally:
        ds.close()


def test_create_get_list(store: Datastore) -> None:
    kv = store.create("/calico/test/a", '{"x": 1}')
    assert kv.revision > 0 and kv.value == '{"x": 1}'
    got = store.get("/calico/test/a")
    assert got is not None and got.value == '{"x": 1}' and got.revision == kv.revision
    assert store.get("/calico/test/missing") is None
    store.create("/calico/test/c", "3")
    store.create("/calico/test/b", "2")
    store.create("/calico/testx", "other prefix")
    assert [k.key for k in store.list("/calico/test/")] == ["/calico/test/a", "/calico/test/b", "/calico/test/c"]
    with pytest.raises(KeyExists):
        store.create("/calico/test/a", "again")


def test_compare_and_swap(store: Datastore) -> None:
    first = store.create("/calico/test/k", "1")
    second = store.update("/calico/test/k", "2", first.revision)
    assert second.revision > first.revision
    with pytest.raises(RevisionConflict):
        store.update("/calico/test/k", "stale", first.revision)
    assert store.get("/calico/test/k").value == "2"  # type: ignore[union-attr]
    with pytest.raises(KeyNotFound):
        store.update("/calico/test/none", "x", 1)
    assert store.revision() >= second.revision


def test_delete(store: Datastore) -> None:
    kv = store.create("/calico/test/d", "1")
    newer = store.update("/calico/test/d", "2", kv.revision)
    with pytest.raises(RevisionConflict):
        store.delete("/calico/test/d", kv.revision)
    store.delete("/calico/test/d", newer.revision)
    assert store.get("/calico/test/d") is None
    with pytest.raises(KeyNotFound):
        store.delete("/calico/test/d")
    store.create("/calico/test/e", "1")
    store.delete("/calico/test/e")
    assert store.list("/calico/test/") == []


def test_watch(store: Datastore) -> None:
    start = store.create("/calico/test/w0", "before").revision
    seen: list[tuple[str, str, str | None]] = []
    watch = store.watch("/calico/test/", start_revision=start + 1)
    done = threading.Event()

    def consume() -> None:
        for event in watch:
            seen.append((event.kind, event.key, event.value))
            if len(seen) == 3:
                done.set()
                return

    thread = threading.Thread(target=consume)
    thread.start()
    kv = store.create("/calico/test/w1", "1")
    store.update("/calico/test/w1", "2", kv.revision)
    store.create("/calico/other", "not watched")
    store.delete("/calico/test/w1")
    assert done.wait(10), seen
    watch.close()
    thread.join(10)
    assert seen == [("put", "/calico/test/w1", "1"), ("put", "/calico/test/w1", "2"), ("delete", "/calico/test/w1", None)]


def _increment(args: tuple[str, str, int]) -> int:
    kind, where, count = args
    settings = DatastoreSettings(kind=kind, path=where, etcd_endpoints=where)
    conflicts = 0
    with open_datastore(settings) as ds:
        for _ in range(count):
            while True:
                kv = ds.get("/calico/test/counter")
                assert kv is not None
                try:
                    ds.update(kv.key, str(int(kv.value) + 1), kv.revision)
                    break
                except RevisionConflict:
                    conflicts += 1
    return conflicts


def test_concurrent_processes_never_lose_an_update(store: Datastore, tmp_path: Path) -> None:
    store.create("/calico/test/counter", "0")
    where = getattr(store, "path", None) or store.identity.split(":", 1)[1]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        pool.map(_increment, [(store.kind, where, 25)] * 4)
    assert store.get("/calico/test/counter").value == "100"  # type: ignore[union-attr]


def test_kubernetes_is_refused_naming_the_available_ones() -> None:
    with pytest.raises(UnsupportedDatastore) as err:
        open_datastore(DatastoreSettings(kind="kubernetes"))
    assert "embedded" in str(err.value) and "etcdv3" in str(err.value)


def test_unreachable_etcd_fails_fast() -> None:
    import time

    from .conftest import free_port

    started = time.monotonic()
    with (
        pytest.raises(DatastoreUnavailable),
        open_datastore(DatastoreSettings(kind="etcdv3", etcd_endpoints=f"http://127.0.0.1:{free_port()}", timeout=2)) as ds,
    ):
        ds.get("/calico/x")
    assert time.monotonic() - started < 5


def test_embedded_store_locked_past_the_timeout_is_unavailable(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "calico.db"
    open_datastore(DatastoreSettings(path=str(path))).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with (
            pytest.raises(DatastoreUnavailable, match="stayed locked"),
            open_datastore(DatastoreSettings(path=str(path), timeout=0.5)) as ds,
        ):
            ds.create("/calico/x", "1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
