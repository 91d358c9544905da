"""Crash safety, the short version: every fault point of ADD and of DEL of four chains, once each.

For each point the process that reaches it is SIGKILLed (a plugin process, or the agent
serving the call: the modes take turns), the runtime does what it does after a failed
call (DEL, from the configuration, container ID and interface name alone, in-process or
through the restarted agent) and the host must hold nothing of the attachment
(`lab.crash_case`). The long randomized version is `make stress` (tests/faults/stress.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from . import lab as L

# (the injected call goes to the agent, the cleanup DEL goes to the agent), in turn
MODES = [(False, False), (True, True), (False, True), (True, False)]
CHAINS: dict[str, Callable[[L.Lab, Path], L.Chain]] = {
    "bridge+host-local+portmap+bandwidth+tuning+firewall": L.bridge_chain,
    "ptp+host-local": functools.partial(L.ptp_chain, dual=False),
    "macvlan+host-local": functools.partial(L.macvlan_chain, dual=False),
    "calico+calico-ipam+portmap+bandwidth": L.calico_chain,
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_nothing_is_left_after_a_kill_at_any_point(name: str, lab: L.Lab) -> None:
    chain = CHAINS[name](lab, lab.root)
    try:
        with L.resident(lab, chain):
            cases = []
            for command in ("ADD", "DEL"):
                points = L.points(lab, chain, command)
                assert points, f"{command} of {name} passes no fault point"
                for i, point in enumerate(points):
                    agent, del_via_agent = MODES[i % len(MODES)]
                    cases.append(L.crash_case(lab, chain, point, command, agent, del_via_agent))
    finally:
        chain.close()
    adds = sum(case.command == "ADD" for case in cases)
    agent_kills = sum(case.agent_killed for case in cases)
    print(f"{name}: {len(cases)} cases ({adds} ADD, {len(cases) - adds} DEL), {agent_kills} of them killed the agent")
    problems = [f"{case.describe()}: {'; '.join(case.problems)}" for case in cases if case.problems]
    assert not problems, "\n".join(problems)
    assert all(case.killed for case in cases), [case.describe() for case in cases if not case.killed]
    assert all(case.agent_killed for case in cases if case.agent), "a fault point in the agent did not kill it"
    add_errors = {case.error.split(":")[0] for case in cases if case.command == "ADD"}
    assert add_errors <= {"code 999", "code 11"}  # a killed plugin process, a lost agent call
