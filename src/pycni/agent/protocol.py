"""The wire format between a launcher and the agent, on a Unix stream socket.

Standard library only, and only modules the interpreter has loaded anyway: this
module is imported by every plugin launcher on every call.

A frame is a 4-byte big-endian length and that many bytes. A call is

    MAGIC, frame(plugin type), frame(environment), frame(stdin)

where the environment is `KEY=VALUE` entries separated by NUL bytes (the raw
bytes of the launcher's environment). The agent answers with one status byte:

    DECLINED  frame(reason)          the agent will not run it: run it in-process
    ACCEPTED  4-byte deadline (s)    the agent owns the call; RESULT follows
    RESULT    4-byte exit code, frame(stdout), frame(stderr)

RESULT without ACCEPTED is the answer to a call the agent refused to take (not
well-formed, caller not root): it is relayed as it is, and the connection is closed.

Before the call, a launcher says HELLO and the agent answers with its pycni version:

    launcher: HELLO           agent: VERSION frame(pycni version)

so a launcher never hands a call to an agent of another pycni version (whose plugins
may differ from the code on disk), nor to whatever else may listen on the socket: it
sends the call only after a well-formed answer. A call without HELLO (a launcher of an
earlier pycni, the tests' raw requests) is served as before.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing itself is not imported: it costs a launcher ~2 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

MAGIC = b"pycni-agent-call/1\n"
DECLINED = b"D"
ACCEPTED = b"A"
RESULT = b"R"
# Differs from MAGIC at its 13th byte: an agent that does not know it (an earlier pycni)
# refuses it at once with a RESULT, instead of waiting for the rest of a call.
HELLO = b"pycni-agent-hello/2\n"
VERSION = b"V"
MAX_VERSION = 256

# A configuration with its prevResult is a few KiB; anything near this is not a CNI call.
MAX_FRAME = 16 * 1024 * 1024
MAX_ENV_ENTRIES = 4096


class ProtocolError(Exception):
    """The peer sent something that is not this protocol, or closed the connection midway."""


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def encode_env(env: Mapping[bytes, bytes]) -> bytes:
    return b"\0".join(key + b"=" + value for key, value in env.items())


def decode_env(block: bytes) -> dict[bytes, bytes]:
    env: dict[bytes, bytes] = {}
    if not block:
        return env
    entries = block.split(b"\0")
    if len(entries) > MAX_ENV_ENTRIES:
        raise ProtocolError(f"environment has {len(entries)} entries (at most {MAX_ENV_ENTRIES})")
    for entry in entries:
        key, sep, value = entry.partition(b"=")
        if not sep or not key:
            raise ProtocolError(f"environment entry {entry[:40]!r} is not KEY=VALUE")
        env[key] = value
    return env


def encode_call(plugin_type: bytes, env: Mapping[bytes, bytes], stdin: bytes) -> bytes:
    return MAGIC + frame(plugin_type) + frame(encode_env(env)) + frame(stdin)


def encode_result(code: int, stdout: bytes, stderr: bytes) -> bytes:
    return RESULT + (code & 0xFFFFFFFF).to_bytes(4, "big") + frame(stdout) + frame(stderr)


def encode_accepted(deadline_seconds: float) -> bytes:
    return ACCEPTED + max(0, min(int(deadline_seconds) + 1, 0xFFFFFFFF)).to_bytes(4, "big")


def encode_declined(reason: str) -> bytes:
    return DECLINED + frame(reason.encode())


def encode_version(version: str) -> bytes:
    return VERSION + frame(version.encode())


class Reader:
    """Exact reads from a socket-like `recv(n)` that returns b"" at end of stream."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv

    def exactly(self, size: int) -> bytes:
        chunks = []
        left = size
        while left:
            chunk = self._recv(min(left, 65536))
            if not chunk:
                raise ProtocolError(f"connection closed after {size - left} of {size} bytes")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def status(self) -> bytes:
        """One status byte, or b"" when the peer closed the connection first."""
        return self._recv(1)

    def uint(self) -> int:
        return int.from_bytes(self.exactly(4), "big")

    def frame(self, limit: int = MAX_FRAME) -> bytes:
        size = self.uint()
        if size > limit:
            raise ProtocolError(f"frame of {size} bytes (at most {limit})")
        return self.exactly(size)

    def opening(self) -> bytes:
        """MAGIC (a call follows) or HELLO: what a launcher sends first. Never reads past it."""
        got = b""
        while True:  # a stranger is told as soon as its first bytes differ from both
            candidates = [m for m in (MAGIC, HELLO) if m.startswith(got)]
            if not candidates:
                raise ProtocolError(f"not a pycni agent call (starts with {got[:20]!r})")
            if got in candidates:
                return got
            chunk = self._recv(min(len(m) for m in candidates) - len(got))
            if not chunk:
                raise ProtocolError(f"connection closed after {len(got)} bytes")
            got += chunk

    def call(self, opened: bool = False) -> tuple[bytes, dict[bytes, bytes], bytes]:
        """A launcher's call: (plugin type, environment, stdin); `opened` when its MAGIC
        was read already."""
        if not opened and self.opening() != MAGIC:
            raise ProtocolError("a second HELLO where a call was expected")
        plugin_type = self.frame(256)
        env = decode_env(self.frame())
        stdin = self.frame()
        return plugin_type, env, stdin

    def result(self) -> tuple[int, bytes, bytes]:
        """The RESULT body (after its status byte): exit code, stdout, stderr."""
        code = self.uint()
        return code, self.frame(), self.frame()
