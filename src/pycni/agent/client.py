"""A plugin executable's side of a call: hand it to the resident agent, or run it here.

Every launcher `pycni plugins install` writes calls `main`. It imports nothing but
this module, `protocol`, `pycni.stdio` and modules the interpreter has already loaded,
so a call served by the agent costs an interpreter start-up and one round trip.

When the agent does not answer (no socket, connection refused, not root) or
declines the call, the launcher runs the same `pycni.skel.dispatch` in-process:
one code path for the plugin logic, two ways to reach it.

The contract when the agent restarts or dies:
- a call that has not reached it (refused connection, closed before ACCEPTED)
  runs in-process, so a restart never fails a call;
- a call accepted and then lost (the agent died mid-call) is repeated once, through
  a new agent or in-process, when the command is safe to repeat as such (DEL,
  CHECK, GC, STATUS, VERSION: DEL is idempotent, the others change nothing);
- an ADD accepted and then lost fails with code 11 (try again later): part of it
  may have been done, and the spec's answer to a failed ADD (the runtime calls DEL,
  then ADD again) is what makes it safe to repeat.
"""

from __future__ import annotations

# Not `socket` and `os`: their imports (enum, selectors...) would cost every call
# a few milliseconds; the builtin modules underneath do all a launcher needs.
import _socket
from posix import environ as _environ  # os.environb

from pycni import stdio
from pycni.agent import protocol

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

SOCKET_ENV = "PYCNI_AGENT_SOCKET"  # overrides the socket a launcher was installed with
USE_ENV = "PYCNI_AGENT"  # "off": always run in-process
CONNECT_TIMEOUT = 2.0
# The agent says ACCEPTED as soon as it has read the call. Without it in this time, the
# call may or may not have been taken: it is treated as lost, never run a second time here.
ACCEPT_TIMEOUT = 30.0
REPLY_GRACE = 10.0  # beyond the deadline the agent announced with ACCEPTED
SAFE_TO_REPEAT = (b"DEL", b"CHECK", b"GC", b"STATUS", b"VERSION", b"")


class AgentLost(Exception):
    """The agent accepted the call and then stopped answering."""


def why_not_agent(env: dict[bytes, bytes]) -> str:
    """A reason to run this call in-process without asking the agent, or ""."""
    if env.get(USE_ENV.encode(), b"") == b"off":
        return f"{USE_ENV}=off"
    # The agent resolves paths from its own working directory, not the launcher's.
    netns = env.get(b"CNI_NETNS", b"")
    if netns and not netns.startswith(b"/"):
        return "CNI_NETNS is a relative path"
    if any(entry and not entry.startswith(b"/") for entry in env.get(b"CNI_PATH", b"").split(b":")):
        return "CNI_PATH has a relative directory"
    return ""


def _connect(path: bytes) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(path)
    except BaseException:
        sock.close()
        raise
    return sock


def _attempt(path: bytes, request: bytes) -> tuple[int, bytes, bytes] | str:
    """One try: the result, or why the call did not reach the agent. AgentLost when it
    was accepted and the answer never came."""
    try:
        sock = _connect(path)
    except OSError as exc:
        return f"no agent at {path.decode(errors='replace')}: {exc.strerror or type(exc).__name__}"
    try:
        reader = protocol.Reader(sock.recv)
        try:
            sock.settimeout(ACCEPT_TIMEOUT)
            sock.sendall(request)
            status = reader.status()
        except TimeoutError:
            raise AgentLost(f"no answer within {ACCEPT_TIMEOUT:g}s") from None
        except OSError as exc:
            # The agent runs a call only once it has read all of it and said ACCEPTED.
            return f"the agent closed the connection before taking the call: {exc.strerror or type(exc).__name__}"
        if status == b"":
            return "the agent closed the connection before taking the call"
        try:
            if status == protocol.DECLINED:
                return "the agent declined the call: " + reader.frame(4096).decode(errors="replace")
            if status == protocol.ACCEPTED:
                sock.settimeout(reader.uint() + REPLY_GRACE)
                status = reader.status()
            if status == b"":
                raise AgentLost("the connection closed before the result came")
            if status != protocol.RESULT:
                raise AgentLost(f"unexpected answer {status!r}")
            return reader.result()
        except (OSError, protocol.ProtocolError) as exc:
            raise AgentLost(str(exc) or type(exc).__name__) from None
    finally:
        sock.close()


def call_agent(path: bytes, plugin_type: str, env: dict[bytes, bytes], stdin: bytes) -> tuple[int, bytes, bytes] | str:
    """Run the call through the agent at `path`: (exit code, stdout, stderr), or the
    reason it must run in-process."""
    request = protocol.encode_call(plugin_type.encode(), env, stdin)
    command = env.get(b"CNI_COMMAND", b"")
    try:
        return _attempt(path, request)
    except AgentLost as lost:
        if command not in SAFE_TO_REPEAT:
            return _lost_add(plugin_type, command.decode(errors="replace"), str(lost), stdin)
    try:
        return _attempt(path, request)  # a restarted agent, or in-process when there is none
    except AgentLost as lost:
        return _lost_add(plugin_type, command.decode(errors="replace"), str(lost), stdin)


def _lost_add(plugin_type: str, command: str, why: str, stdin: bytes) -> tuple[int, bytes, bytes]:
    from pycni import skel
    from pycni.spec.errors import CNIError, Code

    err = CNIError(
        Code.TRY_AGAIN_LATER,
        f"the pycni agent stopped answering during {plugin_type} {command} ({why})",
        "part of the call may have been done; it is safe to repeat (after a failed ADD, DEL and then ADD again)",
    )
    outcome = skel.error_outcome(err, stdin)
    return outcome.code, outcome.stdout, outcome.stderr


def main(plugin_type: str, socket_path: str, module: str = "") -> NoReturn:
    """Entry of a plugin executable: `socket_path` is the agent it was installed for, `module`
    the plugin's module (resolved when the launcher was written)."""
    env = dict(_environ)
    stdin = stdio.read_stdin(env.get(b"CNI_COMMAND", b"").decode(errors="replace"))
    path = env.get(SOCKET_ENV.encode()) or socket_path.encode()
    reason = why_not_agent(env)
    if not reason:
        answer = call_agent(path, plugin_type, env, stdin)
        if not isinstance(answer, str):
            stdio.emit(*answer)
        reason = answer
    from pycni import skel

    mode = skel.CallMode(agent_socket=path.decode(errors="replace"), agent_problem=reason)
    skel.main(plugin_type, stdin=stdin, mode=mode, module_name=module)
