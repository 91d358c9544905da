"""Where plugin log records go, configured once per process.

Plugins only log (`call.log`, or `logging.getLogger("pycni.<anything>")`); they
never add handlers, because in the resident agent one process serves every call
and a handler added per call would leak. Stdout is the protocol and stderr the
runtime's, so records go to a file:

- a plugin process (no agent) appends to `PYCNI_LOG_FILE` (default
  /var/log/pycni/plugins.log) and never rotates: many short-lived processes
  rotating one file would race;
- the agent configures one rotating handler at start-up and owns rotation.

A plugin with a log file of its own (calico's `log_file_path`) writes it itself
(`pycni.calico.log`), without the `logging` machinery.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping

LOG_FILE_ENV = "PYCNI_LOG_FILE"
LOG_LEVEL_ENV = "PYCNI_LOG_LEVEL"
DEFAULT_LOG_FILE = "/var/log/pycni/plugins.log"
FORMAT = "%(asctime)s [%(levelname)s] %(process)d %(name)s %(message)s"
ROOT = "pycni"

_lock = threading.Lock()
_configured_file: str | None = None  # set once, by the first `configure`
_rotation: tuple[int, int] | None = None  # (max bytes, backups) when this process rotates


def env_file(env: Mapping[str, str]) -> str:
    return env.get(LOG_FILE_ENV) or DEFAULT_LOG_FILE


def destination(env: Mapping[str, str]) -> str:
    """The file a call's records end up in: the process's, once configured."""
    return _configured_file or env_file(env)


def _open(path: str) -> logging.Handler:
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if _rotation is not None:
            # Imported here: it costs a plugin process (which never rotates) ~5 ms.
            from logging.handlers import RotatingFileHandler

            max_bytes, backups = _rotation
            handler: logging.Handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
        else:
            handler = logging.FileHandler(path)
    except OSError:
        handler = logging.NullHandler()  # a plugin must work when its log cannot be written
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def configure(path: str, level: str = "INFO", rotate: tuple[int, int] | None = None) -> bool:
    """Send every `pycni` record to `path` (rotating at `rotate` = (max bytes, backups)).

    Only the first call in a process does anything; it returns whether it did."""
    global _configured_file, _rotation
    with _lock:
        root = logging.getLogger(ROOT)
        if _configured_file is not None or root.handlers:
            return False
        _rotation = rotate
        root.setLevel(getattr(logging, level.upper(), logging.INFO))
        root.addHandler(_open(path))
        root.propagate = False
        _configured_file = path
        return True


def configure_from_env(env: Mapping[str, str]) -> bool:
    """A plugin process: the file and level its environment names."""
    return configure(env_file(env), env.get(LOG_LEVEL_ENV, "INFO"))
