"""One netlink socket per namespace per plugin call.

A plugin call reaches a namespace from several places (the link, its addresses, its routes,
a tc qdisc, a kernel-filtered dump...). Opening a socket for each costs a socket, for a
container's namespace a thread that enters it, and pyroute2's set-up (an event loop): about
a millisecond each. Within a `session` (skel opens one around every plugin call)
`pycni.net.netlink.route(ns)` hands out one IPRoute per namespace, and the requests and dumps
we encode ourselves go through that IPRoute's socket too.

The session lives in a context variable: calls running concurrently in the agent (threads,
each with its own context) never share one, and a thread that a call starts opens sockets of
its own. This module imports nothing heavy: every plugin call opens a session, whether it
uses netlink or not.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

# namespace path (None: the caller's own) -> (IPRoute, its socket)
Opened = dict[str | None, tuple[Any, Any]]

_current: contextvars.ContextVar[Opened | None] = contextvars.ContextVar("pycni_netlink_session", default=None)


def current() -> Opened | None:
    """The sockets of the session open in this context, or None."""
    return _current.get()


@contextmanager
def session() -> Iterator[None]:
    """Share one netlink socket per namespace among the netlink calls made within (in this
    context); closed at the end. A nested session is the outer one."""
    if _current.get() is not None:
        yield
        return
    opened: Opened = {}
    token = _current.set(opened)
    try:
        yield
    finally:
        _current.reset(token)
        for ipr, sock in opened.values():
            with suppress(Exception):  # a failing close must not replace the call's own outcome
                ipr.close()
            sock.close()
