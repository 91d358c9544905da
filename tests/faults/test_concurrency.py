"""Concurrency: 64 containers operated on at once, through the runtime (plugin processes) and
through the agent, with a mix of ADD, CHECK and DEL.

Each of the 64 containers has its own thread and a plan of one to four operations run in
sequence (ADD first; after ADD or CHECK comes CHECK or DEL, after DEL comes ADD): the runtime
never runs two operations for one attachment at once (the spec's rule), but every
container's operations interleave with the others', and all 64 threads start together.
What must hold:

- every call ends (each is bounded by the runtime's timeout, the whole by a deadline) and
  succeeds: nothing is refused under contention;
- no address is given twice: the interval in which one container certainly held an address
  (from the end of its ADD to the start of its DEL) never overlaps another's for it;
- the final state is the expected one: the containers whose last operation was ADD are
  there (their addresses in host-local's store and in their namespaces), and once they
  are deleted (concurrently too) the host is exactly as it was before:
  nothing of any container that came and went is left.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pycni.spec.errors import CNIError

from . import hoststate
from . import lab as L

CONTAINERS = 64
DEADLINE = 240.0


@dataclass
class Held:
    """An address one container certainly held from `start` to `end` (monotonic seconds)."""

    address: str
    container: str
    start: float
    end: float = float("inf")


@dataclass
class Worker:
    att: L.Attachment
    plan: list[str]
    done: list[str] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)  # of the last successful ADD


def make_plan(rng: random.Random) -> list[str]:
    plan = ["ADD"]
    for _ in range(rng.randrange(4)):
        plan.append("ADD" if plan[-1] == "DEL" else rng.choice(["CHECK", "DEL"]))
    return plan


def run_worker(lab: L.Lab, worker: Worker, agent: bool, start: threading.Barrier) -> None:
    runtime = lab.runtime(lab.env(worker.att.chain, agent))
    net, rt = worker.att.net(), worker.att.rt()
    start.wait()
    for op in worker.plan:
        try:
            if op == "ADD":
                result = runtime.add_network_list(net, rt)
                worker.addresses = [str(ip.address.ip) for ip in result.ips]
                now = time.monotonic()
                worker.held += [Held(a, worker.att.container_id, now) for a in worker.addresses]
            elif op == "CHECK":
                runtime.check_network_list(net, rt)
            else:
                now = time.monotonic()
                for held in worker.held:
                    held.end = min(held.end, now)
                runtime.del_network_list(net, rt)
                worker.addresses = []
            worker.done.append(op)
        except CNIError as err:
            worker.errors.append(f"{op} of {worker.att.container_id} (after {worker.done}): code {err.code}: {err.msg}")
            return


def given_twice(workers: list[Worker]) -> list[str]:
    by_address: dict[str, list[Held]] = {}
    for worker in workers:
        for held in worker.held:
            by_address.setdefault(held.address, []).append(held)
    clashes = []
    for address, holds in by_address.items():
        holds.sort(key=lambda h: h.start)
        for first, second in itertools.pairwise(holds):
            if second.start < first.end:
                clashes.append(f"{address} held by {first.container} and {second.container} at once")
    return clashes


@pytest.mark.parametrize("agent", [False, True], ids=["runtime", "agent"])
def test_64_concurrent_mixed_calls(agent: bool, lab: L.Lab) -> None:
    rng = random.Random()
    chain = L.bridge_chain(lab, lab.root, meta=("portmap", "firewall"))
    try:
        with L.resident(lab, chain) as kept:
            if agent:
                lab.agent.ensure()
            workers = [Worker(chain.new_attachment(), make_plan(rng)) for _ in range(CONTAINERS)]
            try:
                places = L.places_of(kept)
                places.namespaces += [w.att.ns.path for w in workers]
                before = hoststate.take(places)
                storm(lab, workers, agent)
                errors = [e for w in workers for e in w.errors]
                assert not errors, "\n".join(errors)
                assert not given_twice(workers)
                present = [w for w in workers if w.done[-1] != "DEL"]
                calls = Counter(op for w in workers for op in w.done)
                print(f"{CONTAINERS} containers, {sum(calls.values())} calls {dict(calls)}, {len(present)} left attached")
                check_present(chain, present)
                for worker in present:  # and away with them all
                    worker.plan, worker.done = ["DEL"], []
                storm(lab, present, agent)
                errors = [e for w in present for e in w.errors]
                assert not errors, "\n".join(errors)
                assert hoststate.difference(before, hoststate.take(places)) == []
            finally:
                for worker in workers:
                    chain.discard(worker.att)
    finally:
        chain.close()


def storm(lab: L.Lab, workers: list[Worker], agent: bool) -> None:
    """Every worker's plan, all at once; every call must end before the deadline."""
    start = threading.Barrier(len(workers))
    with ThreadPoolExecutor(len(workers)) as pool:
        futures = [pool.submit(run_worker, lab, w, agent, start) for w in workers]
        deadline = time.monotonic() + DEADLINE
        for future in futures:
            future.result(timeout=max(1.0, deadline - time.monotonic()))


def check_present(chain: L.Chain, present: list[Worker]) -> None:
    """The containers whose last operation was ADD hold their addresses; no other holds any."""
    ipam = chain.conf["plugins"][0]["ipam"]
    store = Path(ipam["dataDir"]) / chain.network
    held = {p.name: p.read_bytes().decode().split("\r\n")[0] for p in store.iterdir() if _is_address(p.name)}
    expected = {a: w.att.container_id for w in present for a in w.addresses}
    resident = {a: c for a, c in held.items() if a not in expected}
    assert len(resident) == 2  # the resident container's IPv4 and IPv6 addresses
    assert {a: c for a, c in held.items() if a in expected} == expected
    for worker in present:
        inside = {a["local"] for link in worker.att.ns.ip_json("addr", "show", "eth0") for a in link["addr_info"]}
        assert set(worker.addresses) <= inside


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
