"""The runtime side of CNI (what libcni is for Go): load network configuration
lists, run their plugin chains, and keep the result cache.

The names below load `api` on first use: plugins import `pycni.runtime.delegate`
on every call, and must not pay for the runtime's cache and chain code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pycni.runtime.api import CNIConfig, GCArgs, RuntimeConf

__all__ = ["CNIConfig", "GCArgs", "RuntimeConf"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pycni.runtime import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
