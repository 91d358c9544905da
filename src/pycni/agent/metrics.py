"""The agent's Prometheus metrics, off unless `pycni agent --metrics-address HOST:PORT` (or
PYCNI_METRICS_ADDRESS) is given.

What the agent can see is what it counts: the calls it ran (by plugin, command and the CNI
result code the launcher got), how long they took from acceptance to answer, the calls running now,
and the calls it declined (each one a launcher that then ran the call in-process). A launcher
that falls back because no agent answers at all cannot be counted here: the agent is not
there to count it; the launcher writes why in the plugin log, and the agent's absence shows
as its scrape failing (`up == 0`).

Only `pycni agent` imports this module, and only with metrics on: the launchers' path never
loads prometheus-client.
"""

from __future__ import annotations

import json

from pycni import metrics
from pycni.metrics import MetricsError
from pycni.skel import Outcome

__all__ = ["AgentMetrics", "MetricsError"]

ADDRESS_ENV = "PYCNI_METRICS_ADDRESS"
# Label values come from a fixed set: a command or a decline reason is not free text.
COMMANDS = ("ADD", "CHECK", "DEL", "GC", "STATUS", "VERSION")
DECLINE_REASONS = {
    "the caller is in another network namespace": "other_netns",
    "the caller is in another mount namespace": "other_mntns",
    "cannot read the namespaces of the caller": "caller_unknown",
    "the agent is running as many calls as it may": "max_calls",
}


def result_code(outcome: Outcome) -> str:
    """The CNI result code: 0, or the error's `code` (7 invalid configuration, 11 try again
    later...), which says more than the exit code 1 every error has."""
    if outcome.code == 0:
        return "0"
    try:
        return str(int(json.loads(outcome.stdout)["code"]))
    except (ValueError, TypeError, KeyError):
        return "unknown"


class AgentMetrics(metrics.DaemonMetrics):
    SETTING = f"--metrics-address / {ADDRESS_ENV}"

    def __init__(self) -> None:
        super().__init__()
        prometheus, r = self.prometheus, self.registry
        self.calls = prometheus.Counter(
            "pycni_agent_calls", "Plugin calls the agent ran, by plugin, command and CNI result code (0: success).",
            ["plugin", "command", "code"], registry=r,
        )  # fmt: skip
        self.duration = prometheus.Histogram(
            "pycni_agent_call_duration_seconds", "Time from accepting a call to answering it.",
            ["plugin", "command"], buckets=metrics.HISTOGRAM_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = prometheus.Gauge("pycni_agent_calls_in_flight", "Calls accepted and not yet answered.", registry=r)
        self.declined = prometheus.Counter(
            "pycni_agent_declined_calls",
            "Calls the agent declined, so that the launcher ran them in-process, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip

    # -- hooks in the server ---------------------------------------------------------
    def call_accepted(self) -> None:
        self.in_flight.inc()

    def call_answered(self, plugin: str, command: str, outcome: Outcome, seconds: float) -> None:
        command = command if command in COMMANDS else "other"
        self.in_flight.dec()
        self.calls.labels(plugin=plugin, command=command, code=result_code(outcome)).inc()
        self.duration.labels(plugin=plugin, command=command).observe(seconds)

    def call_declined(self, reason: str) -> None:
        self.declined.labels(reason=DECLINE_REASONS.get(reason, "other")).inc()
