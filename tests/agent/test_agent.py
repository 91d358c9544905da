"""The resident agent, through real launchers and real agent processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pycni import launcher
from pycni.agent import protocol

from ..conftest import NetNS, unique_subnet
from .conftest import AgentProcess, answers, call, fifo_netns, release_fifo, start_agent

LOOPBACK = {"cniVersion": "1.0.0", "name": "pctnet", "type": "loopback"}


def status_conf(**extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "pctnet", "type": "loopback", "requireAgent": True, **extra}


def served_by_agent(bin_dir: Path) -> bool:
    """STATUS of a configuration with requireAgent succeeds only through the agent."""
    run = call(bin_dir, "loopback", "STATUS", status_conf())
    assert run.returncode == 0 or run.json["code"] == 50, run.stdout
    return run.returncode == 0


# -- one code path, two ways to reach it ------------------------------------------


def _cases(netns: NetNS) -> list[tuple[str, str, Any, dict[str, str]]]:
    ns = netns.path
    return [
        ("ADD", "loopback", LOOPBACK, {"netns": ns}),
        ("CHECK", "loopback", {**LOOPBACK, "prevResult": {"cniVersion": "1.0.0"}}, {"netns": ns}),
        ("DEL", "loopback", LOOPBACK, {"netns": ns}),
        ("DEL", "loopback", LOOPBACK, {"netns": "/run/netns/pct-missing"}),
        ("ADD", "loopback", {**LOOPBACK, "cniVersion": "0.2.0"}, {"netns": ns}),
        ("VERSION", "loopback", {"cniVersion": "0.4.0"}, {}),
        ("", "loopback", LOOPBACK, {}),
        ("ADD", "loopback", b"not json", {"netns": ns}),
        ("ADD", "loopback", {**LOOPBACK, "cniVersion": "9.9.9"}, {"netns": ns}),
        ("FROB", "loopback", LOOPBACK, {"netns": ns}),
        ("ADD", "loopback", LOOPBACK, {"netns": "/run/netns/pct-missing"}),
        ("ADD", "loopback", LOOPBACK, {"netns": ns, "ifname": "a/b"}),
        ("ADD", "loopback", LOOPBACK, {"netns": ns, "cni_args": "garbage"}),
        ("ADD", "loopback", LOOPBACK, {"netns": "/proc/self/ns/net"}),
        ("STATUS", "loopback", {**LOOPBACK, "cniVersion": "1.1.0"}, {}),
        ("GC", "loopback", {**LOOPBACK, "cniVersion": "1.1.0"}, {}),
        ("ADD", "bridge-nonexistent", LOOPBACK, {"netns": ns}),
    ]


def test_same_bytes_with_and_without_agent(agent: AgentProcess, launchers: Path, netns: NetNS) -> None:
    # A launcher for a type this installation does not have (the module is looked up when it runs).
    (launchers / "bridge-nonexistent").write_text(launcher.render("nothere", str(agent.socket), ""))
    (launchers / "bridge-nonexistent").chmod(0o755)
    for command, plugin_type, conf, kwargs in _cases(netns):
        through = call(launchers, plugin_type, command, conf, **kwargs)
        alone = call(launchers, plugin_type, command, conf, agent=False, **kwargs)
        case = f"{plugin_type} {command or '(none)'} {kwargs}"
        assert (through.returncode, through.stdout, through.stderr) == (alone.returncode, alone.stdout, alone.stderr), case
        assert "Traceback" not in through.stdout + through.stderr, case
    assert agent.log_text().count("loopback ADD") >= 5, "the calls did not go through the agent"


def test_concurrent_calls(agent: AgentProcess, launchers: Path, make_netns: Any) -> None:
    namespaces = [make_netns() for _ in range(4)]

    def one(i: int) -> int:
        ns = namespaces[i % len(namespaces)]
        run = call(launchers, "loopback", "ADD", LOOPBACK, netns=ns.path, container_id=f"pct-c{i}")
        assert run.returncode == 0, run.stdout
        assert run.json["interfaces"][0]["sandbox"] == ns.path
        return run.returncode

    with ThreadPoolExecutor(32) as pool:
        assert list(pool.map(one, range(32))) == [0] * 32
    for ns in namespaces:
        assert "UP" in ns.run("ip", "link", "show", "lo").stdout


# -- the socket and who may use it -------------------------------------------------


def test_socket_mode_and_one_agent_per_socket(agent: AgentProcess, agent_dir: Path) -> None:
    mode = os.stat(agent.socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    second = start_agent_expecting_failure(agent_dir)
    assert "another pycni agent is running" in second


def start_agent_expecting_failure(agent_dir: Path) -> str:
    argv = [sys.executable, "-m", "pycni.cli.main", "agent", "--socket", str(agent_dir / "agent.sock")]
    proc = subprocess.run([*argv, "--log-file", str(agent_dir / "second.log")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


def test_cli_agent_serves_and_stops_cleanly(agent_dir: Path, launchers: Path, netns: NetNS) -> None:
    proc = start_agent(agent_dir, "--call-timeout", "30", cli=True)
    try:
        assert served_by_agent(launchers)
        run = call(launchers, "loopback", "ADD", LOOPBACK, netns=netns.path)
        assert run.returncode == 0, run.stdout
    finally:
        assert proc.stop() == 0
    assert not agent_dir.joinpath("agent.sock").exists()
    assert "loopback ADD" in proc.log_text()
    assert not served_by_agent(launchers)


def test_a_caller_cannot_make_the_agent_kill_itself(agent_dir: Path, launchers: Path, tmp_path: Path) -> None:
    """A call's PYCNI_FAULT kills the agent only if it was started with --enable-fault-injection."""
    trace = tmp_path / "trace"
    conf = {"cniVersion": "1.0.0", "name": "pctfault", "ipam": {"type": "host-local", "subnet": unique_subnet(24)}}
    conf["ipam"]["dataDir"] = str(tmp_path / "ipam")
    fault = {"PYCNI_FAULT": "address-allocated", "PYCNI_FAULT_TRACE": str(trace)}
    proc = start_agent(agent_dir, cli=True)
    run = call(launchers, "host-local", "ADD", conf, netns="/x", container_id="pct-fault1", env=fault)
    assert run.returncode == 0, run.stdout
    assert proc.stop() == 0 and "host-local ADD container=pct-fault1" in proc.log_text()
    assert not trace.exists()
    proc = start_agent(agent_dir, "--enable-fault-injection", cli=True)
    run = call(launchers, "host-local", "ADD", conf, netns="/x", container_id="pct-fault2", env=fault)
    assert run.returncode == 1 and run.json["code"] == 11, run.stdout
    assert proc.proc.wait(30) == -signal.SIGKILL
    assert trace.read_text().split()[-2:] == ["killed", "address-allocated#1"]


