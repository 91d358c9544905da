"""Agents for tests: real `pycni agent` processes on private sockets, and launchers pointing at them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pycni import launcher, registry

from ..conftest import PluginRun, run_plugin

REPO = Path(__file__).resolve().parents[2]


@dataclass
class AgentProcess:
    socket: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


_started: list[AgentProcess] = []


@pytest.fixture(autouse=True)
def no_stray_agents() -> Iterator[None]:
    """Stop every agent a test started and left running (a failed assertion midway)."""
    yield
    while _started:
        _started.pop().kill()


def start_agent(directory: Path, *extra: str, cli: bool = False, env: dict[str, str] | None = None) -> AgentProcess:
    """`pycni agent` itself (cli=True), or the same server also serving the test plugins;
    `env` is added to the agent's environment."""
    sock, log = directory / "agent.sock", directory / "agent.log"
    entry = ["pycni.cli.main", "agent"] if cli else ["tests.agent.agent_host"]
    argv = [sys.executable, "-m", *entry, "--socket", str(sock), "--log-file", str(log), *extra]
    full_env = {**os.environ, **env} if env else None
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env)
    deadline = time.monotonic() + 60
    while not answers(sock):
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"the agent exited with {proc.returncode}: {out}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the agent did not listen within 60 s")
        time.sleep(0.02)
    agent = AgentProcess(sock, log, proc)
    _started.append(agent)
    return agent


@pytest.fixture
def agent_dir() -> Iterator[Path]:
    # Short: a Unix socket path has at most 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="pct-agent-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def agent(agent_dir: Path) -> Iterator[AgentProcess]:
    proc = start_agent(agent_dir)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def launchers(agent_dir: Path) -> Path:
    """Our plugins and the test plugins, installed to hand calls to the agent in `agent_dir`."""
    directory = agent_dir / "bin"
    launcher.install(str(directory), agent_socket=str(agent_dir / "agent.sock"))
    for test_type in ("pct-sleep", "pct-deleg"):
        target = directory / test_type
        target.write_text(launcher.render(test_type, str(agent_dir / "agent.sock"), ""))
        target.chmod(0o755)
    assert "loopback" in registry.discover()
    return directory


def call(
    bin_dir: Path, plugin_type: str, command: str, conf: dict[str, Any] | bytes, *, agent: bool = True, **kwargs: Any
) -> PluginRun:
    """Run an installed launcher; agent=False forbids it the agent (PYCNI_AGENT=off)."""
    env = dict(kwargs.pop("env", None) or {})
    env.setdefault("PYCNI_LOG_FILE", str(bin_dir.parent / "plugins.log"))
    if not agent:
        env["PYCNI_AGENT"] = "off"
    return run_plugin(bin_dir / plugin_type, command, conf, env=env, **kwargs)


def fifo_netns(directory: Path) -> Path:
    """A "namespace path" that is a FIFO: opening it blocks until someone opens it for
    writing, so a real plugin call hangs exactly where it would enter the namespace."""
    path = directory / f"hang-{len(list(directory.glob('hang-*')))}"
    os.mkfifo(path)
    return path


def release_fifo(path: Path) -> int:
    """Unblock every reader of `path` (now and later); close the returned fd when done."""
    return os.open(path, os.O_RDWR | os.O_NONBLOCK)
