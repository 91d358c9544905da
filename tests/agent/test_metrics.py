"""The agent's Prometheus metrics: real agents, real launchers, real scrapes on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..conftest import NetNS, PluginRun
from ..metrics import free_port, listening_ports, scrape, value
from .conftest import REPO, AgentProcess, call, start_agent
from .test_agent import LOOPBACK, sleep_conf


def test_calls_latency_in_flight_and_declines(agent_dir: Path, launchers: Path, netns: NetNS) -> None:
    address = f"127.0.0.1:{free_port()}"
    agent = start_agent(agent_dir, "--metrics-address", address, "--max-calls", "1")
    try:
        assert call(launchers, "loopback", "ADD", LOOPBACK, netns=netns.path).returncode == 0
        assert call(launchers, "loopback", "DEL", LOOPBACK, netns=netns.path).returncode == 0
        bad = call(launchers, "loopback", "ADD", b"not json", netns=netns.path)
        assert bad.returncode == 1 and bad.json["code"] == 6
        # One slow call in flight; the next finds the agent full and runs in-process.
        slow: list[PluginRun] = []
        conf = sleep_conf(agent_dir / "record.jsonl", 1.5)
        thread = threading.Thread(target=lambda: slow.append(call(launchers, "pct-sleep", "ADD", conf, netns="/x")))
        thread.start()
        _wait_for(agent_dir / "record.jsonl")
        during = scrape(address)
        assert value(during, "pycni_agent_calls_in_flight") == 1.0
        assert call(launchers, "loopback", "VERSION", b"{}").returncode == 0
        thread.join()
        assert slow[0].returncode == 0, slow[0].stdout
        _from_another_netns(launchers, netns)
        samples = scrape(address)
    finally:
        assert agent.stop() == 0
    calls = "pycni_agent_calls_total"
    assert value(samples, calls, plugin="loopback", command="ADD", code="0") == 1.0
    assert value(samples, calls, plugin="loopback", command="DEL", code="0") == 1.0
    assert value(samples, calls, plugin="loopback", command="ADD", code="6") == 1.0  # the CNI code, not the exit code
    assert value(samples, calls, plugin="pct-sleep", command="ADD", code="0") == 1.0
    assert value(samples, calls, plugin="loopback", command="VERSION", code="0") is None  # declined: ran in-process
    assert value(samples, "pycni_agent_calls_in_flight") == 0.0
    assert value(samples, "pycni_agent_declined_calls_total", reason="max_calls") == 1.0
    assert value(samples, "pycni_agent_declined_calls_total", reason="other_netns") == 1.0
    # The histogram: the 1.5 s call is above the 1 s bucket and within 2.5 s.
    hist = "pycni_agent_call_duration_seconds_bucket"
    assert value(samples, hist, plugin="pct-sleep", command="ADD", le="1.0") == 0.0
    assert value(samples, hist, plugin="pct-sleep", command="ADD", le="+Inf") == 1.0
    assert value(samples, "pycni_agent_call_duration_seconds_count", plugin="loopback", command="ADD") == 2.0
    sleep_sum = value(samples, "pycni_agent_call_duration_seconds_sum", plugin="pct-sleep", command="ADD")
    assert sleep_sum is not None and 1.5 <= sleep_sum < 30
    assert (value(samples, "process_start_time_seconds") or 0) > 0  # the library's process metrics


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _from_another_netns(launchers: Path, netns: NetNS) -> None:
    """A launcher in another network namespace: the agent declines, the launcher runs it."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": "VERSION",
        "CNI_PATH": str(launchers),
        "PYCNI_LOG_FILE": str(launchers.parent / "plugins.log"),
    }
    proc = subprocess.run(
        ["ip", "netns", "exec", netns.name, str(launchers / "loopback")],
        input=b'{"cniVersion": "1.0.0"}', env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and "supportedVersions" in json.loads(proc.stdout), proc.stderr


def test_off_by_default(agent: AgentProcess, launchers: Path) -> None:
    assert call(launchers, "loopback", "VERSION", b"{}").returncode == 0
    assert listening_ports(agent.proc.pid) == set()


def test_the_environment_variable_and_a_bad_address(agent_dir: Path, launchers: Path) -> None:
    port = free_port()
    agent = start_agent(agent_dir, cli=True, env={"PYCNI_METRICS_ADDRESS": f"[::1]:{port}"})
    try:
        assert listening_ports(agent.proc.pid) == {port}
        assert call(launchers, "loopback", "VERSION", b"{}").returncode == 0
        samples = scrape(f"[::1]:{port}")
        assert value(samples, "pycni_agent_calls_total", plugin="loopback", command="VERSION", code="0") == 1.0
    finally:
        assert agent.stop() == 0
    out = _cli_agent(agent_dir, "--metrics-address", "localhost")
    assert out.returncode == 1
    assert "invalid metrics address 'localhost' (--metrics-address / PYCNI_METRICS_ADDRESS)" in out.stderr


def test_an_address_in_use_stops_the_agent_before_it_takes_its_socket(agent_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        out = _cli_agent(agent_dir, "--metrics-address", address)
        assert out.returncode == 1, out.stderr
        assert (
            f"cannot serve Prometheus metrics on {address} (--metrics-address / PYCNI_METRICS_ADDRESS): Address already in use"
            in out.stderr
        ), out.stderr
        env_form = _cli_agent(agent_dir, env={"PYCNI_METRICS_ADDRESS": address})
        assert env_form.returncode == 1 and "Address already in use" in env_form.stderr, env_form.stderr
    assert not any(agent_dir.glob("agent.sock*")), list(agent_dir.iterdir())


def _cli_agent(agent_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "pycni.cli.main", "agent", "--socket", str(agent_dir / "agent.sock"), *extra]
    argv += ["--log-file", str(agent_dir / "cli.log")]
    return subprocess.run(argv, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_the_in_process_path_never_loads_prometheus(agent_dir: Path, launchers: Path, netns: NetNS) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "pct-cold",
        "CNI_NETNS": netns.path,
        "CNI_IFNAME": "lo",
        "CNI_PATH": str(launchers),
        "PYCNI_AGENT": "off",
        "PYCNI_LOG_FILE": str(agent_dir / "plugins.log"),
    }
    argv = [sys.executable, "-X", "importtime", str(launchers / "loopback")]
    proc = subprocess.run(argv, input=json.dumps(LOOPBACK).encode(), env=env, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout
    imported = proc.stderr.decode()
    assert "pycni.skel" in imported and "prometheus_client" not in imported and "pycni.metrics" not in imported