def test_no_agent_means_in_process(agent_dir: Path, launchers: Path, netns: NetNS) -> None:
    sock = agent_dir / "agent.sock"
    run = call(launchers, "loopback", "ADD", LOOPBACK, netns=netns.path)  # no socket at all
    assert run.returncode == 0, run.stdout
    status = call(launchers, "loopback", "STATUS", status_conf())
    assert status.json["code"] == 50
    assert str(sock) in status.json["details"] and "No such file" in status.json["details"]
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))  # bound, never listening: connection refused
    stale.close()
    assert call(launchers, "loopback", "ADD", LOOPBACK, netns=netns.path).returncode == 0
    assert "refused" in call(launchers, "loopback", "STATUS", status_conf()).json["details"]


def test_require_agent_key_is_validated(launchers: Path) -> None:
    run = call(launchers, "loopback", "STATUS", status_conf(requireAgent="yes"))
    assert run.json["code"] == 7 and "requireAgent" in run.json["msg"]


NOBODY_CLIENT = """
import socket, sys
def frame(b): return len(b).to_bytes(4, "big") + b
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(sys.argv[1])
except OSError as exc:
    print("connect:", exc.strerror); sys.exit(0)
env = b"CNI_COMMAND=VERSION"
sock.sendall(b"pycni-agent-call/1\\n" + frame(b"loopback") + frame(env) + frame(b""))
data = b""
while chunk := sock.recv(65536):
    data += chunk
print("answer:", data[:1].decode(), data[9:].decode(errors="replace"))
"""


def _as_nobody(*argv: str) -> str:
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_non_root_cannot_use_the_agent(agent: AgentProcess, agent_dir: Path) -> None:
    os.chmod(agent_dir, 0o755)
    # The socket's mode keeps others out...
    assert "Permission denied" in _as_nobody("/usr/bin/python3", "-c", NOBODY_CLIENT, str(agent.socket))
    # ...and SO_PEERCRED does when the mode would let them in.
    os.chmod(agent.socket, 0o666)
    out = _as_nobody("/usr/bin/python3", "-c", NOBODY_CLIENT, str(agent.socket))
    assert out.startswith("answer: R"), out
    assert '"code": 5' in out and "only root may use the agent" in out and "uid 65534" in out
    assert "refused a call from uid 65534" in agent.log_text()


