"""Socket activation (sd_listen_fds(3)) with the standard library: no python-systemd.

With contrib/pycni-agent.socket, systemd creates and listens on the agent's socket
before the agent runs, and passes it as descriptor 3 with LISTEN_FDS=1 and
LISTEN_PID=<the agent's pid>. Connections made while the agent is not running (before
it starts, while it restarts, after it exited idle) wait in the socket's backlog and
start it: a launcher never finds the socket missing.
"""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def listening_socket(env: dict[str, str] | None = None) -> socket.socket | None:
    """The listening Unix stream socket systemd passed to this process, or None.

    LISTEN_PID must be our pid: the variables are inherited by children that did not
    receive the descriptor. A descriptor that is not a listening AF_UNIX stream socket is
    refused with a clear error rather than served."""
    env = dict(os.environ) if env is None else env
    if env.get("LISTEN_PID", "") != str(os.getpid()):
        return None
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    if count > 1:
        raise RuntimeError(f"systemd passed {count} sockets (LISTEN_FDS); the pycni agent listens on one")
    fd = SD_LISTEN_FDS_START
    os.set_inheritable(fd, False)  # never passed on to what plugins run
    sock = socket.socket(fileno=fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise RuntimeError("the socket systemd passed (fd 3) is not a Unix stream socket: see ListenStream= in the unit")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise RuntimeError("the socket systemd passed (fd 3) is not listening")
    return sock
