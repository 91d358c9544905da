"""The agent's pure parts: the wire format and the per-attachment lines."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from pycni.agent import client, protocol
from pycni.agent.ordering import AttachmentLines
from pycni.agent.server import attachment_key


def _reader(data: bytes) -> protocol.Reader:
    """A reader over `data` that gives at most 3 bytes a read, as a socket may."""
    pos = 0

    def recv(n: int) -> bytes:
        nonlocal pos
        chunk = data[pos : pos + min(n, 3)]
        pos += len(chunk)
        return chunk

    return protocol.Reader(recv)


def test_call_round_trip() -> None:
    env = {b"CNI_COMMAND": b"ADD", b"CNI_ARGS": b"A=1;B=x=y", b"EMPTY": b"", b"RAW": b"\xff\xfe"}
    wire = protocol.encode_call(b"host-local", env, b'{"cniVersion":"1.0.0"}')
    assert _reader(wire).call() == (b"host-local", env, b'{"cniVersion":"1.0.0"}')


def test_result_round_trip() -> None:
    wire = protocol.encode_result(1, b"out", b"")
    reader = _reader(wire)
    assert reader.status() == protocol.RESULT and reader.result() == (1, b"out", b"")
    accepted = _reader(protocol.encode_accepted(120.0))
    assert accepted.status() == protocol.ACCEPTED and accepted.uint() == 121


@pytest.mark.parametrize(
    "wire, fragment",
    [
        (b"POST", "not a pycni agent call"),
        (protocol.MAGIC[:5], "connection closed after 5 bytes"),
        (protocol.MAGIC + protocol.frame(b"x") + protocol.frame(b"=v"), "not KEY=VALUE"),
        (protocol.MAGIC + protocol.frame(b"x") + protocol.frame(b"\0".join([b"K=v"] * 5000)), "at most 4096"),
    ],
)
def test_malformed_calls(wire: bytes, fragment: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=fragment):
        _reader(wire).call()


def test_attachment_key() -> None:
    conf = b'{"name": "net1"}'
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}
    assert attachment_key(env, conf) == ("net1", "c1", "eth0")
    assert attachment_key({**env, "CNI_COMMAND": "GC"}, conf) is None
    assert attachment_key({**env, "PYCNI_DELEGATED_CALL": "1"}, conf) is None
    assert attachment_key(env, b"[") is None


def test_lines_are_fifo_per_key() -> None:
    lines = AttachmentLines()
    first, second, third = lines.join("a"), lines.join("a"), lines.join("a")
    other = lines.join("b")
    assert first.wait_turn(0) and other.wait_turn(0)
    assert not second.wait_turn(0) and not third.wait_turn(0)
    second.give_up()  # timed out while waiting: leaves the line, does not run
    assert not second.wait_turn(0)
    first.leave()
    assert third.wait_turn(0), "the next in line gets its turn"
    third.leave()
    other.leave()
    assert lines.waiting() == 0


def test_turn_is_handed_over_across_threads() -> None:
    lines = AttachmentLines()
    order: list[int] = []
    tickets = [lines.join("k") for _ in range(5)]

    def run(i: int) -> None:
        tickets[i].wait_turn()
        order.append(i)
        tickets[i].leave()

    threads = [threading.Thread(target=run, args=(i,)) for i in reversed(range(5))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2, 3, 4]


def test_silent_agent_is_a_lost_call_never_run_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent that takes the connection and never answers may have taken the call:
    ADD fails with 11 rather than running in-process too; DEL is tried again."""
    monkeypatch.setattr(client, "ACCEPT_TIMEOUT", 0.3)
    path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: [held.append(listener.accept()[0]) for _ in range(3)], daemon=True)
    accepting.start()
    env = {b"CNI_COMMAND": b"ADD", b"CNI_CONTAINERID": b"c1", b"CNI_IFNAME": b"eth0"}
    code, stdout, _ = client.call_agent(str(path).encode(), "loopback", env, b'{"cniVersion": "1.0.0"}')
    doc = json.loads(stdout)
    assert code == 1 and doc["code"] == 11 and "no answer within 0.3s" in doc["msg"]
    code, stdout, _ = client.call_agent(str(path).encode(), "loopback", {**env, b"CNI_COMMAND": b"DEL"}, b"{}")
    assert json.loads(stdout)["code"] == 11
    accepting.join(5)
    assert len(held) == 3, "DEL was tried twice"
    for sock in held:
        sock.close()
    listener.close()
