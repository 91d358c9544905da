"""host-local's on-disk store, byte for byte the reference's (backend/disk).

`<dataDir>/<network>/` holds one file per allocated address, named by the address
(Go's spelling: IPv6 compressed, lower case) and containing "<containerID>\\r\\n<ifname>"
(older versions wrote only the container ID, which is still understood);
`last_reserved_ip.<rangeSetIndex>` holds the last address handed out from each range
set; `lock` is flock(2)ed exclusively for as long as the store is open, the very lock
Go's host-local takes, so both can allocate from one directory at the same time.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from dataclasses import dataclass

from pycni.spec import ipaddr
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import IPAddress

LAST_RESERVED = "last_reserved_ip."
LINE_BREAK = "\r\n"
LOCK_FILE = "lock"


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

    def __enter__(self) -> Store:
        if not self.create and not os.path.isdir(self.dir):
            return self  # nothing was ever allocated: a read or a release has nothing to lock (or to create)
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            # Go's filemutex opens the lock read-only with O_CREAT, mode 0750.
            flags = os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW  # not a file a planted symlink names
            self._lock_fd = os.open(os.path.join(self.dir, LOCK_FILE), flags, 0o750)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except OSError as exc:
            self.close()
            raise _io_error(f"cannot open the store {self.dir}", exc) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = -1

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def reserve(self, ip: IPAddress, container_id: str, ifname: str, range_set: int) -> bool:
        """Take `ip`; False when it is already taken."""
        path = self._path(str(ip))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _io_error(f"cannot reserve {ip}", exc) from None
        try:
            with os.fdopen(fd, "w", newline="") as fh:
                fh.write(container_id.strip() + LINE_BREAK + ifname)
            self._write(LAST_RESERVED + str(range_set), str(ip))
        except OSError as exc:
            self._remove(path)
            raise _io_error(f"cannot reserve {ip}", exc) from None
        return True

    def _write(self, name: str, text: str) -> None:
        """Replace a file (never write through a symlink planted in its place)."""
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w", newline="") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)
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

    def allocations(self) -> dict[IPAddress, Holder]:
        """Every allocated address and who holds it."""
        out: dict[IPAddress, Holder] = {}
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise _io_error(f"cannot read the store {self.dir}", exc) from None
        for name in names:
            try:
                ip = ipaddr.address(name)
            except ValueError:
                continue  # lock, last_reserved_ip.N
            try:
                with open(self._path(name), newline="") as fh:
                    content = fh.read().strip()
            except OSError:
                continue
            container_id, sep, ifname = content.partition(LINE_BREAK)
            out[ip] = Holder(container_id, ifname if sep else None)
        return out

    def held_by(self, container_id: str, ifname: str) -> list[IPAddress]:
        """The addresses of one attachment (those written in the old format included)."""
        held = [ip for ip, holder in self.allocations().items() if holder.matches(container_id, ifname)]
        return sorted(held, key=lambda ip: (ip.version, int(ip)))

    def release(self, ip: IPAddress) -> None:
        self._remove(self._path(str(ip)))

    def release_attachment(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Release every address of (containerID, ifname), as the reference's ReleaseByID:
        files in the current format first, the old format only if none matched."""
        allocations = self.allocations()
        exact = [ip for ip, h in allocations.items() if h.ifname is not None and h.matches(container_id, ifname)]
        chosen = exact or [ip for ip, h in allocations.items() if h.ifname is None and h.matches(container_id, ifname)]
        for ip in chosen:
            self.release(ip)
        return chosen

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _io_error(f"cannot release {os.path.basename(path)}", exc) from None
