"""BIRD's control socket (bird.ctl / bird6.ctl): the line protocol birdc speaks.

A reply is lines `CODE-text` (more follow), ` text` (continuation of the last code) and ends
with `CODE text` where CODE is 0xxx (done), 8xxx (run-time error) or 9xxx (parse error).
calicoctl node status and the -bird-ready / -bird-live probes read `show protocols` and
`show status` through it, as Calico's do.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

DEFAULT_TIMEOUT = 2.0
PEER_NAME = re.compile(r"^(Global|Node|Mesh)_(.+)$")
PEER_TYPES = {"Global": "global", "Mesh": "node-to-node mesh", "Node": "node specific"}
HEADINGS = ["name", "proto", "table", "state", "since", "info"]


class BirdError(RuntimeError):
    """BIRD did not answer, or answered with an error."""


@dataclass(frozen=True)
class Reply:
    lines: list[tuple[str, str]]  # (code, text); continuation lines carry the last code
    code: str  # the final code

    @property
    def ok(self) -> bool:
        return self.code.startswith("0")

    @property
    def text(self) -> str:
        return "\n".join(text for _, text in self.lines)


@dataclass(frozen=True)
class Peer:
    address: str
    kind: str
    state: str
    since: str
    bgp_state: str
    info: str


def _read_reply(sock: socket.socket, buffer: bytearray) -> Reply:
    lines: list[tuple[str, str]] = []
    code = ""
    while True:
        while b"\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise BirdError("BIRD closed the control connection")
            buffer.extend(chunk)
        raw, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        line = raw.decode(errors="replace")
        if len(line) >= 4 and line[:4].isdigit() and (len(line) == 4 or line[4] in " -"):
            code, text = line[:4], line[5:]
            lines.append((code, text))
            if (len(line) == 4 or line[4] == " ") and code[0] in "089":
                return Reply(lines, code)
        elif line.startswith(" "):
            lines.append((code, line[1:]))
        else:
            lines.append((code, line))


def command(path: str, cmd: str, timeout: float = DEFAULT_TIMEOUT) -> Reply:
    """Run one command on the BIRD listening at `path`."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            buffer = bytearray()
            hello = _read_reply(sock, buffer)
            if hello.code != "0001":
                raise BirdError(f"unexpected greeting from BIRD at {path}: {hello.text}")
            sock.sendall(cmd.encode() + b"\n")
            return _read_reply(sock, buffer)
    except OSError as exc:
        raise BirdError(f"unable to connect to BIRD socket {path}: {exc.strerror or exc}") from None


def show_protocols(path: str, timeout: float = DEFAULT_TIMEOUT) -> list[list[str]]:
    """The rows of `show protocols` (each split into fields), headings checked."""
    reply = command(path, "show protocols", timeout)
    rows = []
    for code, text in reply.lines:
        if code == "2002":
            if text.split() != HEADINGS:
                raise BirdError("unknown BIRD table output format")
        elif code == "1002":
            rows.append(text.split())
    return rows


def bgp_peers(path: str, version: int = 4, timeout: float = DEFAULT_TIMEOUT) -> list[Peer]:
    """Calico's BGP peers in `show protocols` (protocols named Global_/Node_/Mesh_<ip>)."""
    sep = "." if version == 4 else ":"
    peers = []
    for cols in show_protocols(path, timeout):
        if len(cols) < 6 or cols[1] != "BGP":
            continue
        match = PEER_NAME.match(cols[0])
        if match is None:
            continue
        address = match.group(2)
        address = address.split("_port_")[0]
        peers.append(Peer(address.replace("_", sep), PEER_TYPES[match.group(1)], cols[3], cols[4], cols[5], " ".join(cols[6:])))
    return peers


def graceful_restart_in_progress(path: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    return "Graceful restart recovery in progress" in command(path, "show status", timeout).text


def status(path: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    return command(path, "show status", timeout).text


def configure(path: str, timeout: float = 10.0) -> Reply:
    return command(path, "configure", timeout)
