"""host-local's on-disk store, byte for byte the reference's (backend/disk).

`<dataDir>/<network>/` holds one file per allocated address, named by the address
(Go's spelling: IPv6 compressed, lower case) and containing "<containerID>\\r\\n<ifname>"
(older versions wrote only the container ID, which is still understood);
`last_reserved_ip.<rangeSetIndex>` holds the last address handed out from each range
set; `lock` is flock(2)ed exclusively for as long as the store is open, the very lock
Go's host-local takes, so both can allocate from one directory at the same time.

Unlike the reference, an address file never exists without its holder: the holder is
written to `.reserving` first, which is then hard-linked under the address's name (the
link fails when the address is taken). The reference creates the address file and then
writes it: a process killed in between leaves an empty file, an address no DEL gives
back. A `.reserving` left by a killed process is not an allocation (its name is not an
address; Go's host-local skips it too) and the next call that opens the store removes it.

Finding an attachment's addresses means reading address files (the layout has no other
record of holders). A store opened with `indexed=True` (in the agent, which lives on)
keeps `hostlocal.index`'s index of the directory, so that ADD's duplicate check and DEL
read no file while nobody else changed the directory, however many addresses it holds.
"""

from __future__ import annotations

import fcntl
import os

from pycni import faults
from pycni.plugins.ipam.hostlocal import index as store_index
from pycni.plugins.ipam.hostlocal.index import Holder
from pycni.plugins.records import create_new
from pycni.spec import ipaddr
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import IPAddress

LAST_RESERVED = "last_reserved_ip."
LINE_BREAK = "\r\n"
LOCK_FILE = "lock"
RESERVING = ".reserving"


__all__ = ["Holder", "Store"]


def _io_error(what: str, exc: OSError) -> CNIError:
    return CNIError(Code.IO_FAILURE, f"host-local: {what}: {exc.strerror or exc}")


