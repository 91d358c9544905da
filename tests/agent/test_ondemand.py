"""The agent started on demand: a launcher that finds none starts one (one per socket, however
many race), later calls use it, it exits when idle; and what happens when it cannot start or
what answers is not an agent we may use. Also the settings (PYCNI_AGENT, /etc/pycni/pycni.conf)
and socket activation. Real launchers, real agents; every agent a test starts is killed."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pycni import __version__, launcher

from ..conftest import NetNS, PluginRun, run_plugin
from .conftest import REPO, answers

LOOPBACK = {"cniVersion": "1.0.0", "name": "pct-ondemand", "type": "loopback"}


def peer_pid(sock_path: Path) -> int:
    """The pid of the process listening on `sock_path` (the kernel's word: SO_PEERCRED)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(sock_path))
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", raw)[0])


def agents_on(sock_path: Path) -> list[int]:
    """Every process whose command line names `sock_path`: the agents serving it."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"agent" in argv and str(sock_path).encode() in argv:
                found.append(int(entry.name))
    return found


def wait_gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def wait_for_line(log: Path, line: str, timeout: float = 10) -> str:
    """The log once it has `line`: the agent logs a call after it answered it."""
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text() if log.exists() else ""
        if line in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


class Site:
    """Launchers installed for a socket of their own, and the calls a runtime would make."""

    def __init__(self, directory: Path, socket_dir: Path | None = None) -> None:
        self.dir = directory
        self.socket = (socket_dir or directory) / "agent.sock"
        self.bin = directory / "bin"
        self.log = directory / "plugins.log"
        launcher.install(str(self.bin), ["loopback"], agent_socket=str(self.socket))

    def call(self, command: str, netns: NetNS | None = None, mode: str | None = "auto", **env: str) -> PluginRun:
        full = {"PYCNI_LOG_FILE": str(self.log), **env}
        if mode is not None:
            full["PYCNI_AGENT"] = mode
        path = netns.path if netns is not None else ""
        return run_plugin(self.bin / "loopback", command, LOOPBACK, netns=path, env=full, timeout=120)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def kill_agents(self) -> list[int]:
        pids = agents_on(self.socket)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            assert wait_gone(pid), f"agent {pid} did not die"
        return pids


@pytest.fixture
def site() -> Iterator[Site]:
    # Short: a Unix socket path has at most 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="pct-od-", dir="/tmp"))
    made = Site(directory)
    try:
        yield made
    finally:
        made.kill_agents()
        subprocess.run(["rm", "-rf", str(directory)], check=False)


def test_first_call_starts_an_agent_that_later_calls_use(site: Site, netns: NetNS) -> None:
    first = site.call("ADD", netns)
    assert first.returncode == 0, first.stdout + first.stderr
    assert answers(site.socket)
    pid = peer_pid(site.socket)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"--on-demand" in argv and b"--idle-timeout" in argv
    assert os.getsid(pid) == pid, "the agent is not in a session of its own"
    assert Path(f"/proc/{pid}/cwd").resolve() == Path("/")
    # An environment of its own: nothing of the runtime's or of the call that started it.
    assert [entry.split(b"=")[0] for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if entry] == [b"PATH"]
    # Only the standard descriptors and the agent's own: nothing of the runtime's.
    fds = {int(fd.name) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/1") == str(site.log) and max(fds) < 64
    for command in ("CHECK", "DEL"):
        run = site.call(command, netns)
        assert run.returncode == 0, run.stdout + run.stderr
    assert peer_pid(site.socket) == pid and agents_on(site.socket) == [pid]
    text = wait_for_line(site.log, "loopback DEL container=pct-containe")
    assert f"pycni agent {pid} (pycni {__version__}) listening on {site.socket}" in text
    assert "exits after 600s without a call" in text
    for command in ("ADD", "CHECK", "DEL"):
        assert f"loopback {command} container=pct-containe" in text, text


def test_a_hundred_racing_launchers_start_one_agent(site: Site) -> None:
    with ThreadPoolExecutor(100) as pool:
        runs = list(pool.map(lambda _: site.call("VERSION"), range(100)))
    assert all(run.returncode == 0 and '"supportedVersions"' in run.stdout for run in runs), runs[0]
    assert len(agents_on(site.socket)) == 1
    assert site.log_text().count(") listening on ") == 1
    assert "in-process" not in site.log_text()


def test_an_idle_agent_exits_and_the_next_call_starts_another(site: Site, tmp_path: Path) -> None:
    conf = tmp_path / "pycni.conf"
    conf.write_text("# tests\nagent = auto\nagent_idle_timeout = 1  # seconds\n")
    assert site.call("VERSION", PYCNI_CONF=str(conf)).returncode == 0
    pid = peer_pid(site.socket)
    assert wait_gone(pid, 15), "the agent did not exit when idle"
    assert not site.socket.exists(), "the idle agent left its socket"
    assert f"pycni agent {pid}: no call for 1s, exiting" in site.log_text()
    assert site.call("VERSION", PYCNI_CONF=str(conf)).returncode == 0
    assert peer_pid(site.socket) != pid


def test_an_agent_of_another_version_is_not_used(site: Site, netns: NetNS) -> None:
    boot = "import sys, pycni; pycni.__version__ = '0.0.0-other'; from pycni.cli.main import main; sys.exit(main())"
    other_log = site.dir / "other.log"
    argv = [sys.executable, "-c", boot, "agent", "--socket", str(site.socket), "--log-file", str(other_log)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not answers(site.socket):
            assert proc.poll() is None and time.monotonic() < deadline, "the other agent did not start"
            time.sleep(0.05)
        for command in ("ADD", "DEL"):
            run = site.call(command, netns)
            assert run.returncode == 0, run.stdout + run.stderr
        line = f"the agent on {site.socket} runs pycni 0.0.0-other, this launcher {__version__}: it is not used"
        assert site.log_text().count(line + ": the call runs in-process") == 1, site.log_text()
        assert "loopback ADD" not in other_log.read_text()
        assert agents_on(site.socket) == [proc.pid], "a second agent was started"
        # required: an agent that may not be used is no agent.
        run = site.call("ADD", netns, mode="required")
        assert run.returncode == 1 and run.json["code"] == 11 and "runs pycni 0.0.0-other" in run.json["msg"]
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def read_only_directory(path: Path) -> Iterator[Path]:
    """A directory nobody can write, root included (a read-only tmpfs: the test runs in a
    mount namespace of its own)."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,mode=755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_unwritable_socket_directory_runs_in_process_and_says_so_once(tmp_path: Path, netns: NetNS) -> None:
    directory = Path(tempfile.mkdtemp(prefix="pct-od-", dir="/tmp"))
    try:
        with read_only_directory(directory / "ro") as ro:
            site = Site(directory, socket_dir=ro)
            for command in ("ADD", "DEL", "ADD", "DEL"):
                run = site.call(command, netns)
                assert run.returncode == 0, run.stdout + run.stderr
            reason = f"cannot start the pycni agent: cannot open {site.socket}.start: Read-only file system"
            assert site.log_text().count(reason + ": the call runs in-process") == 1, site.log_text()
            assert agents_on(site.socket) == []
    finally:
        subprocess.run(["rm", "-rf", str(directory)], check=False)


def test_another_process_on_the_socket_runs_in_process_and_says_so_once(site: Site, netns: NetNS) -> None:
    stranger = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stranger.bind(str(site.socket))
    stranger.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # takes connections and says nothing, as a hung or foreign server would
        stranger.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(stranger.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        for command in ("ADD", "DEL"):
            run = site.call(command, netns)
            assert run.returncode == 0, run.stdout + run.stderr
        reason = f"what listens on {site.socket} is not a pycni agent: no answer to the version handshake within 5s"
        assert site.log_text().count(reason) == 1, site.log_text()
        assert agents_on(site.socket) == []
    finally:
        stop.set()
        thread.join(5)
        for sock in [*held, stranger]:
            sock.close()


def test_an_agent_that_cannot_take_the_socket_runs_the_call_in_process(site: Site, netns: NetNS) -> None:
    """Another process holds the socket's lock (a hung agent): the agent started on demand
    gives up, and the launcher that started it runs the call itself."""
    holder = os.open(f"{site.socket}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        run = site.call("ADD", netns)
        assert run.returncode == 0, run.stdout + run.stderr
        text = site.log_text()
        assert "the pycni agent this launcher started exited with code 1 before listening" in text, text
        assert f"another pycni agent is running on {site.socket}" in text
        assert agents_on(site.socket) == []
    finally:
        os.close(holder)
    assert site.call("DEL", netns).returncode == 0


def test_off_never_starts_an_agent(site: Site) -> None:
    run = site.call("VERSION", mode="off")
    assert run.returncode == 0 and not site.socket.exists()
    run = site.call("VERSION", mode="managed")
    assert run.returncode == 0 and not site.socket.exists()


def test_required_without_an_agent_fails_with_11(site: Site, netns: NetNS) -> None:
    run = site.call("ADD", netns, mode="required")
    assert run.returncode == 1 and run.json["code"] == 11, run.stdout
    assert str(site.socket) in run.json["msg"] and "PYCNI_AGENT is required" in run.json["msg"]
    assert not site.socket.exists(), "required started an agent"
    assert site.call("VERSION").returncode == 0  # auto starts one ...
    run = site.call("ADD", netns, mode="required")  # ... and required uses it
    assert run.returncode == 0, run.stdout
    assert "loopback ADD container=pct-containe" in wait_for_line(site.log, "loopback ADD container=pct-containe")
    assert site.call("DEL", netns, mode="required").returncode == 0


@pytest.mark.parametrize(
    "text, env, code, fragment",
    [
        ("agent = sometimes\n", {}, 7, "agent in {conf} is 'sometimes': it must be one of auto, off, required, managed"),
        ("agent = off\n", {"PYCNI_AGENT": "bogus"}, 4, "PYCNI_AGENT is 'bogus': it must be one of"),
        ("agnet = off\n", {}, 7, "{conf} line 1: unknown key 'agnet'"),
        ("agent off\n", {}, 7, "{conf} line 1: 'agent off' is not `key = value`"),
        ("agent_idle_timeout = soon\n", {}, 7, "agent_idle_timeout in {conf} is 'soon'"),
        ("agent_idle_timeout = -5\n", {}, 7, "agent_idle_timeout in {conf} is '-5'"),
    ],
)
def test_invalid_settings_are_refused(
    site: Site, tmp_path: Path, text: str, env: dict[str, str], code: int, fragment: str
) -> None:
    conf = tmp_path / "pycni.conf"
    conf.write_text(text)
    run = site.call("ADD", mode=None, PYCNI_CONF=str(conf), **env)
    assert run.returncode == 1 and run.json["code"] == code, run.stdout
    assert fragment.format(conf=conf) in run.json["msg"]
    assert not site.socket.exists()


def test_the_configuration_file_chooses_and_the_environment_wins(site: Site, tmp_path: Path) -> None:
    conf = tmp_path / "pycni.conf"
    conf.write_text("agent = off\n")
    assert site.call("VERSION", mode=None, PYCNI_CONF=str(conf)).returncode == 0
    assert not site.socket.exists()
    assert site.call("VERSION", mode="auto", PYCNI_CONF=str(conf)).returncode == 0
    assert answers(site.socket)
    conf.write_text("agent = required\n")
    site.kill_agents()
    run = site.call("VERSION", mode=None, PYCNI_CONF=str(conf))
    assert run.json["code"] == 11 and f"agent in {conf} is required" in run.json["msg"]


def test_killing_the_on_demand_agent_loses_no_call(site: Site, make_netns: Any) -> None:
    """Calls keep coming while the agent started on demand is killed twice: DEL, CHECK and
    VERSION never fail; an ADD the agent had taken may fail with 11 (the runtime then
    runs DEL and ADD again); the next call starts a new agent."""
    namespaces = [make_netns() for _ in range(3)]
    assert site.call("VERSION").returncode == 0
    killed: list[int] = []
    failures: list[str] = []
    stop = threading.Event()

    def worker(ns: NetNS) -> None:
        while not stop.is_set():
            for command in ("ADD", "CHECK", "DEL"):
                run = site.call(command, ns)
                if run.returncode == 0:
                    continue
                lost_add = command == "ADD" and run.json.get("code") == 11 and "stopped answering" in run.json["msg"]
                if not lost_add:
                    failures.append(f"{command}: {run.stdout} {run.stderr}")
                elif site.call("DEL", ns).returncode != 0:
                    failures.append("DEL after a lost ADD failed")
                break  # the runtime's answer to a failed ADD: DEL, then ADD again

    threads = [threading.Thread(target=worker, args=(ns,)) for ns in namespaces]
    for thread in threads:
        thread.start()
    try:
        for _ in range(2):
            time.sleep(2)
            killed += site.kill_agents()
    finally:
        time.sleep(2)
        stop.set()
        for thread in threads:
            thread.join(120)
    assert not failures, failures
    assert len(killed) == 2, "the agent was not restarted on demand after a kill"
    assert peer_pid(site.socket) not in killed
    assert "listening on" in site.log_text()


def test_socket_activation(site: Site, netns: NetNS) -> None:
    """The socket comes from "systemd" (LISTEN_FDS=1, LISTEN_PID, fd 3): served, never
    removed, and left listening when the agent stops (the next connection would start it)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(site.socket))
    os.chmod(site.socket, 0o600)
    listener.listen(16)
    agent_log = site.dir / "agent.log"
    # bash, not sh: dash cannot redirect from a descriptor above 9. exec keeps the pid.
    script = 'export LISTEN_FDS=1 LISTEN_PID=$$; exec "$@" 3<&"$FD"'
    argv = ["bash", "-c", script, "bash", sys.executable, "-m", "pycni.cli.main", "agent", "--log-file", str(agent_log)]
    env = {**os.environ, "FD": str(listener.fileno())}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, pass_fds=[listener.fileno()], stderr=subprocess.PIPE)
    try:
        run = site.call("ADD", netns, mode="required")
        assert run.returncode == 0, run.stdout + run.stderr
        assert peer_pid(site.socket) == os.getpid()  # the listening socket is shared: ours and the agent's
        text = wait_for_line(agent_log, "loopback ADD container=pct-containe")
        assert f"listening on {site.socket} (socket from systemd)" in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        assert site.socket.exists() and answers(site.socket), "the agent removed or closed systemd's socket"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()
    assert site.call("DEL", netns, mode="off").returncode == 0


def test_no_stray_agents() -> None:
    """The tests above killed every agent they started (this module runs it last)."""
    strays = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if b"--on-demand" in argv and any(arg.startswith(b"/tmp/pct-od-") for arg in argv):
                strays.append(int(entry.name))
    assert not strays, f"agents left running: {strays}"
