"""A plugin process's standard streams: the configuration comes on stdin, the answer goes
to stdout (a result or an error) and stderr, and the exit code says which.

Standard library only (`sys`, loaded at start-up anyway): every launcher imports it.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing itself is not imported: it costs a launcher ~2 ms
if TYPE_CHECKING:
    from typing import NoReturn


def read_stdin(command: str) -> bytes:
    """The configuration on stdin; never block on a terminal for VERSION or the about text."""
    if command == "" or sys.stdin is None:
        return b""
    if command == "VERSION" and sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read()


def emit(code: int, stdout: bytes, stderr: bytes) -> NoReturn:
    """Write the plugin's answer and exit with its code."""
    if stdout:
        sys.stdout.buffer.write(stdout)
        sys.stdout.buffer.flush()
    if stderr:
        sys.stderr.buffer.write(stderr)
        sys.stderr.buffer.flush()
    sys.exit(code)
