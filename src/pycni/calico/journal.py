"""The DEL journal: releases that could not reach the datastore, replayed when it is back.

A pod must never be stuck terminating because the datastore is down (Calico's most
common complaint). So DEL removes the dataplane, and when the datastore cannot be
reached it records here what it still owes the datastore (the IPAM handles to
release, the WorkloadEndpoint to delete) and succeeds. The next call that reaches
the same datastore (ADD, DEL, CHECK, GC of `calico` or `calico-ipam`) replays the
journal; replaying is idempotent (a release of a released handle is a no-op).

One file per entry, written to a temporary name and renamed into place, so any
number of processes can record at once; a replayer takes an exclusive flock on the
directory's lock file and skips replay when another process is already at it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_REPLAY = 64


@dataclass
class Entry:
    datastore: str  # Datastore.identity
    network: str
    container_id: str
    handles: list[str] = field(default_factory=list)
    endpoint_namespace: str = ""
    endpoint_name: str = ""
    recorded: float = field(default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Entry:
        data: dict[str, Any] = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class Journal:
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def record(self, entry: Entry) -> str:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex}.json"
        tmp = os.path.join(self.directory, f".{name}.tmp")
        with open(tmp, "w") as fh:
            fh.write(entry.to_json())
            fh.flush()
            os.fsync(fh.fileno())
        final = os.path.join(self.directory, name)
        os.rename(tmp, final)
        return final

    def entries(self) -> list[tuple[str, Entry]]:
        try:
            names = sorted(n for n in os.listdir(self.directory) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                with open(path) as fh:
                    out.append((path, Entry.from_json(fh.read())))
            except (OSError, ValueError, TypeError):
                continue
        return out

    def replay(self, datastore: str, apply: Callable[[Entry], None], limit: int = MAX_REPLAY) -> int:
        """Apply the entries recorded for `datastore` (oldest first); remove each one applied.

        `apply` raises to keep an entry (e.g. the datastore went away again)."""
        if not os.path.isdir(self.directory):
            return 0
        lock_fd = os.open(os.path.join(self.directory, ".lock"), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another process is replaying
            done = 0
            for path, entry in self.entries():
                if entry.datastore != datastore:
                    continue
                if done >= limit:
                    break
                apply(entry)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                done += 1
            return done
        finally:
            os.close(lock_fd)
