"""The benchmark's laboratory: private namespaces, plugin variants, an agent, timing.

Every measurement runs inside a "host" network namespace of its own, created for
it and destroyed after it: bridges, veths, iptables and nftables rules, qdiscs
and the ifb devices of bandwidth all live and die there, so a run never touches
the machine's own network, and other programs sharing the machine (another
engineer's tests) never see, delete or disturb our 500 attachments. Container
namespaces are bind mounts in the run's directory, not in /run/netns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REFERENCE_DIR = Path("/usr/lib/cni")
PYTHON = sys.executable


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- namespaces -------------------------------------------------------------------


def make_netns(path: Path) -> Path:
    """A new network namespace, kept alive by a bind mount at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    subprocess.run(["unshare", f"--net={path}", "true"], check=True)
    return path


def drop_netns(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, check=False)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def host_namespace(path: Path) -> Path:
    """A stand-in host: its own loopback, forwarding on, nothing else."""
    make_netns(path)
    subprocess.run(["nsenter", f"--net={path}", "ip", "link", "set", "lo", "up"], check=True)
    return path


def in_namespace(host: Path, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={host}", *argv]


# -- what is measured ------------------------------------------------------------------


@dataclass
class Variant:
    """One way of running a chain: the Go reference plugins, or ours with or without the agent."""

    name: str
    label: str
    bin_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.name != "reference"


def our_plugins() -> list[str]:
    """What `pycni plugins list` says this installation ships."""
    proc = subprocess.run([PYTHON, "-m", "pycni.cli.main", "plugins", "list"], capture_output=True, text=True, check=True)
    return proc.stdout.split()


def variants(run_dir: Path) -> dict[str, Variant]:
    """The three variants; ours use launchers installed for this run's agent socket."""
    bin_dir = run_dir / "bin"
    if not bin_dir.exists():
        subprocess.run(
            [PYTHON, "-m", "pycni.cli.main", "plugins", "install", str(bin_dir), "--agent-socket", str(agent_socket(run_dir))],
            check=True,
            capture_output=True,
        )
    logs = {"PYCNI_LOG_FILE": str(run_dir / "plugins.log")}
    return {
        "reference": Variant("reference", "Go reference plugins (/usr/lib/cni)", REFERENCE_DIR),
        # managed: through the phase's own agent, never one a launcher would start on demand.
        "agent": Variant("agent", "pycni through the agent", bin_dir, {**logs, "PYCNI_AGENT": "managed"}),
        "in-process": Variant("in-process", "pycni without the agent", bin_dir, {**logs, "PYCNI_AGENT": "off"}),
    }


def agent_socket(run_dir: Path) -> Path:
    return run_dir / "agent.sock"


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]

    def peak_rss_kib(self) -> int:
        return _status_kib(self.proc.pid, "VmHWM")

    def rss_kib(self) -> int:
        return _status_kib(self.proc.pid, "VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def running_agent(run_dir: Path, launch: list[str] | None = None) -> Iterator[Agent]:
    """`pycni agent` on this run's socket, in the current (host) namespace (`launch`: what
    runs `pycni`'s command line instead of `-m pycni.cli.main`, e.g. bench/profagent.py)."""
    sock = agent_socket(run_dir)
    argv = [PYTHON, *(launch or ["-m", "pycni.cli.main"]), "agent", "--socket", str(sock)]
    argv += ["--log-file", str(run_dir / "agent.log")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(sock))
                break
            except OSError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the agent did not start (see {run_dir / 'agent.log'})")
        time.sleep(0.05)
    agent = Agent(proc)
    try:
        yield agent
    finally:
        agent.stop()


# -- numbers ----------------------------------------------------------------------------


def median_ms(samples: list[float]) -> float | None:
    return round(statistics.median(samples) * 1000, 1) if samples else None


def adds_summary(walls: list[float], duplicates: int, errors: list[str]) -> dict[str, Any]:
    """The row of a concurrent-ADDs measurement: median wall time, addresses given twice, failures."""
    return {
        "wall": median_ms(walls),
        "duplicates": duplicates,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "rounds": len(walls),
    }


def ratio(ours: float | None, reference: float | None) -> float | None:
    if ours is None or not reference:
        return None
    return round(ours / reference, 2)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    info["cores"] = os.cpu_count()
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
        info["memory"] = f"{int(mem) // 1024} MiB"
    info["kernel"] = os.uname().release
    info["python"] = sys.version.split()[0]
    with contextlib.suppress(OSError):
        info["os"] = next(
            line.split("=", 1)[1].strip('"')
            for line in Path("/etc/os-release").read_text().splitlines()
            if line.startswith("PRETTY_NAME=")
        )
    go = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins"], capture_output=True, text=True, check=False
    )
    info["reference"] = f"containernetworking-plugins {go.stdout.strip() or '?'}"
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    info["pycni"] = commit.stdout.strip() or "?"
    info["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def dump(obj: Any) -> str:
    return json.dumps(obj)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
