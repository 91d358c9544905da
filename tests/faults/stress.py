"""`make stress`: the long, randomized crash test.

    scripts/in-netns.sh .venv/bin/python -m tests.faults.stress [--iterations 1000] [--seed N]

Every chain of `lab.BUILDERS` is set up once (with a resident container), and the fault
points each passes through in ADD and in DEL are found by tracing one call. Then, each
iteration picks a chain, ADD (4 in 5) or DEL, one of its points (or none, 1 in 20), whether
the call goes to the agent and whether the cleanup does (each 1 in 2), and the cleanup: the
runtime's DEL, or (1 in 6) the container going away without one and the runtime's GC; and
runs the case (`lab.crash_case`). What is printed: the iterations, the kills per point (in a
plugin process and in the agent), the agent starts, and every case that left something
behind, wedged or failed its cleanup. The exit status is 1 if there was any.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from collections import Counter
from contextlib import ExitStack

from . import lab as L

ADD_SHARE = 0.8
NO_FAULT_SHARE = 0.05
GC_SHARE = 1 / 6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.stress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--chains", default=",".join(L.BUILDERS), help="comma-separated, from: " + ", ".join(L.BUILDERS))
    opts = parser.parse_args(argv)
    seed = opts.seed if opts.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    started = time.monotonic()
    print(f"crash stress: {opts.iterations} iterations, seed {seed}", flush=True)
    lab = L.Lab()
    kills: Counter[str] = Counter()
    per_chain: Counter[str] = Counter()
    failed: list[str] = []
    with ExitStack() as stack:
        stack.callback(lab.close)
        chains = []
        for kind in opts.chains.split(","):
            chain = L.BUILDERS[kind](lab, lab.root)
            stack.callback(chain.close)
            stack.enter_context(L.resident(lab, chain))
            points = {"ADD": L.points(lab, chain, "ADD"), "DEL": L.points(lab, chain, "DEL")}
            print(f"  {kind}: {len(points['ADD'])} ADD points, {len(points['DEL'])} DEL points", flush=True)
            chains.append((chain, points))
        for i in range(1, opts.iterations + 1):
            chain, points = rng.choice(chains)
            command = "ADD" if rng.random() < ADD_SHARE else "DEL"
            point = "none#1" if rng.random() < NO_FAULT_SHARE else rng.choice(points[command])
            agent, del_via_agent = rng.random() < 0.5, rng.random() < 0.5
            cleanup = "GC" if rng.random() < GC_SHARE else "DEL"
            try:
                case = L.crash_case(lab, chain, point, command, agent, del_via_agent, cleanup)
            except Exception:  # noqa: BLE001 - a harness error is reported with the others
                failed.append(f"#{i} {chain.kind} {command} {point}: harness error\n{traceback.format_exc()}")
                continue
            per_chain[f"{chain.kind} {command}, {cleanup}"] += 1
            if case.killed:
                kills[f"{command} {point} ({'agent' if case.agent_killed else 'process'})"] += 1
            if case.problems:
                failed.append(f"#{i} {case.describe()}: " + "; ".join(case.problems))
                print(f"LEAK #{i} {case.describe()}:\n    " + "\n    ".join(case.problems), flush=True)
            if i % 50 == 0:
                print(f"  {i} iterations, {len(failed)} with problems, {time.monotonic() - started:.0f} s", flush=True)
    print(f"\niterations: {opts.iterations} (seed {seed}, {time.monotonic() - started:.0f} s)")
    print("per chain and command: " + ", ".join(f"{k} {v}" for k, v in sorted(per_chain.items())))
    print(f"kills: {sum(kills.values())} ({sum(v for k, v in kills.items() if k.endswith('(agent)'))} of them the agent)")
    for name, count in sorted(kills.items()):
        print(f"  {count:4d}  {name}")
    print(f"agent starts: {lab.agent.starts}")
    print(f"leaks, wedges and failed cleanups: {len(failed)}")
    for line in failed:
        print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
