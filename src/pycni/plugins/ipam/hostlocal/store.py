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
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass

from pycni import faults
from pycni.plugins.records import create_new
from pycni.spec import ipaddr
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import IPAddress

LAST_RESERVED = "last_reserved_ip."
LINE_BREAK = "\r\n"
LOCK_FILE = "lock"
RESERVING = ".reserving"


@dataclass(frozen=True)
class Holder:
    container_id: str
    ifname: str | None  # None: written by an old version (container ID only)

    def matches(self, container_id: str, ifname: str) -> bool:
        if self.ifname is None:
            return self.container_id == container_id.strip()
        return (self.container_id, self.ifname) == (container_id.strip(), ifname)


def _io_error(what: str, exc: OSError) -> CNIError:
    return CNIError(Code.IO_FAILURE, f"host-local: {what}: {exc.strerror or exc}")


class Store:
    """The directory of one network, locked while open (`with Store(...) as store:`)."""

    def __init__(self, data_dir: str, network: str, create: bool = True) -> None:
        self.dir = os.path.join(data_dir, network)
        self.create = create
        self._lock_fd = -1
        self._prepared = ""  # the holder written to RESERVING, linked under each address tried

    def __enter__(self) -> Store:
        if not self.create and not os.path.isdir(self.dir):
            return self  # nothing was ever allocated: a read or a release has nothing to lock (or to create)
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            # Go's filemutex opens the lock read-only with O_CREAT, mode 0750.
            flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW  # not a file a planted symlink names
            self._lock_fd = os.open(os.path.join(self.dir, LOCK_FILE), flags, 0o750)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._remove(self._path(RESERVING))  # a killed process's, if any: ours now that we hold the lock
        except (OSError, CNIError) as exc:
            self.close()
            if isinstance(exc, CNIError):
                raise
            raise _io_error(f"cannot open the store {self.dir}", exc) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._lock_fd >= 0:
            if self._prepared:
                self._prepared = ""
                try:
                    os.remove(self._path(RESERVING))
                except OSError:
                    pass  # removed by whoever opens the store next
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = -1

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
        faults.checkpoint("address-file-linked")
        try:
            # The next address must not share this file: a new one is written for it.
            self._prepared = ""
            os.remove(self._path(RESERVING))
            self._write(LAST_RESERVED + str(range_set), str(ip))
        except OSError as exc:
            self._remove(path)
            raise _io_error(f"cannot reserve {ip}", exc) from None
        return True

    def _prepare(self, holder: str) -> None:
        """Write the holder to a new RESERVING file (never into an old one: a killed process may
        have left it linked to an address it took)."""
        fd = create_new(self._path(RESERVING), 0o644)
        with os.fdopen(fd, "w", newline="") as fh:
            fh.write(holder)
        self._prepared = holder

    def _write(self, name: str, text: str) -> None:
        """Replace a file through `.<name>.tmp` (never write through a symlink planted in its
        place). The temporary name is fixed, so a killed process leaves at most one, which the
        next writer (holding the lock, like this one) removes."""
        tmp = self._path(f".{name}.tmp")
        fd = create_new(tmp, 0o644)
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
        files have a known size: that is what keeps DEL from reading the whole store)."""
        out: dict[IPAddress, Holder] = {}
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise _io_error(f"cannot read the store {self.dir}", exc) from None
        for entry in entries:
            try:
                ip = ipaddr.address(entry.name)
            except ValueError:
                continue  # lock, last_reserved_ip.N
            name = entry.name
            try:
                if sizes is not None and entry.stat().st_size not in sizes:
                    continue
                with open(self._path(name), newline="") as fh:
                    content = fh.read().strip()
            except OSError:
                continue
            container_id, sep, ifname = content.partition(LINE_BREAK)
            out[ip] = Holder(container_id, ifname if sep else None)
        return out

    @staticmethod
    def _sizes(container_id: str, ifname: str) -> set[int]:
        """The sizes an attachment's files can have: `<id>\\r\\n<ifname>`, or the old format's
        bare `<id>` (with or without a line break)."""
        cid = len(container_id.encode())
        return {cid + len(LINE_BREAK) + len(ifname.encode()), cid, cid + 1, cid + 2}

    def held_by(self, container_id: str, ifname: str) -> list[IPAddress]:
        """The addresses of one attachment (those written in the old format included)."""
        candidates = self.allocations(self._sizes(container_id, ifname))
        held = [ip for ip, holder in candidates.items() if holder.matches(container_id, ifname)]
        return sorted(held, key=lambda ip: (ip.version, int(ip)))

    def release(self, ip: IPAddress) -> None:
        self._remove(self._path(str(ip)))

    def release_attachment(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Release every address of (containerID, ifname), as the reference's ReleaseByID:
        files in the current format first, the old format only if none matched."""
        allocations = self.allocations(self._sizes(container_id, ifname))
        exact = [ip for ip, h in allocations.items() if h.ifname is not None and h.matches(container_id, ifname)]
        chosen = exact or [ip for ip, h in allocations.items() if h.ifname is None and h.matches(container_id, ifname)]
        for ip in chosen:
            self.release(ip)
            faults.checkpoint("address-released")
        return chosen

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _io_error(f"cannot release {os.path.basename(path)}", exc) from None