class Store:
    """The directory of one network, locked while open (`with Store(...) as store:`)."""

    def __init__(self, data_dir: str, network: str, create: bool = True, indexed: bool = False) -> None:
        self.dir = os.path.join(data_dir, network)
        self.create = create
        self.indexed = indexed
        self._lock_fd = -1
        self._prepared = ""  # the holder written to RESERVING, linked under each address tried
        self._index: store_index.Index | None = None  # while locked, when indexed
        self._index_current = False  # the index is right for the directory as it now is
        self._changed = False  # this call created or removed a file in the directory

    def __enter__(self) -> Store:
        if not self.create and not os.path.isdir(self.dir):
            return self  # nothing was ever allocated: a read or a release has nothing to lock (or to create)
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            # Go's filemutex opens the lock read-only with O_CREAT, mode 0750.
            flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW  # not a file a planted symlink names
            self._lock_fd = os.open(os.path.join(self.dir, LOCK_FILE), flags, 0o750)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            if self.indexed:
                self._open_index()
            self._remove(self._path(RESERVING))  # a killed process's, if any: ours now that we hold the lock
        except (OSError, CNIError) as exc:
            self.close()
            if isinstance(exc, CNIError):
                raise
            raise _io_error(f"cannot open the store {self.dir}", exc) from None
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self._index_current = False  # whatever the failure left: the next call reads the directory
        self.close()

    def close(self) -> None:
        if self._lock_fd >= 0:
            if self._prepared:
                self._prepared = ""
                try:
                    os.remove(self._path(RESERVING))
                    self._changed = True
                except OSError:
                    pass  # removed by whoever opens the store next
            self._close_index()
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = -1

    # -- the index (see hostlocal.index), only ever used under the lock

    def _open_index(self) -> None:
        self._index = store_index.for_directory(self.dir)
        self._index_current = self._index.stamp is not None and self._index.stamp == store_index.stamp_of(self.dir)
        self._changed = False

    def _close_index(self) -> None:
        """Record the directory as this call leaves it, while still holding the lock."""
        index, self._index = self._index, None
        if index is None:
            return
        index.stamp = None  # until proved right below
        if not self._index_current:
            return
        try:
            index.stamp = store_index.seal(self.dir) if self._changed else store_index.stamp_of(self.dir)
        except OSError:
            pass  # rebuilt by the next call

    def _indexed_holders(self) -> store_index.Index | None:
        """The index, right for the directory as it is now; None when the store is not indexed."""
        if self._index is None:
            return None
        if not self._index_current:
            self._index.replace(dict(self._read_holders(None)))
            self._index_current = True
        return self._index

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def reserve(self, ip: IPAddress, container_id: str, ifname: str, range_set: int) -> bool:
        """Take `ip`; False when it is already taken."""
        path = self._path(str(ip))
        holder = container_id.strip() + LINE_BREAK + ifname
        try:
            if self._prepared != holder:
                self._prepare(holder)
            faults.checkpoint("address-file-prepared")
            os.link(self._path(RESERVING), path)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _io_error(f"cannot reserve {ip}", exc) from None
        self._changed = True
        if self._index is not None and self._index_current:
            self._index.add(str(ip), Holder(container_id.strip(), ifname))
        faults.checkpoint("address-file-linked")
        try:
            # The next address must not share this file: a new one is written for it.
            self._prepared = ""
            os.remove(self._path(RESERVING))
            self._write(LAST_RESERVED + str(range_set), str(ip))
        except OSError as exc:
            self.release(ip)
            raise _io_error(f"cannot reserve {ip}", exc) from None
        return True

    def _prepare(self, holder: str) -> None:
        """Write the holder to a new RESERVING file (never into an old one: a killed process may
        have left it linked to an address it took)."""
        fd = create_new(self._path(RESERVING), 0o644)
        self._changed = True
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(holder)
        self._prepared = holder

    def _write(self, name: str, text: str) -> None:
        """Replace a file through `.<name>.tmp` (never write through a symlink planted in its
        place). The temporary name is fixed, so a killed process leaves at most one, which the
        next writer (holding the lock, like this one) removes."""
        tmp = self._path(f".{name}.tmp")
        fd = create_new(tmp, 0o644)
        self._changed = True
        try:
            with os.fdopen(fd, "w", newline="") as fh:
                fh.write(text)
            os.replace(tmp, self._path(name))
        except BaseException:
            self._remove(tmp)
            raise

    def last_reserved(self, range_set: int) -> IPAddress | None:
        try:
            with open(self._path(LAST_RESERVED + str(range_set))) as fh:
                return ipaddr.address(fh.read().strip())
        except (OSError, ValueError):
            return None

    def restore_last_reserved(self, range_set: int, ip: IPAddress | None) -> None:
        """Put back a range set's round-robin position (after a failed ADD)."""
        if ip is None:
            self._remove(self._path(LAST_RESERVED + str(range_set)))
        else:
            self._write(LAST_RESERVED + str(range_set), str(ip))

    def allocations(self, sizes: set[int] | None = None) -> dict[IPAddress, Holder]:
        """Every allocated address and who holds it; with `sizes`, only the files of those
        sizes are read (a stat is much cheaper than reading a file, and an attachment's
        files have a known size: that is what keeps DEL from reading the whole store when
        it is not indexed)."""
        index = self._indexed_holders()
        pairs = index.holders.items() if index is not None else self._read_holders(sizes)
        return {ipaddr.address(name): holder for name, holder in pairs}

    def _read_holders(self, sizes: set[int] | None) -> list[tuple[str, Holder]]:
        """(address file name, holder) of every address file (of one of `sizes`), read from disk."""
        out: list[tuple[str, Holder]] = []
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise _io_error(f"cannot read the store {self.dir}", exc) from None
        for entry in entries:
            name = entry.name
            try:
                ipaddr.address(name)
            except ValueError:
                continue  # lock, last_reserved_ip.N
            try:
                if sizes is not None and entry.stat().st_size not in sizes:
                    continue
                with open(self._path(name), newline="") as fh:
                    content = fh.read().strip()
            except OSError:
                continue
            container_id, sep, ifname = content.partition(LINE_BREAK)
            out.append((name, Holder(container_id, ifname if sep else None)))
        return out

    def _of_attachment(self, container_id: str, ifname: str) -> dict[IPAddress, Holder]:
        """The address files that may be the attachment's: from the index, or those of its sizes."""
        index = self._indexed_holders()
        if index is None:
            return self.allocations(self._sizes(container_id, ifname))
        return {ipaddr.address(name): holder for name, holder in index.of_container(container_id).items()}

    @staticmethod
    def _sizes(container_id: str, ifname: str) -> set[int]:
        """The sizes an attachment's files can have: `<id>\\r\\n<ifname>`, or the old format's
        bare `<id>` (with or without a line break)."""
        cid = len(container_id.encode())
        return {cid + len(LINE_BREAK) + len(ifname.encode()), cid, cid + 1, cid + 2}

    def held_by(self, container_id: str, ifname: str) -> list[IPAddress]:
        """The addresses of one attachment (those written in the old format included)."""
        candidates = self._of_attachment(container_id, ifname)
        held = [ip for ip, holder in candidates.items() if holder.matches(container_id, ifname)]
        return sorted(held, key=lambda ip: (ip.version, int(ip)))

    def release(self, ip: IPAddress) -> None:
        self._remove(self._path(str(ip)))
        if self._index is not None:
            self._index.discard(str(ip))

    def release_attachment(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Release every address of (containerID, ifname), as the reference's ReleaseByID:
        files in the current format first, the old format only if none matched."""
        allocations = self._of_attachment(container_id, ifname)
        exact = [ip for ip, h in allocations.items() if h.ifname is not None and h.matches(container_id, ifname)]
        chosen = exact or [ip for ip, h in allocations.items() if h.ifname is None and h.matches(container_id, ifname)]
        for ip in chosen:
            self.release(ip)
            faults.checkpoint("address-released")
        return chosen

    def _remove(self, path: str) -> None:
        try:
            os.remove(path)
            self._changed = True
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _io_error(f"cannot release {os.path.basename(path)}", exc) from None
