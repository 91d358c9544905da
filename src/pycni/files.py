"""Files replaced atomically: written to a temporary name in the same directory, then renamed
over the old one, so a reader (a runtime executing a plugin, a plugin reading its cache or
records) sees the old file or the new one, never a part of either."""

from __future__ import annotations

import os

PARTIAL_PREFIX = ".tmp-"  # what a killed writer leaves; readers that list a directory skip it


def replace_file(path: str, data: bytes, mode: int = 0o600, dir_mode: int = 0o755, fsync: bool = False) -> None:
    """Write `data` to `path` atomically, with `mode`; its directory is made with `dir_mode`.
    With `fsync`, the data is on disk before the new name is (it survives a power cut)."""
    import tempfile  # here: with shutil, bz2 and lzma it costs a plugin process ~5 ms it rarely needs

    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=dir_mode, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=PARTIAL_PREFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
