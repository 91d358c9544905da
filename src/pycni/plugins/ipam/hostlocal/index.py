"""An index of a host-local store held by a long-lived process (the agent): who holds
which address, so that ADD's duplicate check and DEL find an attachment's addresses
without reading every address file (the store's layout has no index of its own, and
must not get one: it is byte for byte the reference's, which walks the directory).

The index is trusted only while the directory is unchanged since this process last
saw it, which the directory's mtime tells: every address taken or given back (by us,
by Go's host-local, by another pycni process) creates or removes a file in it. The
one trap is the timestamp's granularity (a kernel tick on most filesystems, a second
on some): a change made by another process just after ours, within the same tick,
would leave the mtime we recorded as it was. So when this process has changed the
directory, it sets the mtime to a time well in the past (`seal`) before releasing the
lock: any later change writes "now", which can never equal it.

Everything here is used under the store's flock (one process, one thread at a time
per directory); the registry of indexes has its own lock.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

SEAL_AGE_NS = 10 * 1_000_000_000  # beyond any filesystem's timestamp granularity

Stamp = tuple[int, int, int]  # (st_dev, st_ino, st_mtime_ns) of the directory


@dataclass(frozen=True)
class Holder:
    container_id: str
    ifname: str | None  # None: written by an old version (container ID only)

    def matches(self, container_id: str, ifname: str) -> bool:
        if self.ifname is None:
            return self.container_id == container_id.strip()
        return (self.container_id, self.ifname) == (container_id.strip(), ifname)


@dataclass
class Index:
    """The address files of one store directory (by name) and their holders."""

    stamp: Stamp | None = None  # the directory as it was when the index was last right; None: rebuild
    holders: dict[str, Holder] = field(default_factory=dict)
    by_container: dict[str, set[str]] = field(default_factory=dict)

    def replace(self, holders: dict[str, Holder]) -> None:
        self.holders = {}
        self.by_container = {}
        for name, holder in holders.items():
            self.add(name, holder)

    def add(self, name: str, holder: Holder) -> None:
        self.discard(name)
        self.holders[name] = holder
        self.by_container.setdefault(holder.container_id, set()).add(name)

    def discard(self, name: str) -> None:
        holder = self.holders.pop(name, None)
        if holder is None:
            return
        names = self.by_container.get(holder.container_id)
        if names is not None:
            names.discard(name)
            if not names:
                del self.by_container[holder.container_id]

    def of_container(self, container_id: str) -> dict[str, Holder]:
        return {name: self.holders[name] for name in self.by_container.get(container_id.strip(), ())}


def stamp_of(path: str) -> Stamp:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_mtime_ns


def seal(path: str) -> Stamp:
    """Set the directory's mtime well in the past (see the module's docstring); its new stamp."""
    past = time.time_ns() - SEAL_AGE_NS
    os.utime(path, ns=(past, past))
    return stamp_of(path)


_indexes: dict[str, Index] = {}
_indexes_lock = threading.Lock()


def for_directory(path: str) -> Index:
    """This process's index of the store at `path` (empty and untrusted the first time)."""
    with _indexes_lock:
        index = _indexes.get(path)
        if index is None:
            index = _indexes[path] = Index()
        return index
