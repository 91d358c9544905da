"""BIRD as a child of calico-node: started in the foreground on the generated configuration,
restarted (with backoff) when it dies, reloaded through its control socket when the
configuration changes.

BIRD gets SIGKILL when calico-node dies (PR_SET_PDEATHSIG), so a restarted calico-node never
finds a stray BIRD on its socket. Its kernel protocol is `persist`: the routes it installed
stay while it is down (traffic keeps flowing), and graceful restart on the BGP sessions keeps
the peers' routes to this node until the new BIRD has resynchronised.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from pycni.calico.node.bird import control

log = logging.getLogger("calico-node")

PACKAGE_HINT = "install Debian's `bird` package (apt-get install bird), or set CALICO_NETWORKING_BACKEND=vxlan or none"
_PR_SET_PDEATHSIG = 1


class BirdMissing(RuntimeError):
    def __init__(self, binary: str, detail: str = "") -> None:
        what = f"BIRD ({binary or 'bird'}) is not installed" + (f": {detail}" if detail else "")
        super().__init__(f"{what}; {PACKAGE_HINT}")


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def check_config(binary: str, config: str) -> str:
    """ "" when BIRD parses `config`, else its message."""
    try:
        out = subprocess.run([binary, "-p", "-c", config], capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise BirdMissing(binary) from None
    return "" if out.returncode == 0 else (out.stderr or out.stdout).strip()


class BirdProcess:
    """One BIRD (IPv4 `bird` or IPv6 `bird6`), supervised by a thread of its own."""

    def __init__(self, binary: str, config: str, socket_path: str, name: str, log_dir: str = "") -> None:
        if not binary or not os.access(binary, os.X_OK):
            raise BirdMissing(binary or name)
        self.binary, self.config, self.socket_path, self.name = binary, config, socket_path, name
        self.log_path = os.path.join(log_dir or os.path.dirname(socket_path), f"{name}.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.problem = "not started"
        self.on_start: Callable[[], None] | None = None
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name=f"{name}-supervisor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self) -> None:
        problem = check_config(self.binary, self.config)
        if problem:
            self.problem = f"{self.name} rejected its configuration: {problem}"
            log.error("%s", self.problem)
            return
        os.makedirs(os.path.dirname(self.socket_path), exist_ok=True)
        with open(self.log_path, "ab") as out:
            # Started (and restarted) from the supervisor thread, which lives as long as the
            # daemon: PDEATHSIG follows the thread that forked.
            self.proc = subprocess.Popen(
                # -R: graceful-restart recovery, as calico/node runs BIRD: the kernel routes it
                # left (persist) stay until the sessions have refilled its table.
                [self.binary, "-R", "-f", "-c", self.config, "-s", self.socket_path],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                control.command(self.socket_path, "show status", timeout=1)
                break
            except control.BirdError:
                time.sleep(0.05)
        if self.proc.poll() is not None:
            tail = _tail(self.log_path)
            self.problem = f"{self.name} exited with {self.proc.returncode} at start: {tail}"
            log.error("%s (is the `bird` package installed and working?)", self.problem)
            return
        self.problem = ""
        log.info("Started %s (pid %d) on %s", self.name, self.proc.pid, self.config)
        if self.on_start is not None:
            self.on_start()

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            with self._lock:
                if not self.running() and not self._stop.is_set():
                    if self.proc is not None:
                        self.restarts += 1
                        log.warning("%s exited with %s; restarting it", self.name, self.proc.returncode)
                        self.problem = f"{self.name} exited with {self.proc.returncode}; restarting"
                    self._spawn()
                    backoff = 1.0 if self.running() else min(backoff * 2, 10.0)
            self._kick.wait(backoff if not self.running() else 0.5)
            self._kick.clear()

    def reload(self) -> None:
        """Make BIRD read its configuration again (it keeps its sessions where it can)."""
        with self._lock:
            if not self.running():
                self._kick.set()
                return
            problem = check_config(self.binary, self.config)
            if problem:
                self.problem = f"{self.name} rejected its new configuration (keeping the old one): {problem}"
                log.error("%s", self.problem)
                return
            try:
                reply = control.configure(self.socket_path)
            except control.BirdError as exc:
                self.problem = f"{self.name} did not take its new configuration: {exc}"
                log.warning("%s", self.problem)
                return
            if not reply.ok:
                self.problem = f"{self.name} reconfiguration failed: {reply.text}"
                log.error("%s", self.problem)
            else:
                self.problem = ""
                log.info("%s reconfigured", self.name)

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as fh:
            return " | ".join(line.strip() for line in fh.readlines()[-lines:]) or "no output"
    except OSError:
        return "no output"
