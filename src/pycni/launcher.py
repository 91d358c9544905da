"""Plugin executables: one small file per plugin type, written by `pycni plugins install`.

A runtime executes `<CNI_PATH>/<type>`. Ours is a Python file run by the real
interpreter (not a shim) in isolated mode without `site` (`-IS`): it starts in a
few milliseconds, ignores the caller's PYTHONPATH and user site, and puts the
installation's own site-packages on sys.path before it hands over to
`pycni.agent.client.main`, which imports only the standard library: the call goes
to the resident agent when it answers on the socket written into the launcher,
and runs in-process (`pycni.skel`) otherwise. It needs no activated virtualenv.
"""

from __future__ import annotations

import os
import stat
import sys

from pycni import registry

# Where launchers hand calls to the agent unless installed with another socket (`pycni agent
# --socket`, `pycni plugins install --agent-socket`).
DEFAULT_AGENT_SOCKET = "/run/pycni/agent.sock"
MARKER = "# pycni-launcher"  # followed by the launcher format's version
VERSION = "v2"

_PATHS_LINE = "sys.path[:0] = {paths!r}"
_TEMPLATE = """#!{python} -IS
{marker} {format}
# CNI plugin "{plugin_type}" of pycni {version}. Written by `pycni plugins install`; do not edit.
import sys
{paths_line}
from pycni.agent.client import main
main({plugin_type!r}, {socket!r})
"""


def interpreter() -> str:
    """The real interpreter behind this environment (a venv's python is a symlink to it)."""
    return os.path.realpath(sys.executable)


def site_paths() -> list[str]:
    """Where this environment's packages are (asked of the installing, venv's interpreter)."""
    import sysconfig

    paths = sysconfig.get_paths()
    ordered = []
    for key in ("purelib", "platlib"):
        if paths[key] not in ordered:
            ordered.append(paths[key])
    return ordered


def render(plugin_type: str, agent_socket: str = DEFAULT_AGENT_SOCKET) -> str:
    from pycni import __version__

    return _TEMPLATE.format(
        python=interpreter(),
        marker=MARKER,
        format=VERSION,
        plugin_type=plugin_type,
        version=__version__,
        paths_line=_PATHS_LINE.format(paths=site_paths()),
        socket=agent_socket,
    )


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(4096)
    except OSError:
        return b""


def is_launcher(path: str) -> bool:
    """True when `path` is one of our launchers (read from its first lines)."""
    return MARKER.encode() in _head(path)


def _installation_root() -> str:
    import pycni

    return os.path.realpath(os.path.dirname(os.path.dirname(pycni.__file__)))


def runs_here(path: str, plugin_type: str) -> bool:
    """True when `path` is a launcher for `plugin_type` that would run this very
    installation of pycni on this interpreter: dispatching it in this process does
    exactly what executing it would."""
    import ast

    lines = _head(path).decode(errors="replace").splitlines()
    if len(lines) < 7 or lines[1] != f"{MARKER} {VERSION}" or lines[0] != f"#!{interpreter()} -IS":
        return False
    if not lines[6].startswith(f"main({plugin_type!r}, "):
        return False
    try:
        paths = ast.literal_eval(lines[4].removeprefix("sys.path[:0] = "))
    except (ValueError, SyntaxError):
        return False
    for entry in paths if isinstance(paths, list) else []:
        if isinstance(entry, str) and os.path.isdir(os.path.join(entry, "pycni")):
            return os.path.realpath(entry) == _installation_root()
    return False


def install(directory: str, types: list[str] | None = None, agent_socket: str = DEFAULT_AGENT_SOCKET) -> list[str]:
    """Write one executable per plugin type into `directory`; return their paths.

    Each file is replaced atomically, so a runtime executing a plugin while we
    install never sees half a file."""
    available = registry.discover()
    wanted = types or list(available)
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise ValueError(f"unknown plugin types: {', '.join(unknown)} (shipped: {', '.join(available)})")
    import tempfile

    os.makedirs(directory, exist_ok=True)
    written = []
    for plugin_type in wanted:
        target = os.path.join(directory, plugin_type)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{plugin_type}.")
        with os.fdopen(fd, "w") as fh:
            fh.write(render(plugin_type, agent_socket))
        os.chmod(tmp, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        os.replace(tmp, target)
        written.append(target)
    return written
