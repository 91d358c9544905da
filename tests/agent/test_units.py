"""The agent's pure parts: the wire format and the per-attachment lines."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path

import pytest

import pycni
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


def _fake_agent(path: Path, answer_hello: bool, connections: int) -> tuple[list[socket.socket], list[bytes], threading.Thread]:
    """A listener on `path` that takes `connections` connections, answers HELLO with this
    pycni's version (or not at all), then stays silent; it records what each sent. The
    listener and the connections are returned open, for the test to close."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    received: list[bytes] = []
    held: list[socket.socket] = []

    def serve() -> None:
        for _ in range(connections):
            conn = listener.accept()[0]
            held.append(conn)
            conn.settimeout(1.0)
            data = b""
            with contextlib.suppress(OSError):
                data = conn.recv(len(protocol.HELLO))
                if answer_hello:
                    conn.sendall(protocol.encode_version(pycni.__version__))
                    data += conn.recv(65536)
            received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    held.append(listener)
    return held, received, thread


def test_silent_agent_is_a_lost_call_never_run_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent that takes the call and never answers may have run it: ADD fails with 11
    rather than running in-process too; DEL is tried again."""
    monkeypatch.setattr(client, "ACCEPT_TIMEOUT", 0.3)
    held, received, thread = _fake_agent(tmp_path / "silent.sock", answer_hello=True, connections=3)
    env = {b"CNI_COMMAND": b"ADD", b"CNI_CONTAINERID": b"c1", b"CNI_IFNAME": b"eth0"}
    answer = client.call_agent(str(tmp_path / "silent.sock").encode(), "loopback", env, b'{"cniVersion": "1.0.0"}')
    assert isinstance(answer, tuple)
    doc = json.loads(answer[1])
    assert answer[0] == 1 and doc["code"] == 11 and "no answer within 0.3s" in doc["msg"]
    answer = client.call_agent(str(tmp_path / "silent.sock").encode(), "loopback", {**env, b"CNI_COMMAND": b"DEL"}, b"{}")
    assert isinstance(answer, tuple) and json.loads(answer[1])["code"] == 11
    thread.join(10)
    assert len(received) == 3, "DEL was tried twice"
    assert all(protocol.MAGIC in data for data in received)
    for sock in held:
        sock.close()


def test_a_stranger_on_the_socket_never_gets_the_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What does not answer HELLO with a version is not an agent: the call is not sent, so
    running it in-process is safe (and worth a line in the log)."""
    monkeypatch.setattr(client, "HELLO_TIMEOUT", 0.3)
    held, received, thread = _fake_agent(tmp_path / "stranger.sock", answer_hello=False, connections=1)
    env = {b"CNI_COMMAND": b"ADD", b"CNI_CONTAINERID": b"c1", b"CNI_IFNAME": b"eth0"}
    answer = client.call_agent(str(tmp_path / "stranger.sock").encode(), "loopback", env, b'{"cniVersion": "1.0.0"}')
    assert isinstance(answer, client.Missed) and answer.notable and not answer.absent
    assert "is not a pycni agent: no answer to the version handshake within 0.3s" in answer.reason
    thread.join(10)
    assert received == [protocol.HELLO]
    for sock in held:
        sock.close()


def test_hello_and_call_openings() -> None:
    reader = _reader(protocol.HELLO + protocol.encode_call(b"loopback", {}, b"{}"))
    assert reader.opening() == protocol.HELLO
    assert reader.call() == (b"loopback", {}, b"{}")
    with pytest.raises(protocol.ProtocolError, match="second HELLO"):
        _reader(protocol.HELLO + protocol.HELLO).call(opened=False)
    with pytest.raises(protocol.ProtocolError, match="not a pycni agent call"):
        _reader(b"pycni-agent-hellO").opening()
