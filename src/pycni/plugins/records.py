"""Records: what an attachment changed, kept in a JSON file of its own, so DEL and GC can undo
it without the configuration (host-device, tuning, portmap), written so that a killed writer
never leaves a half-written record where a reader would take it for a whole one."""

from __future__ import annotations

import json
import os
from typing import Any

from pycni import faults

PARTIAL = ".tmp"  # a record being written; left behind only by a killed process


def create_new(path: str, mode: int = 0o600) -> int:
    """Open `path` for writing as a new file. Whatever had that name (what a killed writer
    left, a symlink planted to a file elsewhere) is removed first, never written through."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def write_record(path: str, body: Any, point: str = "") -> None:
    """Write `body` as JSON to `path` atomically: to `<path>.tmp`, then renamed over it.

    The temporary name is the attachment's own (calls for one attachment never run at the
    same time), so a DEL after a killed write finds it without listing the directory
    (`remove_record`). `point` names the fault-injection point between the two steps."""
    partial = path + PARTIAL
    for attempt in range(5):
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        try:
            fd = create_new(partial)
            break
        except FileNotFoundError:  # another attachment's DEL removed the emptied directory just now
            if attempt == 4:
                raise
    with os.fdopen(fd, "w") as fh:
        json.dump(body, fh, indent=1)
    if point:
        faults.checkpoint(point)
    os.replace(partial, path)


def remove_record(path: str) -> None:
    """Remove a record and what a killed write of it left; what is missing is fine."""
    for name in (path, path + PARTIAL):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def is_partial_record(name: str) -> bool:
    """A temporary file of a write that never finished (this version's, or an older one's)."""
    return name.endswith(PARTIAL) or ".tmp-" in name
