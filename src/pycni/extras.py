"""Optional dependencies, installed by need: `pycni[calico]` (calicoctl's YAML, calico-node's
metrics) and `pycni[etcd]` (the etcd v3 client and gRPC). The core (plugins, runtime, agent)
needs only pyroute2 and nftables.

    yaml = extras.require("yaml", "calico", "calicoctl's YAML")

imports the module, or raises `MissingExtra`, whose message says what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(Exception):
    """A feature needs a module of an extra that is not installed."""

    def __init__(self, missing: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the Python module {missing!r}, which is not installed: "
            f"install pycni with the {extra!r} extra (pip install 'pycni[{extra}]')"
        )
        self.missing = missing
        self.extra = extra


def require(module: str, extra: str, feature: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(exc.name or module, extra, feature) from None
