"""host-local's index in the agent (`hostlocal.index`): calls served by the agent find an
attachment's addresses without reading the store's files, and the index stays right when
another process (Go's host-local, our plugin as a process) changes the store behind it."""

from __future__ import annotations

import contextvars
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pycni import skel

from ...conftest import REFERENCE_DIR, unique_subnet
from .test_host_local import conf, files

AGENT = skel.CallMode(via_agent=True)


def agent_call(command: str, config: dict[str, Any], container: str, ifname: str = "eth0") -> Any:
    """Our host-local as the agent runs it (indexed); the parsed stdout, or None."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/x", "CNI_IFNAME": ifname, "CNI_PATH": "/x"}
    out = skel.dispatch("host-local", env, json.dumps(config).encode(), AGENT)
    return json.loads(out.stdout) if out.stdout else None


def process_call(executable: str, command: str, config: dict[str, Any], container: str) -> Any:
    """A host-local process (Go's, or ours without the agent) on the same store."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    env["PYCNI_AGENT"] = "off"
    proc = subprocess.run([executable], input=json.dumps(config).encode(), capture_output=True, env=env, check=False)
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def address(result: Any) -> str:
    return str(result["ips"][0]["address"].split("/")[0])


def held(store: Path) -> dict[str, bytes]:
    return {name: data for name, data in files(store).items() if name[0].isdigit()}


@pytest.mark.reference
@pytest.mark.parametrize("other", ["go", "ours"])
def test_index_follows_changes_made_behind_the_agents_back(tmp_path: Path, plugin_dir: Path, other: str) -> None:
    """Each step by another process right after one of the agent's (within a timestamp tick
    of the directory's mtime): the agent's duplicate check and DEL see it."""
    executable = os.path.join(REFERENCE_DIR, "host-local") if other == "go" else str(plugin_dir / "host-local")
    config = conf(tmp_path, subnet=unique_subnet())
    store = tmp_path / "pctnet"
    for round_ in range(5):
        mine, theirs = f"mine{round_}", f"theirs{round_}"
        assert agent_call("ADD", config, mine)["ips"]
        got = process_call(executable, "ADD", config, theirs)  # right behind the agent's ADD
        assert got and "ips" in got, got
        # The agent knows `theirs` holds an address: a second ADD is a duplicate.
        dup = agent_call("ADD", config, theirs)
        assert "duplicate allocation" in dup["msg"], dup
        # The other process releases the agent's attachment; the agent can ADD it again.
        process_call(executable, "DEL", config, mine)
        again = agent_call("ADD", config, mine)
        assert "ips" in again, again
        # The agent releases what the other process took, and DEL is idempotent.
        assert agent_call("DEL", config, theirs) is None
        assert agent_call("DEL", config, theirs) is None
        assert agent_call("DEL", config, mine) is None
        assert held(store) == {}, f"round {round_}: {held(store)}"


def test_index_is_right_under_concurrent_agent_calls(tmp_path: Path) -> None:
    """40 ADDs on 8 threads (the agent serves calls concurrently), then 40 DELs: distinct
    addresses, each file naming its holder, nothing left."""
    config = conf(tmp_path, subnet=unique_subnet())
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda i: (f"c{i}", address(agent_call("ADD", config, f"c{i}"))), range(40)))
    assert len({ip for _, ip in got}) == 40
    store = held(tmp_path / "pctnet")
    assert {ip: data.decode() for ip, data in store.items()} == {ip: f"{c}\r\neth0" for c, ip in got}
    for container, _ in got[:5]:
        assert "duplicate" in agent_call("ADD", config, container)["msg"]  # each is known to the index
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: agent_call("DEL", config, f"c{i}"), range(40)))
    assert held(tmp_path / "pctnet") == {}


def test_a_file_removed_by_hand_is_noticed(tmp_path: Path) -> None:
    config = conf(tmp_path, subnet=unique_subnet())
    ip = address(agent_call("ADD", config, "a"))
    os.remove(tmp_path / "pctnet" / ip)  # an operator cleaning up
    assert "ips" in agent_call("ADD", config, "a")  # no longer a duplicate


_counting: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("counting", default=None)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    opened = _counting.get()
    if opened is not None and event == "open" and isinstance(args[0], str):
        opened.append(args[0])


sys.addaudithook(_audit)  # inert outside `files_opened` (a hook cannot be removed)


def files_opened(config: dict[str, Any], commands: list[tuple[str, str]]) -> list[str]:
    opened: list[str] = []
    token = _counting.set(opened)
    try:
        for command, container in commands:
            agent_call(command, config, container)
    finally:
        _counting.reset(token)
    return [path for path in opened if os.path.dirname(path) == str(Path(config["ipam"]["dataDir"]) / "pctnet")]


@pytest.mark.parametrize("others", [10, 200])
def test_files_read_per_call_do_not_grow_with_the_store(tmp_path: Path, others: int) -> None:
    """ADD and DEL in the agent open the same few files whether the store holds 10 or 200
    addresses (counted, not timed): the lock, the last reserved address, the new address's."""
    config = conf(tmp_path, subnet=unique_subnet())
    for i in range(others):  # every holder ID of one length: the store's sizes tell nothing
        assert "ips" in agent_call("ADD", config, f"bg{i:04d}")
    agent_call("DEL", config, "bg0000")  # the index is current
    opened = files_opened(config, [("ADD", "fg0001"), ("DEL", "fg0001"), ("ADD", "fg0002"), ("DEL", "fg0002")])
    reads = [p for p in opened if os.path.basename(p)[0].isdigit()]
    assert reads == [], reads  # no address file is read: the index knows the holders
    assert len(opened) <= 16, opened
