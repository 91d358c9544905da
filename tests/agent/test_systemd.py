"""The systemd unit in contrib/, and the agent's readiness notification."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, start_agent

UNIT = REPO / "contrib" / "pycni-agent.service"
SOCKET_UNIT = REPO / "contrib" / "pycni-agent.socket"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_are_valid(tmp_path: Path) -> None:
    pycni = Path(sys.executable).with_name("pycni")
    unit = tmp_path / "pycni-agent.service"
    unit.write_text(UNIT.read_text().replace("/opt/pycni/.venv/bin/pycni", str(pycni)))
    (tmp_path / "pycni-agent.socket").write_text(SOCKET_UNIT.read_text())
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit), str(tmp_path / "pycni-agent.socket")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = UNIT.read_text()
    assert "Type=notify" in text and "pycni agent --socket /run/pycni/agent.sock" in text
    socket_text = SOCKET_UNIT.read_text()
    assert "ListenStream=/run/pycni/agent.sock" in socket_text and "SocketMode=0600" in socket_text


def test_agent_notifies_systemd(agent_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = agent_dir / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(60)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        proc = start_agent(agent_dir, cli=True)
        assert notify.recv(64) == b"READY=1"
        assert os.path.exists(proc.socket)
        assert proc.stop() == 0
        assert notify.recv(64) == b"STOPPING=1"
