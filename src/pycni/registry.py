"""Plugin types and the modules that implement them.

A plugin is a module with `add`, `delete`, `check` (and optionally `gc`, `status`)
functions, found through the entry points of group `pycni.plugins`: the name is the
plugin type, the value the module (`bridge = "pycni.plugins.main.bridge"`). pycni's own
are declared in its pyproject.toml; another package adds a plugin by declaring one in
its own, and `pycni plugins install` then writes a launcher for it.

Reading entry points imports `importlib.metadata` (~40 ms of imports), so a plugin
process never does it: its launcher names the module, resolved when it was written.
The agent and the CLI read them once per process.

It sits below everything that runs plugins (`skel`, the launchers, the agent, the CLI),
and imports none of them.
"""

from __future__ import annotations

import threading

from pycni.spec.errors import CNIError, Code

GROUP = "pycni.plugins"

_lock = threading.Lock()
_found: dict[str, str] | None = None


def discover(refresh: bool = False) -> dict[str, str]:
    """Every installed plugin type, mapped to its module name, sorted by type. The first
    declaration of a type wins (a third party cannot take over one of pycni's)."""
    global _found
    with _lock:
        if _found is None or refresh:
            from importlib.metadata import entry_points

            found: dict[str, str] = {}
            for entry in sorted(entry_points(group=GROUP), key=lambda e: not e.value.startswith("pycni.")):
                found.setdefault(entry.name, entry.value)
            _found = dict(sorted(found.items()))
        return dict(_found)


def module_name(plugin_type: str) -> str:
    """The module of `plugin_type`; code 7 naming what is installed when there is none."""
    known = discover()
    if plugin_type not in known:
        known = discover(refresh=True)  # installed since this process first looked
    if plugin_type in known:
        return known[plugin_type]
    raise CNIError(
        Code.INVALID_NETWORK_CONFIG,
        f"pycni has no plugin of type {plugin_type!r}",
        "installed: " + ", ".join(known),
    )


def type_of(module: str) -> str:
    """The type pycni's naming gives a plugin module: its last name, `_` spelled `-`."""
    return module.rsplit(".", 1)[-1].replace("_", "-")
