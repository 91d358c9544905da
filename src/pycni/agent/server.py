"""`pycni agent`: the resident process that serves plugin calls handed over by launchers.

Each connection carries one call (`protocol`). The agent runs it with the same
`pycni.skel.dispatch` a launcher would run in-process, on its own thread, so
calls run concurrently; calls for one attachment (network, container ID,
interface) wait for each other in arrival order (`ordering`). What stays warm
between calls is what is expensive to build and holds no result: imported
plugin modules, pyroute2, the libnftables context. A datastore connection is not
among them: each call opens its own, once (`pycni.calico.cni`).

Safety:
- the socket is created mode 0600 (bound under a temporary name, then renamed),
  and every peer is checked with SO_PEERCRED: only root is served;
- a peer in another network or mount namespace is declined (its paths and its
  "host" are not ours), and so is a call beyond `max_calls`: the launcher then
  runs it in-process;
- a call that does not finish within its deadline is answered with code 11; it
  keeps its attachment until it really ends, so a repeated call never overlaps it;
- a request that is not well-formed gets a CNI error and the connection is closed;
- a call changes nothing of the agent's own: its socket, deadlines, log, limits and
  idle time are its command line's. What a call's environment may ask is narrower
  and only for that call: a shorter deadline (PYCNI_CALL_TIMEOUT), and fault points
  (PYCNI_FAULT, PYCNI_FAULT_TRACE) only in an agent started --enable-fault-injection.

Lifetime: started by systemd (contrib/pycni-agent.service, optionally with the socket
unit: the listening socket then comes from systemd, `activation`), by hand, or on
demand by a launcher that found none (`ondemand`, `--on-demand`): the latter exits
after `idle_timeout` seconds without a call, removing its socket if it is still its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from types import ModuleType

import pycni
from pycni import registry, skel
from pycni.agent import protocol
from pycni.agent.ordering import AttachmentLines, Ticket
from pycni.launcher import DEFAULT_AGENT_SOCKET
from pycni.runtime.delegate import DELEGATED_ENV
from pycni.spec.errors import CNIError, Code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pycni.agent.metrics import AgentMetrics

log = logging.getLogger("pycni.agent")

DEFAULT_CALL_TIMEOUT = 120.0  # libcni runtimes give a plugin as long (pycni.runtime.invoke)
CALL_TIMEOUT_ENV = "PYCNI_CALL_TIMEOUT"  # a caller may ask for a shorter deadline, never a longer one
REQUEST_TIMEOUT = 10.0  # a launcher writes its whole request at once
DEFAULT_MAX_CALLS = 256
DRAIN_TIMEOUT = 1.0  # after refusing a malformed request
DRAIN_LIMIT = 1024 * 1024
# How often the accept loop looks up from accept(): for the idle timeout, and to notice
# `stop` on a socket systemd passed (shared with systemd: it must not be shut down).
ACCEPT_POLL = 1.0
ATTACHMENT_COMMANDS = ("ADD", "CHECK", "DEL")

Resolver = Callable[[str], ModuleType]


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, from the kernel."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _namespaces(pid: int | str) -> tuple[int, int]:
    net = os.stat(f"/proc/{pid}/ns/net")
    mnt = os.stat(f"/proc/{pid}/ns/mnt")
    return net.st_ino, mnt.st_ino


def attachment_key(env: dict[str, str], stdin: bytes) -> Hashable | None:
    """(network, container ID, interface) for ADD, CHECK and DEL; None for the rest,
    and for a delegated call: it is part of the call that delegated it, which holds
    the attachment already."""
    if env.get("CNI_COMMAND") not in ATTACHMENT_COMMANDS or env.get(DELEGATED_ENV) == "1":
        return None
    try:
        name = json.loads(stdin).get("name")
    except (ValueError, AttributeError):
        return None  # dispatch answers it with a decoding error, touching nothing
    return (str(name), env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""))


def _deadline(env: dict[str, str], maximum: float) -> float:
    try:
        wanted = float(env.get(CALL_TIMEOUT_ENV, ""))
    except ValueError:
        return maximum
    return min(wanted, maximum) if wanted > 0 else maximum


def _error(err: CNIError, stdin: bytes = b"") -> bytes:
    outcome = skel.error_outcome(err, stdin)
    return protocol.encode_result(outcome.code, outcome.stdout, outcome.stderr)


def _answer_and_close(conn: socket.socket, answer: bytes) -> None:
    """Send a refusal, then read what the peer still sends (a little, briefly) before
    closing: closing with unread bytes would reset the connection and lose the answer."""
    conn.sendall(answer)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(DRAIN_TIMEOUT)
        drained = 0
        while drained < DRAIN_LIMIT:
            chunk = conn.recv(65536)
            if not chunk:
                break
            drained += len(chunk)


@dataclass
class _Call:
    """One accepted call, shared by the connection's thread and the worker running it."""

    plugin: ModuleType
    plugin_type: str
    env: dict[str, str]
    stdin: bytes
    ticket: Ticket | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    cancelled: bool = False
    outcome: skel.Outcome | None = None


