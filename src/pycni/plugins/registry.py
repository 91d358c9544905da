"""Plugin types and the modules that implement them.

A plugin is the module `pycni.plugins.<kind>.<name>`; its type is the module name
with `_` spelled `-` (`host_local` is `host-local`). Discovery lists the package
directories and imports nothing, so it costs a plugin process nothing.
"""

from __future__ import annotations

import os

from pycni.spec.errors import CNIError, Code

KINDS = ("main", "ipam", "meta")
# Plugins that live in a wing rather than under pycni/plugins: type -> module.
WINGS = {"flannel": "pycni.flannel.plugin"}
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def discover() -> dict[str, str]:
    """Every shipped plugin type, mapped to its module name."""
    import pkgutil  # here: a plugin process only needs `module_name`

    found: dict[str, str] = {}
    for kind in KINDS:
        for info in pkgutil.iter_modules([os.path.join(_PACKAGE_DIR, kind)]):
            if info.name.startswith("_") or info.ispkg:
                continue
            found[info.name.replace("_", "-")] = f"pycni.plugins.{kind}.{info.name}"
    found.update(WINGS)
    return dict(sorted(found.items()))


def module_name(plugin_type: str) -> str:
    if plugin_type in WINGS:
        return WINGS[plugin_type]
    kind_dirs = {kind: os.path.join(_PACKAGE_DIR, kind) for kind in KINDS}
    module = plugin_type.replace("-", "_")
    if module.isidentifier() and not module.startswith("_"):
        for kind, directory in kind_dirs.items():
            if os.path.exists(os.path.join(directory, module + ".py")):
                return f"pycni.plugins.{kind}.{module}"
    raise CNIError(
        Code.INVALID_NETWORK_CONFIG,
        f"pycni has no plugin of type {plugin_type!r}",
        "shipped: " + ", ".join(discover()),
    )


def type_of(module: str) -> str:
    for plugin_type, name in WINGS.items():
        if name == module:
            return plugin_type
    return module.rsplit(".", 1)[-1].replace("_", "-")
