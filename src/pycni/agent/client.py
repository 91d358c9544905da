"""A plugin executable's side of a call: hand it to the resident agent, or run it here.

Every launcher `pycni plugins install` writes calls `main`. It imports nothing but
this module, `protocol`, `pycni.stdio` and modules the interpreter has already loaded,
so a call served by the agent costs an interpreter start-up and one round trip.

When the agent does not answer (no socket, connection refused, not root) or
declines the call, the launcher runs the same `pycni.skel.dispatch` in-process:
one code path for the plugin logic, two ways to reach it. `PYCNI_AGENT` or the host's
configuration (`settings`) chooses: `auto` starts an agent when none answers
(`ondemand`) and hands it the call; `off` never asks one; `required` fails with code 11
when none answers; `managed` uses one when it answers and never starts one.

Before the call, the launcher asks the agent its pycni version (`protocol.HELLO`): an
agent of another version, or something else listening on the socket, is not handed
the call; it runs in-process and the reason is logged once (`report_once`).

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
from pycni.agent import protocol, settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

SOCKET_ENV = "PYCNI_AGENT_SOCKET"  # overrides the socket a launcher was installed with
CONNECT_TIMEOUT = 2.0
# An agent answers HELLO from the thread it starts for the connection, before any work;
# a socket-activated one (contrib/pycni-agent.socket) once systemd has started it for this
# very connection: the interpreter and the agent's imports, seconds on a loaded host. What
# stays silent longer is not an agent we may use; the call has not been sent, so it runs
# in-process (a stranger on the socket costs each call this long: the log says why, once).
HELLO_TIMEOUT = 5.0
# The agent says ACCEPTED as soon as it has read the call. Without it in this time, the
# call may or may not have been taken: it is treated as lost, never run a second time here.
ACCEPT_TIMEOUT = 30.0
REPLY_GRACE = 10.0  # beyond the deadline the agent announced with ACCEPTED
SAFE_TO_REPEAT = (b"DEL", b"CHECK", b"GC", b"STATUS", b"VERSION", b"")


class AgentLost(Exception):
    """The agent accepted the call and then stopped answering."""


class Missed:
    """Why a call did not reach an agent. `absent`: nothing listens (starting an agent
    may help); `notable`: something answered that must not be used, or an agent could
    not be started: worth a line in the log."""

    __slots__ = ("absent", "notable", "reason")

    def __init__(self, reason: str, absent: bool = False, notable: bool = False) -> None:
        self.reason = reason
        self.absent = absent
        self.notable = notable


def why_not_agent(env: dict[bytes, bytes]) -> str:
    """A reason to run this call in-process without asking the agent, or ""."""
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


def _handshake(sock: _socket.socket, reader: protocol.Reader, where: str) -> Missed | None:
    """HELLO, and the agent's version: None when it is this launcher's."""
    from pycni import __version__

    try:
        sock.settimeout(HELLO_TIMEOUT)
        sock.sendall(protocol.HELLO)
        status = reader.status()
        if status == protocol.VERSION:
            version = reader.frame(protocol.MAX_VERSION).decode(errors="replace")
            if version == __version__:
                return None
            return Missed(f"the agent on {where} runs pycni {version}, this launcher {__version__}: it is not used", notable=True)
    except TimeoutError:
        return Missed(
            f"what listens on {where} is not a pycni agent: no answer to the version handshake within {HELLO_TIMEOUT:g}s",
            notable=True,
        )
    except (OSError, protocol.ProtocolError) as exc:
        # An agent that is stopping (idle, SIGTERM) closes what it had not accepted yet.
        return Missed(f"the agent on {where} closed the connection: {getattr(exc, 'strerror', None) or exc}", absent=True)
    if status == b"":
        return Missed(f"the agent on {where} closed the connection", absent=True)
    if status == protocol.RESULT:  # it refused HELLO as a malformed call
        return Missed(f"the agent on {where} is of an earlier pycni (no version handshake): it is not used", notable=True)
    return Missed(f"what listens on {where} is not a pycni agent (it answered {status!r})", notable=True)


def _attempt(path: bytes, request: bytes) -> tuple[int, bytes, bytes] | Missed:
    """One try: the result, or why the call did not reach the agent. AgentLost when it
    was accepted and the answer never came."""
    where = path.decode(errors="replace")
    try:
        sock = _connect(path)
    except OSError as exc:
        absent = isinstance(exc, (FileNotFoundError, ConnectionRefusedError))
        return Missed(f"no agent at {where}: {exc.strerror or type(exc).__name__}", absent=absent)
    try:
        reader = protocol.Reader(sock.recv)
        missed = _handshake(sock, reader, where)
        if missed is not None:
            return missed
        try:
            sock.settimeout(ACCEPT_TIMEOUT)
            sock.sendall(request)
            status = reader.status()
        except TimeoutError:
            raise AgentLost(f"no answer within {ACCEPT_TIMEOUT:g}s") from None
        except OSError as exc:
            # The agent runs a call only once it has read all of it and said ACCEPTED.
            why = exc.strerror or type(exc).__name__
            return Missed(f"the agent closed the connection before taking the call: {why}", absent=True)
        if status == b"":
            return Missed("the agent closed the connection before taking the call", absent=True)
        try:
            if status == protocol.DECLINED:
                return Missed("the agent declined the call: " + reader.frame(4096).decode(errors="replace"))
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


def call_agent(path: bytes, plugin_type: str, env: dict[bytes, bytes], stdin: bytes) -> tuple[int, bytes, bytes] | Missed:
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
    try:
        conf = settings.load(env)
    except settings.SettingsError as exc:
        _fail(exc.code, str(exc), "nothing was done: correct the setting", stdin)
    missed = Missed(f"{conf.source} is off") if conf.mode == settings.OFF else Missed(why_not_agent(env))
    if not missed.reason:
        answer = call_agent(path, plugin_type, env, stdin)
        if isinstance(answer, Missed) and answer.absent and conf.mode == settings.AUTO:
            answer = _start_and_call(path, plugin_type, env, stdin, conf.idle_timeout)
        if not isinstance(answer, Missed):
            stdio.emit(*answer)
        missed = answer
        if conf.mode == settings.REQUIRED and (missed.absent or missed.notable):
            where = path.decode(errors="replace")
            hint = "start it (`pycni agent`, or contrib/pycni-agent.socket), or set it to auto"
            _fail(11, f"no usable pycni agent answers on {where} and {conf.source} is required: {missed.reason}", hint, stdin)
    if missed.notable:
        report_once(missed.reason + ": the call runs in-process")
    from pycni import skel

    mode = skel.CallMode(agent_socket=path.decode(errors="replace"), agent_problem=missed.reason)
    skel.main(plugin_type, stdin=stdin, mode=mode, module_name=module)


def _start_and_call(
    path: bytes, plugin_type: str, env: dict[bytes, bytes], stdin: bytes, idle_timeout: float
) -> tuple[int, bytes, bytes] | Missed:
    """Start an agent on `path` (one, however many launchers race) and hand it the call."""
    from pycni import logs
    from pycni.agent import ondemand

    log_file = logs.env_file({key.decode(errors="replace"): value.decode(errors="replace") for key, value in env.items()})
    failed = ondemand.start(path, log_file, idle_timeout)
    if failed:
        return Missed(failed, notable=True)
    return call_agent(path, plugin_type, env, stdin)


def _fail(code: int, msg: str, details: str, stdin: bytes) -> NoReturn:
    from pycni import skel
    from pycni.spec.errors import CNIError, Code

    outcome = skel.error_outcome(CNIError(Code(code), msg, details), stdin)
    stdio.emit(outcome.code, outcome.stdout, outcome.stderr)


def report_once(line: str) -> None:
    """Log `line` as a warning (to the file an in-process call logs to) unless it was
    logged to that same file already: a host whose agent cannot start says why once,
    not on every call. What was said is kept in `<log>.reported` (one line per reason,
    with the log's inode: a new log after a rotation is told again), under a flock so
    that racing launchers say it once between them."""
    import fcntl
    import logging
    import os

    from pycni import logs

    logs.configure_from_env(os.environ)
    log = logging.getLogger("pycni.agent")
    target = logs.destination(os.environ)
    try:
        inode = os.stat(target).st_ino
    except OSError:
        inode = 0
    key = f"{inode} {line}".replace("\n", " ").encode(errors="replace") + b"\n"
    try:
        fd = os.open(target + ".reported", os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        log.warning("%s", line)  # nowhere to remember it: better said twice than never
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open(fd, "rb", closefd=False) as fh:
            seen = key in fh.read().splitlines(keepends=True)
        if not seen:
            log.warning("%s", line)
            os.write(fd, key)
    finally:
        os.close(fd)
