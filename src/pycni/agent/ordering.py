"""Calls for one attachment run one at a time, in the order they arrived.

A runtime may send DEL for a container while its ADD is still running (a
timed-out ADD, a pod deleted during creation). In separate processes the
reference plugins race; in the agent the second call waits for the first.
Calls for different attachments never wait for each other.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Hashable


class Ticket:
    """A call's place in its attachment's line."""

    def __init__(self, line: AttachmentLines, key: Hashable) -> None:
        self._line = line
        self.key = key
        self._turn = threading.Event()
        self.gave_up = False

    def wait_turn(self, timeout: float | None = None) -> bool:
        """Block until every earlier call for the attachment has left; False on timeout."""
        return self._turn.wait(timeout) and not self.gave_up

    def leave(self) -> None:
        """Give the attachment to the next call (or leave the line before one's turn)."""
        self._line._leave(self)

    def give_up(self) -> None:
        """Leave without running, waking a `wait_turn` that is still blocked."""
        self.gave_up = True
        self.leave()
        self._turn.set()


class AttachmentLines:
    """One FIFO line per attachment key, created on first use and dropped when empty."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: dict[Hashable, deque[Ticket]] = {}

    def join(self, key: Hashable) -> Ticket:
        ticket = Ticket(self, key)
        with self._lock:
            line = self._lines.setdefault(key, deque())
            line.append(ticket)
            if len(line) == 1:
                ticket._turn.set()
        return ticket

    def _leave(self, ticket: Ticket) -> None:
        with self._lock:
            line = self._lines.get(ticket.key)
            if line is None or ticket not in line:
                return
            was_first = line[0] is ticket
            line.remove(ticket)
            if not line:
                del self._lines[ticket.key]
            elif was_first:
                line[0]._turn.set()

    def waiting(self) -> int:
        """Calls in every line (running or waiting), for the agent's status."""
        with self._lock:
            return sum(len(line) for line in self._lines.values())
