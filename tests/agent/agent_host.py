"""`python -m tests.agent.agent_host --socket PATH ...`: the real agent (`pycni.agent.server.run`),
also serving the test plugins of this directory (`pct-sleep`, `pct-deleg`)."""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from pycni import logs, skel
from pycni.agent import metrics, server

from . import pct_deleg, pct_sleep

TEST_PLUGINS = {"pct-sleep": pct_sleep, "pct-deleg": pct_deleg}


def resolve(plugin_type: str) -> ModuleType:
    return TEST_PLUGINS.get(plugin_type) or skel.plugin_module(plugin_type)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--socket", required=True)
    parser.add_argument("--log-file", required=True)
    parser.add_argument("--call-timeout", type=float, default=30.0)
    parser.add_argument("--log-max-bytes", type=int, default=10 * 1024 * 1024)
    parser.add_argument("--max-calls", type=int, default=server.DEFAULT_MAX_CALLS)
    parser.add_argument("--metrics-address", default="")
    opts = parser.parse_args()
    logs.configure(opts.log_file, "DEBUG", rotate=(opts.log_max_bytes, 3))
    served = metrics.AgentMetrics.start(opts.metrics_address)
    agent = server.Agent(
        opts.socket, call_timeout=opts.call_timeout, max_calls=opts.max_calls, resolve=resolve,
        metrics=served[0] if served else None,
    )  # fmt: skip
    return server.run(agent)


if __name__ == "__main__":
    sys.exit(main())
