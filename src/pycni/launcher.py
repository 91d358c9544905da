"""Plugin executables: one small file per plugin type, written by `pycni plugins install`.

A runtime executes `<CNI_PATH>/<type>`. Ours is a Python file run by the real
interpreter (not a shim) in isolated mode without `site` (`-IS`): it starts in a
few milliseconds, ignores the caller's PYTHONPATH and user site, and puts the
installation's own site-packages on sys.path before it hands over to
`pycni.skel.main`. It needs no activated virtualenv.
"""

from __future__ import annotations

import os
import stat
import sys
import sysconfig
import tempfile

from pycni.plugins import registry

MARKER = "# pycni-launcher v1"

_TEMPLATE = """#!{python} -IS
{marker}
# CNI plugin "{plugin_type}" of pycni {version}. Written by `pycni plugins install`; do not edit.
import sys
sys.path[:0] = {paths!r}
from pycni.skel import main
main({plugin_type!r})
"""


def interpreter() -> str:
    """The real interpreter behind this environment (a venv's python is a symlink to it)."""
    return os.path.realpath(sys.executable)


def site_paths() -> list[str]:
    paths = sysconfig.get_paths()
    ordered = []
    for key in ("purelib", "platlib"):
        if paths[key] not in ordered:
            ordered.append(paths[key])
    return ordered


def render(plugin_type: str) -> str:
    from pycni import __version__

    return _TEMPLATE.format(
        python=interpreter(),
        marker=MARKER,
        plugin_type=plugin_type,
        version=__version__,
        paths=site_paths(),
    )


def is_launcher(path: str) -> bool:
    """True when `path` is one of our launchers (read from its first lines)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256)
    except OSError:
        return False
    return MARKER.encode() in head


def install(directory: str, types: list[str] | None = None) -> list[str]:
    """Write one executable per plugin type into `directory`; return their paths.

    Each file is replaced atomically, so a runtime executing a plugin while we
    install never sees half a file."""
    available = registry.discover()
    wanted = types or list(available)
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise ValueError(f"unknown plugin types: {', '.join(unknown)} (shipped: {', '.join(available)})")
    os.makedirs(directory, exist_ok=True)
    written = []
    for plugin_type in wanted:
        target = os.path.join(directory, plugin_type)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{plugin_type}.")
        with os.fdopen(fd, "w") as fh:
            fh.write(render(plugin_type))
        os.chmod(tmp, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        os.replace(tmp, target)
        written.append(target)
    return written