# -- bad requests ---------------------------------------------------------------------


def _raw(sock_path: Path, payload: bytes, shut: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(str(sock_path))
        sock.sendall(payload)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _error_of(answer: bytes) -> dict[str, Any]:
    assert answer[:1] == protocol.RESULT, answer
    code, stdout, _stderr = protocol.Reader(iter_recv(answer[1:])).result()
    assert code == 1
    doc: dict[str, Any] = json.loads(stdout)
    return doc


def iter_recv(data: bytes) -> Any:
    view = memoryview(data)
    pos = 0

    def recv(n: int) -> bytes:
        nonlocal pos
        chunk = bytes(view[pos : pos + n])
        pos += len(chunk)
        return chunk

    return recv


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"GET / HTTP/1.1\r\n\r\n", "not a pycni agent call"),
        (b"", "connection closed"),
        (protocol.MAGIC + b"\x00\x00", "connection closed"),
        (protocol.MAGIC + protocol.frame(b"loopback") + b"\xff\xff\xff\xff", "at most"),
        (protocol.MAGIC + protocol.frame(b"x" * 300), "at most 256"),
        (protocol.MAGIC + protocol.frame(b"loop\xffback") + protocol.frame(b"") + protocol.frame(b""), "codec"),
        (protocol.MAGIC + protocol.frame(b"loopback") + protocol.frame(b"NOEQUALS") + protocol.frame(b""), "KEY=VALUE"),
    ],
)
def test_malformed_request_gets_an_error_and_is_closed(agent: AgentProcess, payload: bytes, fragment: str) -> None:
    doc = _error_of(_raw(agent.socket, payload))
    assert doc["code"] == 6 and "not a well-formed call" in doc["msg"] and fragment in doc["msg"], doc


def test_unknown_plugin_type_over_the_socket(agent: AgentProcess) -> None:
    env = {b"CNI_COMMAND": b"ADD"}
    doc = _error_of(_raw(agent.socket, protocol.encode_call(b"nothere", env, b"{}")))
    assert doc["code"] == 7 and "nothere" in doc["msg"]


