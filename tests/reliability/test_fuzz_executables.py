"""Fuzzed input through the real plugin executables (the launchers `pycni plugins install`
writes), as a runtime runs them: environment variables with undecodable bytes, stdin
that is not JSON, every plugin. Fewer inputs than in-process (each is a process start),
the same property: a result or a well-formed error on stdout with exit code 1, nothing
else on stdout, no traceback on stderr, and a refused input changes nothing.
"""

from __future__ import annotations

import subprocess

from hypothesis import given
from hypothesis import strategies as st

from . import inputs
from .conftest import fuzz_settings
from .test_fuzz_plugins import READ_ONLY, Run, _conf_strategy
from .world import World, check_answer, plugin_types

FUZZ_EXAMPLES = 40


def test_fuzzed_executables(fuzz_world: World) -> None:
    world = fuzz_world
    counts: dict[str, int] = {}

    @fuzz_settings(FUZZ_EXAMPLES)
    @given(data=st.data())
    def one_call(data: st.DataObject) -> None:
        plugin_type = data.draw(st.sampled_from(plugin_types()), label="plugin")
        base = world.env(plugin_type)
        env = data.draw(inputs.environment(base, inputs.cni_args(world.args_values())), label="env")
        # execve cannot carry a NUL (or a name with "=") in the environment: no runtime can send
        # one; in-process fuzzing covers them.
        env = {k: v.replace("\x00", "") for k, v in env.items() if k and "=" not in k and "\x00" not in k}
        if data.draw(st.booleans(), label="undecodable bytes"):
            var = data.draw(st.sampled_from(["CNI_IFNAME", "CNI_CONTAINERID", "CNI_ARGS", "CNI_NETNS"]))
            env[var] = env.get(var, "") + "\udcff\udc80"  # bytes 0xff 0x80 in the real environment
        stdin = data.draw(inputs.stdin_for(_conf_strategy(world, plugin_type)), label="stdin")
        command = env.get("CNI_COMMAND", "")
        run = Run(world, plugin_type)  # the baseline
        proc = subprocess.run([str(world.plugin_dir / plugin_type)], input=stdin, env=env, capture_output=True, timeout=120)
        error = check_answer(command, proc.returncode, proc.stdout, proc.stderr)
        key = f"{plugin_type} {'refused' if error else 'ok'}"
        counts[key] = counts.get(key, 0) + 1
        if error is not None or command in READ_ONLY:
            run.unchanged(f"{plugin_type}: a {'refused' if error else 'successful'} {command}")
        elif command == "ADD":
            run.undo_add({k: v for k, v in env.items() if k != "CNI_COMMAND"}, stdin)

    one_call()
    print(f"executables: {sum(counts.values())} calls: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
