"""The `flanneld` command: flags as flannel-io/flannel's main.go (and FLANNELD_* variables),
then start-up and the loop (daemon.py), an optional health endpoint, SIGTERM/SIGINT to stop.

Exit codes: 0 stopped by a signal; 1 a start-up error (the message says what to fix) or the
node's lease deleted from etcd; 2 a bad command line.
"""

from __future__ import annotations

import http.server
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from pycni.extras import MissingExtra
from pycni.flannel import config as netconfig
from pycni.flannel import flags, iface, subnetenv
from pycni.flannel.daemon import Flanneld, LeaseRevoked, Options, StartupError, acquire, device_macs
from pycni.flannel.etcd import ConfigNotFound, EtcdOptions, EtcdUnavailable, Registry
from pycni.flannel.kernel import KernelError
from pycni.flannel.metrics import FlannelMetrics, MetricsError
from pycni.net.nft import NftError

log = logging.getLogger("flanneld")
VERSION = "v0.26.0-pycni"


def _logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s flanneld] %(message)s"))
    root = logging.getLogger("flanneld")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    root.propagate = False


def _network_config(registry: Registry, stop: threading.Event) -> netconfig.NetworkConfig:
    """flannel's getConfig: wait (retrying every second) until etcd answers with a configuration;
    an invalid one is an error at once."""
    said = ""
    while True:
        try:
            return netconfig.parse(registry.network_config())
        except (ConfigNotFound, EtcdUnavailable) as exc:
            if str(exc) != said:
                log.error("Couldn't fetch network config (retrying every second): %s", exc)
                said = str(exc)
        if stop.wait(1.0):
            raise SystemExit(0)


class _Health(http.server.BaseHTTPRequestHandler):
    daemon: Flanneld | None = None

    def do_GET(self) -> None:
        daemon = type(self).daemon
        if self.path == "/healthz":
            code, body = 200, "flanneld is running"
        elif self.path == "/readyz":
            ready = daemon is not None and daemon.status.ready
            code, body = (200, "flanneld is ready") if ready else (503, "flanneld is not ready yet")
            if daemon is not None and daemon.status.problems:
                body += "\n" + "\n".join(f"{k}: {v}" for k, v in sorted(daemon.status.problems.items()))
        else:
            code, body = 404, "not found"
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


def _healthz(address: str, port: int) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer((address, port), _Health)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
    log.info("Start healthz server on %s:%d", address, port)
    return server


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = flags.parse(sys.argv[1:] if argv is None else argv, os.environ)
    except flags.HelpRequested:
        flags.print_usage()
        return 0
    except flags.FlagError as exc:
        sys.stderr.write(f"{exc}\n")
        flags.print_usage()
        return 2
    if opts["version"]:
        sys.stderr.write(VERSION + "\n")
        return 0
    _logging(int(opts["v"]))
    margin = int(opts["subnet-lease-renew-margin"])
    if not 0 < margin < 24 * 60:
        log.error("Invalid subnet-lease-renew-margin option %d: out of the acceptable range 1..1439 (minutes)", margin)
        return 1
    if opts["ip-blackhole-route"]:
        log.error("--ip-blackhole-route is not supported: the bridge plugin's subnet route already keeps the node's pods local")
        return 1
    if opts["kube-subnet-mgr"]:
        log.error("--kube-subnet-mgr: the Kubernetes subnet manager is not supported; pycni's flanneld keeps leases in etcd")
        return 1
    # Both addresses are bound before anything else: one in use stops flanneld with no lease
    # taken and nothing configured.
    try:
        served = FlannelMetrics.start(opts["metrics-address"])
        if served:
            log.info("Serving Prometheus metrics on %s", served[1].address)
        if int(opts["healthz-port"]) > 0:
            _healthz(opts["healthz-ip"], int(opts["healthz-port"]))
    except (MetricsError, MissingExtra) as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error(
            "cannot serve healthz on %s:%s (--healthz-ip / --healthz-port): %s",
            opts["healthz-ip"], opts["healthz-port"], exc.strerror or exc,
        )  # fmt: skip
        return 1
    stop = threading.Event()
    daemon: Flanneld | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()
        if daemon is not None:
            daemon.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    options = EtcdOptions(
        opts["etcd-endpoints"], opts["etcd-prefix"], opts["etcd-keyfile"], opts["etcd-certfile"], opts["etcd-cafile"],
        opts["etcd-username"], opts["etcd-password"],
    )  # fmt: skip
    try:
        registry = Registry(options)
    except (ValueError, EtcdUnavailable, MissingExtra) as exc:
        log.error("%s", exc)
        return 1
    try:
        config = _network_config(registry, stop)
    except netconfig.ConfigError as exc:
        log.error("Invalid network configuration at %s/config: %s", registry.prefix, exc)
        return 1
    log.info("Found network config - Backend type: %s", config.backend.type)
    try:
        ext = iface.lookup(
            list(opts["iface"]), list(opts["iface-regex"]), opts["iface-can-reach"], opts["public-ip"], opts["public-ipv6"],
            True, config.enable_ipv6,
        )  # fmt: skip
    except iface.InterfaceError as exc:
        log.error("Failed to find the interface to use: %s", exc)
        return 1
    log.info("Using interface %s, address %s, public address %s", ext.name, ext.address, ext.public_ip)
    if config.backend.type == "host-gw" and ext.public_ip != ext.address:
        log.error(
            "--public-ip %s differs from the interface address %s: the node is probably behind NAT, which host-gw cannot"
            " route through (use vxlan)", ext.public_ip, ext.address,
        )  # fmt: skip
        return 1
    previous = subnetenv.read(opts["subnet-file"])
    flannel_options = Options(
        subnet_file=opts["subnet-file"],
        ip_masq=bool(opts["ip-masq"]),
        fully_random=not opts["ip-masq-fully-random-disable"],
        forward_rules=bool(opts["iptables-forward-rules"]),
        renew_margin=margin,
        rules_resync=max(1.0, float(opts["iptables-resync"])),
    )
    while True:
        try:
            _lease, local = acquire(registry, config, ext, previous, device_macs(config))
            leases, _bad, revision = registry.leases()
            break
        except StartupError as exc:
            log.error("Failed to acquire lease: %s", exc)
            return 1
        except EtcdUnavailable as exc:
            log.error("Failed to acquire lease (retrying): %s", exc)
            if stop.wait(1.0):
                return 0
    daemon = Flanneld(registry, config, ext, local, flannel_options)
    _Health.daemon = daemon
    if served:
        served[0].attach(daemon)
    if stop.is_set():
        return 0
    try:
        daemon.start(leases, revision)
        daemon.run()
    except LeaseRevoked as exc:
        log.error("Lease has been revoked: %s. Shutting down daemon.", exc)
        return 1
    except (KernelError, NftError) as exc:
        log.error("Failed to set up the dataplane of lease %s: %s", local.lease.key, exc)
        return 1
    finally:
        daemon.stop()
        registry.close()
    log.info("Exiting cleanly...")
    return 0


def entry() -> None:
    sys.exit(main())
