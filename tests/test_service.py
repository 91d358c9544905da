"""Backing services: readiness (code 50) and resources kept across calls."""

from __future__ import annotations

import threading
import time

import pytest

from pycni import service
from pycni.spec.errors import CNIError


def test_probe_failures_are_code_50() -> None:
    service.probe("ok store", lambda: None)

    def down() -> None:
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(CNIError) as exc:
        service.probe("etcd at 127.0.0.1:1", down, fix="start etcd")
    assert exc.value.code == 50
    assert exc.value.msg == "etcd at 127.0.0.1:1 is not usable: ConnectionRefusedError: connection refused"
    assert exc.value.details == "start etcd"

    started = time.monotonic()
    with pytest.raises(CNIError, match=r"no answer within 0\.2s") as exc:
        service.probe("hung store", lambda: time.sleep(5), timeout=0.2)
    assert exc.value.code == 50 and time.monotonic() - started < 4

    def limited() -> None:
        raise CNIError(51, "datastore read-only")

    with pytest.raises(CNIError) as exc:
        service.probe("store", limited)
    assert exc.value.code == 51 and exc.value.msg == "datastore read-only"


def test_shared_is_built_once_and_rebuilt_after_discard() -> None:
    built: list[int] = []
    closed: list[int] = []

    def create() -> int:
        time.sleep(0.05)  # every caller arrives while the first is still connecting
        built.append(len(built))
        return len(built)

    key = ("pct-store", object())
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(service.shared(key, create, closed.append))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == [1] * 8 and built == [0]
    service.discard(key)
    assert closed == [1]
    assert service.shared(key, create, closed.append) == 2
    service.discard_all()
    assert closed == [1, 2]
    service.discard(key)  # nothing left: nothing to do