def test_silent_client_is_dropped(agent: AgentProcess, launchers: Path, netns: NetNS) -> None:
    """A connection that never sends a request does not hold the agent up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(agent.socket))
        run = call(launchers, "loopback", "ADD", LOOPBACK, netns=netns.path)
        assert run.returncode == 0
        assert served_by_agent(launchers)


# -- deadlines and ordering ---------------------------------------------------------


def sleep_conf(record: Path, seconds: float, name: str = "pctnet") -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": name, "type": "pct-sleep", "sleep": seconds, "record": str(record)}


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_hung_call_times_out_with_11(agent: AgentProcess, launchers: Path, agent_dir: Path) -> None:
    hang = fifo_netns(agent_dir)
    env = {"PYCNI_CALL_TIMEOUT": "1"}
    started = time.monotonic()
    run = call(launchers, "loopback", "ADD", LOOPBACK, netns=str(hang), env=env)
    assert run.json["code"] == 11 and "did not finish within 1s" in run.json["msg"], run.stdout
    assert "safe" in run.json["details"]
    assert time.monotonic() - started < 20
    # The hung call keeps its attachment: the runtime's DEL waits for it, and says so.
    delete = call(launchers, "loopback", "DEL", LOOPBACK, netns=str(hang), env=env)
    assert delete.json["code"] == 11 and "did not start" in delete.json["msg"], delete.stdout
    assert "nothing was done" in delete.json["details"]
    # Another attachment is not held up.
    other = call(launchers, "loopback", "VERSION", b"{}", env=env)
    assert other.returncode == 0
    fd = release_fifo(hang)
    try:
        delete = call(launchers, "loopback", "DEL", LOOPBACK, netns=str(hang), env=env)
        assert delete.returncode == 0, delete.stdout
    finally:
        os.close(fd)


def test_one_attachment_in_arrival_order_others_concurrently(agent: AgentProcess, launchers: Path, agent_dir: Path) -> None:
    record = agent_dir / "record.jsonl"
    results: dict[str, int] = {}

    def one(container: str, command: str, delay: float) -> None:
        time.sleep(delay)
        run = call(launchers, "pct-sleep", command, sleep_conf(record, 0.6), container_id=container, netns="/x")
        results[f"{container}-{command}-{delay}"] = run.returncode

    plan = [("pct-a", "ADD", 0.0), ("pct-a", "CHECK", 0.2), ("pct-a", "DEL", 0.4), ("pct-b", "ADD", 0.1), ("pct-c", "ADD", 0.1)]
    threads = [threading.Thread(target=one, args=item) for item in plan]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(code == 0 for code in results.values()), results
    lines = records(record)
    same = [(r["command"], r["phase"]) for r in lines if r["container"] == "pct-a"]
    assert same == [("ADD", "start"), ("ADD", "end"), ("CHECK", "start"), ("CHECK", "end"), ("DEL", "start"), ("DEL", "end")]
    first_end = next(r["at"] for r in lines if r["container"] == "pct-a" and r["phase"] == "end")
    others = [r["at"] for r in lines if r["container"] in ("pct-b", "pct-c") and r["phase"] == "start"]
    assert len(others) == 2 and all(at < first_end for at in others), "other attachments waited for pct-a"


def test_delegated_process_is_not_queued_behind_its_caller(agent: AgentProcess, launchers: Path, agent_dir: Path) -> None:
    """An IPAM executable that is not one of our launchers (here a wrapper script) runs as
    a process; when that process hands its call to the agent, the call it belongs to
    holds the attachment already: it must not wait for it (a deadlock until the deadline)."""
    wrapped = agent_dir / "wrapped"
    wrapped.mkdir()
    (wrapped / "pct-sleep").write_text(f"#!/bin/sh\nexec {launchers / 'pct-sleep'}\n")
    (wrapped / "pct-sleep").chmod(0o755)
    (wrapped / "pct-deleg").write_text((launchers / "pct-deleg").read_text())
    (wrapped / "pct-deleg").chmod(0o755)
    conf = {"cniVersion": "1.0.0", "name": "pctnet", "type": "pct-deleg", "ipam": {"type": "pct-sleep"}}
    env = {"PYCNI_CALL_TIMEOUT": "20"}
    run = call(wrapped, "pct-deleg", "ADD", conf, netns="/x", env=env)
    assert run.returncode == 0, run.stdout
    assert run.json["ips"][0]["address"] == "10.99.0.2/24"
    assert call(wrapped, "pct-deleg", "DEL", conf, netns="/x", env=env).returncode == 0
    assert agent.log_text().count("pct-sleep ADD") == 1, "the delegated call did not go through the agent"


# -- the agent going away -------------------------------------------------------------


def _in_background(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(run=fn()))
    thread.start()
    return thread, box


def _wait_for(text: str, agent: AgentProcess, path: Path | None = None) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path is not None and path.exists() and text in path.read_text():
            return
        if path is None and text in agent.log_text():
            return
        time.sleep(0.02)
    pytest.fail(f"never saw {text!r}")


def test_agent_killed_during_add_gives_11(agent: AgentProcess, launchers: Path, agent_dir: Path) -> None:
    record = agent_dir / "record.jsonl"
    thread, box = _in_background(lambda: call(launchers, "pct-sleep", "ADD", sleep_conf(record, 30), netns="/x"))
    _wait_for('"start"', agent, record)
    agent.kill()
    thread.join(30)
    run = box["run"]
    assert run.returncode == 1 and run.json["code"] == 11, run.stdout
    assert "stopped answering" in run.json["msg"] and "safe to repeat" in run.json["details"]


def test_agent_killed_during_del_is_repeated(agent: AgentProcess, launchers: Path, agent_dir: Path) -> None:
    hang = fifo_netns(agent_dir)
    thread, box = _in_background(lambda: call(launchers, "loopback", "DEL", LOOPBACK, netns=str(hang)))
    _wait_for("agent", agent)  # listening; the DEL is now blocked opening the FIFO
    time.sleep(0.5)
    agent.kill()
    fd = release_fifo(hang)  # the repeated DEL (in-process: the agent is gone) can open it
    try:
        thread.join(30)
    finally:
        os.close(fd)
    run = box["run"]
    assert run.returncode == 0, run.stdout
    assert answers(agent.socket) is False


def test_restart_never_fails_a_call(agent_dir: Path, launchers: Path, netns: NetNS) -> None:
    """Calls keep coming while the agent is stopped and started twice, then killed.
    A stop or a start fails none of them; the kill may fail only an ADD it had taken,
    with code 11 (it is safe to repeat)."""
    stop = threading.Event()
    killing = threading.Event()
    failures: list[str] = []
    in_flight_at_kill: list[dict[str, Any]] = []
    count = [0]

    def hammer() -> None:
        while not stop.is_set():
            during_kill = killing.is_set()
            run = call(launchers, "loopback", "ADD", LOOPBACK, netns=netns.path)
            count[0] += 1
            if run.returncode == 0:
                continue
            if (during_kill or killing.is_set()) and run.json.get("code") == 11 and "stopped answering" in run.json["msg"]:
                in_flight_at_kill.append(run.json)
            else:
                failures.append(run.stdout + run.stderr)

    workers = [threading.Thread(target=hammer) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        for _ in range(2):
            proc = start_agent(agent_dir)
            time.sleep(0.5)
            assert proc.stop() == 0
            time.sleep(0.3)
        proc = start_agent(agent_dir)
        time.sleep(0.3)
        killing.set()
        proc.kill()  # a crash leaves a stale socket behind: connection refused, in-process
        time.sleep(0.5)
        killing.clear()
        time.sleep(0.3)
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    assert not failures, failures[:3]
    assert len(in_flight_at_kill) <= 3  # at most one call per worker was in the agent
    assert count[0] > 10


def test_graceful_stop_finishes_calls_taken(agent: AgentProcess, launchers: Path, agent_dir: Path) -> None:
    record = agent_dir / "record.jsonl"
    thread, box = _in_background(lambda: call(launchers, "pct-sleep", "ADD", sleep_conf(record, 1.0), netns="/x"))
    _wait_for('"start"', agent, record)
    agent.proc.send_signal(15)
    time.sleep(0.2)
    assert not agent.socket.exists(), "a stopping agent takes no new calls"
    thread.join(30)
    assert box["run"].returncode == 0 and box["run"].json["ips"][0]["address"] == "10.99.0.2/24"
    assert agent.proc.wait(30) == 0


def test_caller_in_another_netns_is_declined(agent: AgentProcess, launchers: Path, netns: NetNS) -> None:
    """The agent's host namespace is not the caller's: the call runs in-process, where it was sent from."""
    env = {**os.environ, "PYCNI_LOG_FILE": str(launchers.parent / "plugins.log")}
    proc = subprocess.run(
        ["ip", "netns", "exec", netns.name, str(launchers / "loopback")],
        input=json.dumps(status_conf()).encode(),
        capture_output=True,
        env={**env, "CNI_COMMAND": "STATUS", "CNI_PATH": str(launchers)},
        timeout=60,
        check=False,
    )
    doc = json.loads(proc.stdout)
    assert doc["code"] == 50 and "another network namespace" in doc["details"], doc


# -- logs -----------------------------------------------------------------------------


def test_agent_owns_the_log_and_rotates_it(agent_dir: Path, launchers: Path) -> None:
    proc = start_agent(agent_dir, "--log-max-bytes", "2000", "--log-backups", "2", cli=True)
    try:
        for _ in range(40):
            assert call(launchers, "loopback", "VERSION", b"{}").returncode == 0
            assert call(launchers, "loopback", "DEL", LOOPBACK, netns="/run/netns/pct-missing").returncode == 0
    finally:
        assert proc.stop() == 0
    logs = sorted(p.name for p in agent_dir.glob("agent.log*"))
    assert logs == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all((agent_dir / name).stat().st_size <= 2000 for name in logs)
    assert not (agent_dir / "plugins.log").exists(), "with the agent, the launchers' own log file is not written"


def test_unexpected_error_names_the_log_that_has_the_traceback(agent: AgentProcess, launchers: Path) -> None:
    conf = {"cniVersion": "1.0.0", "name": "pctnet", "type": "pct-sleep", "crash": True}
    run = call(launchers, "pct-sleep", "ADD", conf, netns="/x")
    doc = run.json
    assert doc["code"] == 999 and "ZeroDivisionError: pct-sleep was told to crash" in doc["msg"]
    assert doc["details"] == f"the traceback is in the plugin log ({agent.log})"
    assert "Traceback" in agent.log_text() and "told to crash" in agent.log_text()
