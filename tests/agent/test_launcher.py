"""The plugin executables `pycni plugins install` writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pycni import launcher

from ..conftest import NetNS
from .conftest import AgentProcess, call

LOOPBACK = {"cniVersion": "1.0.0", "name": "pctnet", "type": "loopback"}
PYTHON = os.path.realpath(sys.executable)


def test_launcher_is_plain_python_in_isolated_mode(plugin_dir: Path) -> None:
    text = (plugin_dir / "loopback").read_text()
    assert text.startswith(f"#!{PYTHON} -IS\n# pycni-launcher v3\n")
    assert "main('loopback', '/run/pycni/agent.sock', 'pycni.plugins.main.loopback')" in text
    assert os.access(plugin_dir / "loopback", os.X_OK)


def test_install_with_another_socket(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pycni.cli.main", "plugins", "install", str(tmp_path), "loopback", "--agent-socket", "/x/a.sock"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip() == str(tmp_path / "loopback")
    assert "main('loopback', '/x/a.sock', 'pycni.plugins.main.loopback')" in (tmp_path / "loopback").read_text()


def test_runs_here(plugin_dir: Path, tmp_path: Path) -> None:
    own = str(plugin_dir / "loopback")
    assert launcher.is_launcher(own) and launcher.runs_here(own, "loopback") == "pycni.plugins.main.loopback"
    assert launcher.runs_here(own, "host-local") is None, "a launcher serves its own type only"
    assert launcher.runs_here("/usr/lib/cni/loopback", "loopback") is None
    assert launcher.runs_here(str(tmp_path / "missing"), "loopback") is None
    text = (plugin_dir / "loopback").read_text()
    variants = {
        "other-install": text.replace("site-packages", "site-packages-elsewhere"),
        "other-python": text.replace(PYTHON, "/usr/bin/python3"),
        "old-format": text.replace("# pycni-launcher v3", "# pycni-launcher v2"),
    }
    for name, body in variants.items():
        (tmp_path / name).write_text(body)
        assert launcher.is_launcher(str(tmp_path / name))
        assert launcher.runs_here(str(tmp_path / name), "loopback") is None, name


def _launcher_modules(launchers: Path, netns: NetNS) -> set[str]:
    """Every module the loopback launcher imports on an ADD the agent serves."""
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "pct-imports",
        "CNI_NETNS": netns.path,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(launchers),
    }
    proc = subprocess.run(
        [PYTHON, "-IS", "-X", "importtime", str(launchers / "loopback")],
        input=json.dumps(LOOPBACK).encode(),
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout
    lines = [line for line in proc.stderr.decode().splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}


def test_a_plugin_process_never_reads_entry_points(launchers: Path, netns: NetNS, tmp_path: Path) -> None:
    """Without the agent, bridge runs in its launcher's process and delegates to host-local in it:
    the launchers name their modules, so importlib.metadata (~40 ms of imports) is never loaded."""
    conf = {"cniVersion": "1.0.0", "name": "pctnet", "type": "bridge", "bridge": "pctbrm0"}
    conf["ipam"] = {"type": "host-local", "subnet": "10.255.254.0/24", "dataDir": str(tmp_path)}
    env = {"CNI_CONTAINERID": "pct-md", "CNI_NETNS": netns.path, "CNI_IFNAME": "eth0", "CNI_PATH": str(launchers)}
    env |= {"PYCNI_AGENT": "off", "PYCNI_LOG_FILE": str(tmp_path / "log")}
    try:
        for command in ("ADD", "DEL"):
            proc = subprocess.run(
                [PYTHON, "-IS", "-X", "importtime", str(launchers / "bridge")],
                input=json.dumps(conf).encode(),
                capture_output=True,
                env={**env, "CNI_COMMAND": command},
                timeout=60,
                check=False,
            )
            assert proc.returncode == 0, proc.stdout
            modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.decode().splitlines() if "import time:" in line}
            assert "pycni.plugins.ipam.hostlocal.allocator" in modules  # host-local ran here
            assert "importlib.metadata" not in modules
    finally:
        subprocess.run(["ip", "link", "del", "pctbrm0"], capture_output=True, check=False)


def test_launcher_imports_only_the_standard_library(agent: AgentProcess, launchers: Path, netns: NetNS) -> None:
    modules = _launcher_modules(launchers, netns)
    ours = {m for m in modules if m == "pycni" or m.startswith("pycni.")}
    assert ours == {"pycni", "pycni.stdio", "pycni.agent", "pycni.agent.client", "pycni.agent.protocol", "pycni.agent.settings"}
    others = {m.split(".")[0] for m in modules - ours}
    assert others <= set(sys.stdlib_module_names), others - set(sys.stdlib_module_names)
    # Nor the heavier parts of it: socket.py (enum, selectors), os, typing, json, logging.
    assert not modules & {"socket", "enum", "selectors", "os", "typing", "json", "logging", "re"}, modules


def test_launcher_peak_memory(agent: AgentProcess, launchers: Path, netns: NetNS) -> None:
    """Peak RSS of a launcher served by the agent (target: at most 15 MiB)."""
    probe = (
        "import json, resource, subprocess, sys\n"
        "proc = subprocess.run([sys.argv[1]], input=sys.argv[2].encode(), capture_output=True)\n"
        "print(proc.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    )
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "pct-rss", "CNI_NETNS": netns.path, "CNI_IFNAME": "eth0"}
    out = subprocess.run(
        [PYTHON, "-IS", "-c", probe, str(launchers / "loopback"), json.dumps(LOOPBACK)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    assert out[0] == "0"
    assert int(out[1]) <= 15 * 1024, f"launcher peak RSS {int(out[1]) / 1024:.1f} MiB"
    assert "pct-rss" in agent.log_text(), "the call did not go through the agent"


def test_about_text(launchers: Path) -> None:
    run = call(launchers, "loopback", "", b"")
    assert run.returncode == 0 and "CNI protocol versions supported" in run.stderr
