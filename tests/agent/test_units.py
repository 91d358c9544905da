"""The agent's pure parts: the wire format and the per-attachment lines."""

from __future__ import annotations

import threading

import pytest

from pycni.agent import protocol
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
