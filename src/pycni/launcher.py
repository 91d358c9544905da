"""Plugin executables: one small file per plugin type, written by `pycni plugins install`.

A runtime executes `<CNI_PATH>/<type>`. Ours is a Python file run by the real
interpreter (not a shim) in isolated mode without `site` (`-IS`): it starts in a
few milliseconds, ignores the caller's PYTHONPATH and user site, and puts the
directories this installation's packages are in on sys.path before it hands over to
`pycni.agent.client.main`, which imports only the standard library: the call goes
to the resident agent when it answers on the socket written into the launcher,
and runs in-process (`pycni.skel`) otherwise. It needs no activated virtualenv, and
works wherever pycni is installed (a virtualenv, pipx, the system, a --target
directory): the paths are asked of the installing interpreter. The plugin's module
is resolved when the launcher is written (`pycni.registry`), so a plugin process
never reads entry points.
"""

from __future__ import annotations

import os
import sys

from pycni import files, registry

# Where launchers hand calls to the agent unless installed with another socket (`pycni agent
# --socket`, `pycni plugins install --agent-socket`).
DEFAULT_AGENT_SOCKET = "/run/pycni/agent.sock"
MARKER = "# pycni-launcher"  # followed by the launcher format's version
VERSION = "v3"
# The packages a launcher may import: pycni, its dependencies and its extras' (what is not
# installed is skipped).
_TOP_LEVEL = ("pycni", "pyroute2", "nftables", "yaml", "prometheus_client", "pyetcd", "grpc", "google")

_PATHS_LINE = "sys.path[:0] = {paths!r}"
_TEMPLATE = """#!{python} -IS
{marker} {format}
# CNI plugin "{plugin_type}" of pycni {version}. Written by `pycni plugins install`; do not edit.
import sys
{paths_line}
from pycni.agent.client import main
main({plugin_type!r}, {socket!r}, {module!r})
"""
_MAIN_LINE = 6


def interpreter() -> str:
    """The real interpreter behind this environment (a venv's python is a symlink to it)."""
    return os.path.realpath(sys.executable)


def site_paths() -> list[str]:
    """Where this installation's packages are: the directories pycni and its dependencies
    were found in by this interpreter, then its environment's site-packages."""
    import importlib.util
    import sysconfig

    ordered: list[str] = []

    def add(path: str) -> None:
        if path and path not in ordered:
            ordered.append(path)

    for name in _TOP_LEVEL:
        spec = importlib.util.find_spec(name)
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if spec is not None and spec.origin and not locations:
            locations = [spec.origin]  # a single-file module
        for location in locations:
            add(os.path.dirname(os.path.realpath(location)))
    paths = sysconfig.get_paths()
    for key in ("purelib", "platlib"):
        add(paths[key])
    return ordered


def render(plugin_type: str, agent_socket: str, module: str) -> str:
    """The launcher of `plugin_type`, implemented by `module` ("" to look it up when run)."""
    from pycni import __version__

    return _TEMPLATE.format(
        python=interpreter(),
        marker=MARKER,
        format=VERSION,
        plugin_type=plugin_type,
        version=__version__,
        paths_line=_PATHS_LINE.format(paths=site_paths()),
        socket=agent_socket,
        module=module,
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


_seen: dict[tuple[str, int, int, int], tuple[str, str] | None] = {}


def runs_here(path: str, plugin_type: str) -> str | None:
    """When `path` is a launcher for `plugin_type` that would run this very installation of
    pycni on this interpreter (dispatching it in this process does exactly what executing
    it would), the module it runs ("" when it looks it up itself); None otherwise. What a
    file says is remembered while it is unchanged."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (path, st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _seen:
        if len(_seen) > 1024:
            _seen.clear()
        _seen[key] = _ours(path)
    found = _seen[key]
    return found[1] if found is not None and found[0] == plugin_type else None


def _ours(path: str) -> tuple[str, str] | None:
    """(plugin type, module) of a launcher of this installation and interpreter, else None."""
    import ast

    lines = _head(path).decode(errors="replace").splitlines()
    if len(lines) <= _MAIN_LINE or lines[1] != f"{MARKER} {VERSION}" or lines[0] != f"#!{interpreter()} -IS":
        return None
    try:
        paths = ast.literal_eval(lines[4].removeprefix("sys.path[:0] = "))
        args = ast.literal_eval(lines[_MAIN_LINE].removeprefix("main"))
    except (ValueError, SyntaxError):
        return None
    if not isinstance(args, tuple) or len(args) != 3 or not all(isinstance(a, str) for a in args):
        return None
    for entry in paths if isinstance(paths, list) else []:
        if isinstance(entry, str) and os.path.isdir(os.path.join(entry, "pycni")):
            return (args[0], args[2]) if os.path.realpath(entry) == _installation_root() else None
    return None


def install(directory: str, types: list[str] | None = None, agent_socket: str = DEFAULT_AGENT_SOCKET) -> list[str]:
    """Write one executable per plugin type into `directory`; return their paths.

    Each file is replaced atomically, so a runtime executing a plugin while we
    install never sees half a file."""
    available = registry.discover()
    wanted = types or list(available)
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise ValueError(f"unknown plugin types: {', '.join(unknown)} (installed: {', '.join(available)})")
    written = []
    for plugin_type in wanted:
        target = os.path.join(directory, plugin_type)
        files.replace_file(target, render(plugin_type, agent_socket, available[plugin_type]).encode(), 0o755)
        written.append(target)
    return written
