"""What the daemons' Prometheus metrics share: a registry of their own, the address to serve
it on, and serving it with a clear error when that address cannot be had.

Every daemon (the agent, calico-node, flanneld) has its own `CollectorRegistry`, never the
library's global one: tests run several daemons in one process, and one daemon's figures must
not show in another's. prometheus-client is imported only here and only when metrics are on,
so the launchers' cold path never loads it.
"""

from __future__ import annotations

from typing import Any, Self

from pycni import extras

HISTOGRAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class MetricsError(RuntimeError):
    """The metrics address is malformed or cannot be served on; the message names the setting."""


def prometheus(extra: str, feature: str) -> Any:
    return extras.require("prometheus_client", extra, feature)


def new_registry(prometheus_client: Any) -> Any:
    """A registry with the process figures the library collects (CPU, memory, file
    descriptors, start time; the interpreter and its garbage collector)."""
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    return registry


def parse_address(text: str, setting: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (every address) as (host, port)."""
    host, colon, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not port.isdigit() or not 0 < int(port) < 65536 or ("[" in host or "]" in host):
        raise MetricsError(f"invalid metrics address {text!r} ({setting}): expected HOST:PORT, [IPv6]:PORT or :PORT")
    return host, int(port)


def show(host: str, port: int) -> str:
    host = host or "0.0.0.0"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Server:
    """prometheus-client's HTTP server on one address, bound when made."""

    def __init__(self, prometheus_client: Any, registry: Any, host: str, port: int, setting: str) -> None:
        try:
            self._server, self._thread = prometheus_client.start_http_server(port, addr=host or "0.0.0.0", registry=registry)
        except OSError as exc:
            raise MetricsError(
                f"cannot serve Prometheus metrics on {show(host, port)} ({setting}): {exc.strerror or exc}"
            ) from None
        self.address = show(host, port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class DaemonMetrics:
    """A daemon's metrics: subclasses name the setting that turns them on and register their
    metrics in `self.registry` (made by `prometheus`, the imported prometheus-client)."""

    SETTING = ""  # the flag and variable, for error messages
    EXTRA = "metrics"

    def __init__(self) -> None:
        self.prometheus = prometheus(self.EXTRA, f"Prometheus metrics ({self.SETTING})")
        self.registry = new_registry(self.prometheus)

    def serve(self, address: str) -> Server:
        host, port = parse_address(address, self.SETTING)
        return self.serve_on(host, port)

    def serve_on(self, host: str, port: int) -> Server:
        return Server(self.prometheus, self.registry, host, port, self.SETTING)

    @classmethod
    def start(cls, address: str) -> tuple[Self, Server] | None:
        """The metrics and their server on `address` (bound now), or None when it is empty (off)."""
        if not address:
            return None
        made = cls()
        return made, made.serve(address)
