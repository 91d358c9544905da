"""Fixtures of the reliability tests: hypothesis settings scaled by PYCNI_FUZZ_SCALE, the fuzz world."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

from .world import World, world

F = TypeVar("F", bound=Callable[..., Any])

# `make test` runs each fuzz test with its modest default number of inputs; `make fuzz`
# multiplies it (PYCNI_FUZZ_SCALE=50 by default there).
SCALE = float(os.environ.get("PYCNI_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> Callable[[F], F]:
    return settings(  # type: ignore[return-value]
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        database=None,  # stateless in CI: a failure prints its input (and a blob to reproduce it)
        # `make test` draws the same inputs every run (a landing must not depend on luck);
        # `make fuzz` (PYCNI_FUZZ_SCALE > 1) explores new ones each time.
        derandomize=SCALE <= 1,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory: pytest.TempPathFactory, plugin_dir: Path) -> Iterator[World]:
    with world(tmp_path_factory.mktemp("fuzz-world"), plugin_dir) as w:
        yield w
