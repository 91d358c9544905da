"""Start the agent on demand: a launcher that finds none starts one, then hands it the call.

Imported by a launcher only when no agent answered (standard library only): the usual
call never pays for it.

One agent per socket, however many launchers race to start it:
- a launcher takes an exclusive flock on `<socket>.start` and, holding it, checks the
  socket again: the launchers that waited find the agent the first one started;
- the holder spawns `pycni agent --on-demand` detached (a session of its own, stdin
  /dev/null, stdout and stderr to the log, no descriptor of the caller's, cwd /), so
  that the runtime waiting for the plugin's stdout never waits for the agent, and
  waits until its socket answers, at most START_TIMEOUT;
- the agent itself holds `<socket>.lock` while it lives (`server.Agent.bind`): even a
  process that skipped this lock could not start a second agent on the socket.
The flock is released by the kernel when its holder dies, so a launcher killed midway
blocks no one. Starting is bounded; when it fails the call runs in-process, and the
reason is returned for the caller to log.
"""

from __future__ import annotations

import _socket
import posix
import sys

START_TIMEOUT = 10.0  # the agent imports every plugin before it listens: ~1 s on a quiet host
_POLL = 0.01
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the new interpreter runs: this launcher's sys.path (the installation it runs), the
# state a daemon should start from (no inherited descriptors beyond stdio, cwd /, umask of
# the systemd unit), then `pycni agent`. Close the descriptors before anything opens one.
_BOOT = (
    "import os, sys; os.closerange(3, os.sysconf('SC_OPEN_MAX')); os.chdir('/'); os.umask(0o022); "
    "sys.path[:] = {paths!r}; from pycni.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


def answers(path: bytes) -> bool:
    """Something listens on `path` (whether it is an agent is the handshake's business)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(2.0)
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def start(path: bytes, log_file: str, idle_timeout: float) -> str:
    """Make sure an agent listens on `path`: "" when one does, else why none could be started."""
    import fcntl  # an extension module: loaded only when an agent must be started

    where = path.decode(errors="replace")
    directory = where.rpartition("/")[0] or "/"
    try:
        posix.mkdir(directory, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        return f"cannot start the pycni agent: cannot create {directory}: {exc.strerror}"
    lock_path = where + ".start"
    try:
        lock = posix.open(lock_path, posix.O_RDWR | posix.O_CREAT | posix.O_CLOEXEC, 0o600)
    except OSError as exc:
        return f"cannot start the pycni agent: cannot open {lock_path}: {exc.strerror}"
    try:
        # Blocking: its holder gives it up within START_TIMEOUT, or dies and the kernel does.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if answers(path):
            return ""  # started by the launcher that held the lock before us
        try:
            pid = _spawn(where, log_file, idle_timeout)
        except OSError as exc:
            return f"cannot start the pycni agent: {sys.executable}: {exc.strerror or exc}"
        return _wait_listening(path, pid, log_file)
    finally:
        posix.close(lock)  # releases the flock


def _spawn(socket_path: str, log_file: str, idle_timeout: float) -> int:
    argv = [
        sys.executable,
        "-IS",
        "-c",
        _BOOT.format(paths=sys.path),
        "agent",
        "--on-demand",
        "--socket",
        socket_path,
        "--log-file",
        log_file,
        "--idle-timeout",
        f"{idle_timeout:g}",
    ]
    # The agent's environment is its own, not the runtime's nor the call's: every call
    # brings its environment with it, and nothing in one may change how the agent runs.
    env = {"PATH": _PATH}
    null = ("/dev/null", posix.O_RDONLY, 0)
    out = (log_file, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT, 0o644)
    try:
        return _spawn_with(argv, env, null, out)
    except OSError:
        # The log cannot be opened (its directory does not exist yet): the agent makes it.
        return _spawn_with(argv, env, null, ("/dev/null", posix.O_WRONLY, 0))


def _spawn_with(argv: list[str], env: dict[str, str], stdin: tuple[str, int, int], out: tuple[str, int, int]) -> int:
    actions = [
        (posix.POSIX_SPAWN_OPEN, 0, *stdin),
        (posix.POSIX_SPAWN_OPEN, 1, *out),
        (posix.POSIX_SPAWN_DUP2, 1, 2),
    ]
    import signal  # the spawn path only: it imports enum

    # setsid: a session and process group of its own, so that a runtime killing the
    # plugin's process group (or a terminal's ^C) does not kill the agent with it. No
    # signal blocked or ignored because the runtime had it so: SIGTERM must stop the agent.
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    return posix.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True, setsigmask=(), setsigdef=stops)


def _wait_listening(path: bytes, pid: int, log_file: str) -> str:
    import time

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if answers(path):
            return ""
        try:
            done, status = posix.waitpid(pid, posix.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done == pid:
            code = posix.waitstatus_to_exitcode(status)
            return f"the pycni agent this launcher started exited with code {code} before listening (see {log_file})"
        if time.monotonic() >= deadline:
            # Left running: if it listens later, the next calls use it.
            return f"the pycni agent this launcher started (pid {pid}) did not listen within {START_TIMEOUT:g}s"
        time.sleep(_POLL)
