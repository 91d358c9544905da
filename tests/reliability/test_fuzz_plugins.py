"""Fuzzed input for every plugin, in-process (`pycni.skel.dispatch`): configuration,
environment, CNI_ARGS and prevResult.

Every input gets a result or a well-formed error (never a traceback, never code 999),
and a rejected input changes nothing: the links, addresses, routes and qdiscs of the
stand-in host and of the container namespace, the host's nftables ruleset, the data
directories, records and the calico datastore are the same before and after. An ADD
that is accepted must be undone by a DEL of the same input (a runtime repeats DEL
with what it gave ADD). CHECK and STATUS never change anything, whatever they answer.

The number of inputs per plugin is `FUZZ_EXAMPLES` (the `make test` default) times
PYCNI_FUZZ_SCALE (`make fuzz` sets it).
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from . import inputs, snapshot
from .conftest import fuzz_settings
from .world import FUZZ_IFNAME, IPAM, META, World, dispatch_checked, plugin_types

FUZZ_EXAMPLES = 20
READ_ONLY = ("CHECK", "STATUS", "VERSION", "")


def _host_bridges() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show", "type", "bridge"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(out.stdout or "[]")}


class Run:
    """One plugin's fuzz run: the baseline snapshot, re-taken after each accepted change."""

    def __init__(self, world: World, plugin_type: str) -> None:
        self.world = world
        self.plugin_type = plugin_type
        self.watched = world.watched()
        self.baseline = self.watched.snapshot()
        self.counts: dict[str, int] = {}

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def unchanged(self, what: str) -> None:
        after = self.watched.snapshot()
        changed = snapshot.differences(self.baseline, after)
        self.baseline = after  # one finding at a time
        assert not changed, f"{what} changed the host: " + "\n".join(changed)

    def rebaseline(self) -> None:
        self.baseline = self.watched.snapshot()

    def undo_add(self, env: dict[str, str], stdin: bytes) -> None:
        """DEL with what ADD was given; then whatever a DEL may legitimately leave (the container
        interface of a plugin without DEL state, e.g. loopback's lo going down) is the new baseline."""
        out = dispatch_checked(self.plugin_type, {**env, "CNI_COMMAND": "DEL"}, stdin)
        assert out.code == 0, f"ADD was accepted but DEL of the same input fails: {out.stdout!r}"
        # A second DEL must succeed too (DEL is idempotent).
        again = dispatch_checked(self.plugin_type, {**env, "CNI_COMMAND": "DEL"}, stdin)
        assert again.code == 0, f"a repeated DEL fails: {again.stdout!r}"
        leftover = self.world.ns.run("ip", "link", "show", FUZZ_IFNAME, check=False)
        assert leftover.returncode != 0, f"DEL left {FUZZ_IFNAME} in the container"
        self.rebaseline()


def _conf_strategy(world: World, plugin_type: str) -> st.SearchStrategy[dict[str, Any]]:
    base = world.plugin_conf(plugin_type)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        conf = dict(base, cniVersion=draw(st.sampled_from(["1.1.0", "1.1.0", "1.0.0", "0.4.0", "0.3.1", "0.2.0", "0.1.0"])))
        conf = draw(inputs.mutate(conf, str(world.root)))
        # Now and then a prevResult of another shape (the meta plugins get the world's otherwise).
        if isinstance(conf, dict) and draw(st.integers(0, 2 if plugin_type in META else 3)) == 0:
            conf["prevResult"] = copy.deepcopy(draw(inputs.prev_result_strategy(world.prev)))
        return conf

    return build()


@pytest.mark.parametrize("plugin_type", plugin_types())
def test_fuzzed_input(fuzz_world: World, plugin_type: str) -> None:
    world = fuzz_world
    run = Run(world, plugin_type)
    bridges = _host_bridges()
    stdin_strategy = inputs.stdin_for(_conf_strategy(world, plugin_type))
    env_base = world.env(plugin_type)
    args = inputs.cni_args(world.args_values())

    @fuzz_settings(FUZZ_EXAMPLES)
    @given(data=st.data())
    def one_input(data: st.DataObject) -> None:
        env = data.draw(inputs.environment(env_base, args), label="env")
        if plugin_type not in META and env.get("CNI_CONTAINERID") == env_base["CNI_CONTAINERID"]:
            env["CNI_CONTAINERID"] = world.env(plugin_type)["CNI_CONTAINERID"]  # a new container each time
        stdin = data.draw(stdin_strategy, label="stdin")
        command = env.get("CNI_COMMAND", "")
        out = dispatch_checked(plugin_type, env, stdin)
        shown = command if command in inputs.COMMANDS else ("(none)" if command == "" else "(garbage)")
        run.count(f"{shown} {'ok' if out.code == 0 else 'refused'}")
        if out.code != 0:
            run.unchanged(f"a refused {command}")
        elif command in READ_ONLY:
            run.unchanged(f"a successful {command}")
        elif command == "ADD":
            run.undo_add(env, stdin)
        else:
            run.rebaseline()

    try:
        one_input()
    finally:
        for bridge in _host_bridges() - bridges:
            subprocess.run(["ip", "link", "del", bridge], check=False)  # bridges stay after DEL by design
    print(f"{plugin_type}: {sum(run.counts.values())} inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items())))


def test_every_plugin_is_fuzzed() -> None:
    """A plugin added later gets a working configuration in the world, or this fails."""
    shipped = set(plugin_types())
    assert set(META) | set(IPAM) <= shipped


def test_world_configurations_work(fuzz_world: World, tmp_path: Path) -> None:
    """The starting points are accepted (where the kernel has the link type), so the fuzzer
    explores past the first check."""
    from .world import check_answer

    kernel_lacks = {"ipvlan", "vlan", "dummy"}
    for plugin_type in plugin_types():
        env = dict(fuzz_world.env(plugin_type), CNI_COMMAND="ADD")
        stdin = inputs.encode(fuzz_world.plugin_conf(plugin_type))
        out = dispatch_checked(plugin_type, env, stdin)
        if plugin_type in kernel_lacks:
            doc = check_answer("ADD", out.code, out.stdout, out.stderr)
            assert doc is not None and doc["code"] == 101, doc
            continue
        assert out.code == 0, (plugin_type, out.stdout)
        out = dispatch_checked(plugin_type, dict(env, CNI_COMMAND="DEL"), stdin)
        assert out.code == 0, (plugin_type, out.stdout)
