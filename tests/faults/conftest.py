"""The fault-injection lab (`lab.Lab`: launchers, an agent, a runtime cache), one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import lab as L


@pytest.fixture(scope="module")
def lab() -> Iterator[L.Lab]:
    made = L.Lab()
    try:
        yield made
    finally:
        made.close()