class Agent:
    """Serves calls on a Unix socket: `bind`, `serve_forever`, and `stop` + `wait` (or `shutdown`)."""

    def __init__(
        self,
        socket_path: str = DEFAULT_AGENT_SOCKET,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        max_calls: int = DEFAULT_MAX_CALLS,
        resolve: Resolver = skel.plugin_module,
        fault_injection: bool = False,
        metrics: AgentMetrics | None = None,
        idle_timeout: float = 0.0,
    ) -> None:
        self.socket_path = os.path.abspath(socket_path)
        self.idle_timeout = idle_timeout  # 0: never
        self.adopted = False  # the listening socket came from systemd
        self.call_timeout = call_timeout
        self.resolve = resolve
        # Tests only: honour a call's PYCNI_FAULT (`pycni.faults`), which may SIGKILL the agent.
        self.fault_injection = fault_injection
        self.lines = AttachmentLines()
        self.metrics = metrics  # pycni.agent.metrics, when `--metrics-address` is given
        self._slots = threading.BoundedSemaphore(max_calls)
        self._listener: socket.socket | None = None
        self._lock_fd: int | None = None
        self._stopping = threading.Event()
        self._connections: set[threading.Thread] = set()
        self._connections_lock = threading.Lock()
        self._namespaces = _namespaces("self")
        self._served_lock = threading.Lock()
        self.calls_served = 0
        self._busy = 0  # connections open and calls running: the agent is idle at 0
        self._idle_since = time.monotonic()

    # -- the socket ------------------------------------------------------------
    def bind(self, lock_wait: float = 0.0) -> None:
        """Create the socket (mode 0600), refusing to start next to a running agent; one
        that is stopping is given `lock_wait` seconds to finish."""
        directory = os.path.dirname(self.socket_path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        lock_fd = os.open(self.socket_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + lock_wait
        while True:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(lock_fd)
                raise RuntimeError(f"another pycni agent is running on {self.socket_path}") from None
        self._lock_fd = lock_fd
        staging = os.path.join(directory, f".{os.path.basename(self.socket_path)}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(staging)
            os.chmod(staging, 0o600)  # before the socket has its real name: never reachable wider
            listener.listen(128)
            os.replace(staging, self.socket_path)  # over the stale socket of a dead agent, if any
        except BaseException:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
            raise
        self._listening(listener)

    def adopt(self, listener: socket.socket) -> None:
        """Serve on a listening socket systemd created (socket activation): systemd owns
        its path and keeps it listening while no agent runs, so it is never removed."""
        with contextlib.suppress(OSError, TypeError):
            self.socket_path = listener.getsockname() or self.socket_path
        self.adopted = True
        self._listening(listener)

    def _listening(self, listener: socket.socket) -> None:
        listener.settimeout(ACCEPT_POLL)
        self._listener = listener
        idle = f", exits after {self.idle_timeout:g}s without a call" if self.idle_timeout else ""
        how = " (socket from systemd)" if self.adopted else ""
        log.info(
            "pycni agent %d (pycni %s) listening on %s%s (call timeout %gs%s)",
            os.getpid(),
            pycni.__version__,
            self.socket_path,
            how,
            self.call_timeout,
            idle,
        )
        if self.fault_injection:
            log.warning("fault injection is enabled: a call's PYCNI_FAULT may kill this agent (for tests only)")

    def serve_forever(self) -> None:
        """Accept connections until `stop`; each is served on its own thread."""
        listener = self._listener
        assert listener is not None, "bind() first"
        while not self._stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                if self._idle_too_long():
                    log.info("pycni agent %d: no call for %gs, exiting", os.getpid(), self.idle_timeout)
                    self.stop()
                continue
            except OSError:
                if self._stopping.is_set():
                    break
                time.sleep(0.01)  # out of file descriptors and the like: try again rather than die
                continue
            thread = threading.Thread(target=self._serve_connection, args=(conn,), name="pycni-agent-call", daemon=True)
            with self._connections_lock:
                self._connections.add(thread)
                self._busy += 1
            thread.start()

    def _idle_too_long(self) -> bool:
        with self._connections_lock:
            return bool(self.idle_timeout) and not self._busy and time.monotonic() - self._idle_since >= self.idle_timeout

    def _done_with(self, thing: threading.Thread | None = None) -> None:
        """A connection (`thing`) or a call ended: the idle time starts when nothing is left."""
        with self._connections_lock:
            if thing is not None:
                self._connections.discard(thing)
            self._busy -= 1
            self._idle_since = time.monotonic()

    def stop(self) -> None:
        """Stop taking calls: the socket disappears, so launchers run calls in-process.
        Safe to call from a signal handler."""
        self._stopping.set()
        listener = self._listener
        if listener is None or self.adopted:
            return  # systemd's socket: accept() notices within ACCEPT_POLL
        # The flock is still ours, so no newer agent can have replaced the path yet.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept()

    def wait(self, grace: float | None = None) -> bool:
        """After `stop`: wait up to `grace` seconds (the call timeout by default) for the
        calls already taken, then release the socket. True when all of them ended."""
        deadline = time.monotonic() + (self.call_timeout if grace is None else grace)
        while True:
            with self._connections_lock:
                running = [t for t in self._connections if t.is_alive()]
            if not running or time.monotonic() >= deadline:
                break
            running[0].join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("pycni agent %d stopped after %d calls", os.getpid(), self.calls_served)
        return not running

    def shutdown(self, grace: float | None = None) -> bool:
        self.stop()
        return self.wait(grace)

    # -- one connection, one call -------------------------------------------------
    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(REQUEST_TIMEOUT)
                self._handle(conn)
        except OSError as exc:
            log.debug("a launcher went away: %s", exc)
        finally:
            self._done_with(threading.current_thread())

    def _handle(self, conn: socket.socket) -> None:
        pid, uid, _gid = peer_credentials(conn)
        reader = protocol.Reader(conn.recv)
        try:
            if reader.opening() == protocol.HELLO:
                # Not a secret, and what lets a launcher of another version go in-process.
                conn.sendall(protocol.encode_version(pycni.__version__))
                raw_type, raw_env, stdin = reader.call()
            else:
                raw_type, raw_env, stdin = reader.call(opened=True)
            plugin_type = raw_type.decode("ascii")
        except (protocol.ProtocolError, UnicodeDecodeError, TimeoutError) as exc:
            log.warning("malformed request from pid %d: %s", pid, exc)
            _answer_and_close(conn, _error(CNIError(Code.DECODING_FAILURE, f"pycni agent: not a well-formed call: {exc}")))
            return
        if uid != 0:
            log.warning("refused a call from uid %d (pid %d)", uid, pid)
            refusal = CNIError(Code.IO_FAILURE, f"pycni agent: refused a call from uid {uid}: only root may use the agent")
            conn.sendall(_error(refusal, stdin))
            return
        reason = self._decline_reason(pid)
        if reason:
            if self.metrics is not None:
                self.metrics.call_declined(reason)
            conn.sendall(protocol.encode_declined(reason))
            return
        try:
            plugin = self.resolve(plugin_type)
        except CNIError as err:
            conn.sendall(_error(err, stdin))
            return
        if not self._slots.acquire(blocking=False):
            busy = "the agent is running as many calls as it may"
            if self.metrics is not None:
                self.metrics.call_declined(busy)
            conn.sendall(protocol.encode_declined(busy))
            return
        try:
            env = {os.fsdecode(key): os.fsdecode(value) for key, value in raw_env.items()}
            self._run(conn, plugin, plugin_type, env, stdin)
        finally:
            self._slots.release()

    def _decline_reason(self, pid: int) -> str:
        """Why a caller must run its call itself: its paths and its host are not ours."""
        try:
            net, mnt = _namespaces(pid)
        except OSError:
            return "cannot read the namespaces of the caller"
        if net != self._namespaces[0]:
            return "the caller is in another network namespace"
        if mnt != self._namespaces[1]:
            return "the caller is in another mount namespace"
        return ""

    def _run(self, conn: socket.socket, plugin: ModuleType, plugin_type: str, env: dict[str, str], stdin: bytes) -> None:
        timeout = _deadline(env, self.call_timeout)
        key = attachment_key(env, stdin)
        ticket = self.lines.join(key) if key is not None else None  # arrival order is decided here
        call = _Call(plugin, plugin_type, env, stdin, ticket)
        try:
            conn.sendall(protocol.encode_accepted(timeout))
        except OSError:
            if ticket is not None:
                ticket.give_up()  # the launcher is gone before anything ran
            raise
        accepted = time.monotonic()
        if self.metrics is not None:
            self.metrics.call_accepted()
        worker = threading.Thread(target=self._work, args=(call,), name=f"pycni-{plugin_type}", daemon=True)
        with self._connections_lock:
            self._busy += 1  # a call past its deadline still runs: the agent is not idle
        worker.start()
        if call.done.wait(timeout):
            assert call.outcome is not None
            outcome = call.outcome
        else:
            outcome = self._timed_out(call, timeout)
        if self.metrics is not None:
            self.metrics.call_answered(plugin_type, env.get("CNI_COMMAND", ""), outcome, time.monotonic() - accepted)
        conn.settimeout(REQUEST_TIMEOUT)
        conn.sendall(protocol.encode_result(outcome.code, outcome.stdout, outcome.stderr))

    def _work(self, call: _Call) -> None:
        try:
            self._work_on(call)
        finally:
            self._done_with()

    def _work_on(self, call: _Call) -> None:
        if call.ticket is not None:
            call.ticket.wait_turn()  # `give_up` wakes it when the call times out first
        with call.lock:
            if call.cancelled:
                return
            call.started = True
        started = time.monotonic()
        command = call.env.get("CNI_COMMAND", "")
        mode = skel.CallMode(via_agent=True, agent_socket=self.socket_path, fault_injection=self.fault_injection)
        try:
            outcome = skel.dispatch(call.plugin, call.env, call.stdin, mode)
        except BaseException as exc:  # even SystemExit: one call must never end the agent
            log.exception("%s %s failed in the agent", call.plugin_type, command)
            internal = CNIError(Code.INTERNAL, f"pycni agent: {call.plugin_type} {command}: {type(exc).__name__}: {exc}")
            outcome = skel.error_outcome(internal, call.stdin)
        finally:
            if call.ticket is not None:
                call.ticket.leave()
        call.outcome = outcome
        call.done.set()
        with self._served_lock:
            self.calls_served += 1
        log.info(
            "%s %s container=%s if=%s: exit %d in %.1f ms",
            call.plugin_type,
            command,
            call.env.get("CNI_CONTAINERID", "")[:12],
            call.env.get("CNI_IFNAME", ""),
            outcome.code,
            (time.monotonic() - started) * 1000,
        )

    def _timed_out(self, call: _Call, timeout: float) -> skel.Outcome:
        with call.lock:
            if call.done.is_set() and call.outcome is not None:
                return call.outcome  # it finished as the deadline passed
            call.cancelled = True
            started = call.started
        command = call.env.get("CNI_COMMAND", "")
        if not started:
            if call.ticket is not None:
                call.ticket.give_up()
            err = CNIError(
                Code.TRY_AGAIN_LATER,
                f"{call.plugin_type} {command} did not start within {timeout:g}s: "
                "an earlier call for the same attachment is still running in the pycni agent",
                "nothing was done; it is safe to repeat",
            )
        else:
            log.warning("%s %s still running after its %gs deadline", call.plugin_type, command, timeout)
            err = CNIError(
                Code.TRY_AGAIN_LATER,
                f"{call.plugin_type} {command} did not finish within {timeout:g}s",
                "it goes on in the pycni agent and keeps its attachment until it ends, so a repeated call waits "
                "for it: repeating is safe (after a failed ADD, DEL and then ADD again)",
            )
        return skel.error_outcome(err, call.stdin)


# -- the process ------------------------------------------------------------------


def warm_up() -> list[str]:
    """Import every plugin and what they share, once, as the agent starts; return
    the problems met (a plugin that does not import is reported, not fatal)."""
    problems = []
    for plugin_type in registry.discover():
        try:
            skel.plugin_module(plugin_type)
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not stop the others
            problems.append(f"plugin {plugin_type} does not import: {type(exc).__name__}: {exc}")
    try:
        from pycni.net import netlink

        netlink.netlink_error()  # loads pyroute2
    except Exception as exc:  # noqa: BLE001
        problems.append(f"pyroute2 does not import: {exc}")
    for problem in problems:
        log.error("%s", problem)
    return problems


def notify_systemd(state: str) -> None:
    """sd_notify(3) for a Type=notify unit; nothing without NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(state.encode(), address)


def run(agent: Agent, grace: float | None = None, lock_wait: float = 0.0) -> int:
    """The agent process: warm up, serve until SIGTERM, SIGINT or the idle timeout, finish
    the calls taken. The socket is systemd's when it passed one (`activation`)."""
    import signal

    from pycni.agent import activation

    inherited = activation.listening_socket()
    if inherited is not None:
        agent.adopt(inherited)
    else:
        agent.bind(lock_wait)
    # Listening first, warming up alongside: a launcher waiting for the agent it started, or
    # for systemd's socket to be served, is answered at once, and its call imports only the
    # plugins it needs (the import lock serialises a module imported by both).
    threading.Thread(target=warm_up, name="pycni-agent-warm-up", daemon=True).start()

    def stop(signum: int, _frame: object) -> None:
        log.info("pycni agent %d: %s, stopping", os.getpid(), signal.Signals(signum).name)
        agent.stop()

    # The agent owns its process: these are the only handlers it installs, before any call runs.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    notify_systemd("READY=1")
    try:
        agent.serve_forever()
    finally:
        notify_systemd("STOPPING=1")
        clean = agent.shutdown(grace)
    return 0 if clean else 1
