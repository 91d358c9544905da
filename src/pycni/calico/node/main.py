"""`calico-node`: the per-node daemon, configured by its environment (see config.py).

    calico-node                 start-up, then the daemon in the foreground (SIGTERM stops it;
                                the dataplane stays, as Calico's does; --cleanup removes it)
    calico-node -startup        start-up only (register the node, pools, tunnel address)
    calico-node -felix-ready | -felix-live | -bird-ready | -bird-live | -bird6-ready | -bird6-live
                [-threshold-time=30s]
                                the readiness and liveness probes: exit 0, or print why and exit 1

Flags take one dash or two, as Go's flag package reads them.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from pycni.extras import MissingExtra

PROBES = ("felix-ready", "felix-live", "bird-ready", "bird-live", "bird6-ready", "bird6-live")
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}


def _parse(argv: Sequence[str]) -> tuple[set[str], float, bool]:
    flags: set[str] = set()
    threshold = 30.0
    cleanup = False
    args = list(argv)
    while args:
        arg = args.pop(0).lstrip("-")
        name, sep, value = arg.partition("=")
        if name == "threshold-time":
            if not sep:
                value = args.pop(0) if args else ""
            threshold = _duration(value)
        elif name in PROBES or name in ("startup", "felix", "confd", "allocate-tunnel-addrs"):
            flags.add(name)
        elif name == "cleanup":
            cleanup = True
        elif name in ("h", "help"):
            print(__doc__.strip())
            raise SystemExit(0)
        else:
            raise SystemExit(f"calico-node: flag provided but not defined: -{name}")
    return flags, threshold, cleanup


def _duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * units[suffix]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise SystemExit(f"calico-node: invalid value {text!r} for flag -threshold-time: a duration such as 30s")


def _setup_logging(env: dict[str, str]) -> None:
    level = (env.get("CALICO_STARTUP_LOGLEVEL") or env.get("FELIX_LOGSEVERITYSCREEN") or "info").lower()
    logging.basicConfig(
        level=LEVELS.get(level, logging.INFO),
        format="%(asctime)s.%(msecs)03d [%(levelname)s][%(process)d] %(name)s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )


def probe(flags: set[str], threshold: float) -> int:
    from pycni.calico.node import config, health

    try:
        cfg = config.load(os.environ)
    except config.ConfigError as exc:
        print(f"calico/node check error: {exc}")
        return 1
    failures = []
    for name in sorted(flags & set(PROBES)):
        if name in ("felix-ready", "felix-live"):
            kind = "readiness" if name == "felix-ready" else "liveness"
            msg = health.felix_check(cfg.health_host, cfg.health_port, kind, threshold)
            if msg:
                what = "ready" if name == "felix-ready" else "live"
                failures.append(f"calico/node is not ready: felix is not {what}: {msg}")
        elif name in ("bird-ready", "bird6-ready"):
            version = 6 if name.startswith("bird6") else 4
            msg = health.bird_ready(cfg.bird_socket(version), version, cfg.nodename_file, threshold)
            if msg:
                failures.append(f"calico/node is not ready: BIRD{'6' if version == 6 else ''} is not ready: {msg}")
        else:
            version = 6 if name.startswith("bird6") else 4
            msg = health.bird_live(cfg.bird_socket(version))
            if msg:
                failures.append(f"calico/node is not ready: {msg}")
    for line in failures:
        print(line)
    return 1 if failures else 0


def run_daemon(only_startup: bool, cleanup: bool) -> int:
    from pycni.calico.datastore import open_datastore
    from pycni.calico.node import components, config, startup
    from pycni.calico.node.bird.process import BirdMissing
    from pycni.calico.node.component import NodeContext
    from pycni.calico.node.health import HealthServer
    from pycni.calico.node.loop import MainLoop
    from pycni.calico.node.metrics import Metrics, MetricsError
    from pycni.net import sysctl

    log = logging.getLogger("calico-node")
    try:
        cfg = config.load(os.environ)
    except config.ConfigError as exc:
        log.error("%s", exc)
        return 1
    if cfg.backend == "bird" and not only_startup and not (cfg.bird_binary and os.access(cfg.bird_binary, os.X_OK)):
        log.error("%s", BirdMissing(cfg.bird_binary))
        return 1
    log.info("Starting node %s (backend %s, datastore %s)", cfg.nodename, cfg.backend, cfg.datastore.kind)
    # The metrics and health addresses are bound first: one in use is an error before the node
    # is registered or anything is configured.
    running: list[MainLoop] = []  # the health endpoint answers "starting" until the loop exists
    metrics = Metrics() if cfg.metrics_enabled and not only_startup else None
    servers: list[Any] = []
    try:
        if metrics is not None:
            servers.append(metrics.serve_on(cfg.metrics_host, cfg.metrics_port))
            log.info("Serving Prometheus metrics on %s", servers[-1].address)
        if cfg.health_enabled and not only_startup:
            server = HealthServer(
                cfg.health_host,
                cfg.health_port,
                lambda: running[0].problems() if running else ["calico-node is starting"],
                lambda: running[0].live() if running else True,
            )
            server.start()
            servers.append(server)
    except MetricsError as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        log.error(
            "cannot serve the health endpoint on %s:%d (FELIX_HEALTHHOST / FELIX_HEALTHPORT): %s",
            cfg.health_host, cfg.health_port, exc.strerror or exc,
        )  # fmt: skip
        return 1
    try:
        store = startup.open_store(cfg, float(cfg.env.get("CALICO_STARTUP_TIMEOUT", "30") or 30))
        try:
            identity = startup.run(store, cfg)
        finally:
            store.close()
    except startup.StartupError as exc:
        log.error("%s", exc)
        return 1
    if only_startup:
        return 0
    pid_file = os.path.join(cfg.run_dir, "calico-node.pid")  # calicoctl node status reads it
    startup.write_file(pid_file, f"{os.getpid()}\n")
    sysctl.write("net.ipv4.ip_forward", "1")
    if identity.ipv6 is not None:
        sysctl.write("net.ipv6.conf.all.forwarding", "1")
    ctx = NodeContext(
        nodename=cfg.nodename,
        ipv4=str(identity.ipv4 or ""),
        ipv6=str(identity.ipv6 or ""),
        interface=identity.interface,
        backend=cfg.backend,
        mtu=identity.mtu,
        registry=metrics.registry if metrics is not None else None,
    )
    try:
        parts = components.build(ctx, cfg)
    except BirdMissing as exc:
        log.error("%s", exc)
        return 1
    if metrics is not None:
        parts.append(components.MetricsComponent(ctx, metrics, list(parts)))
    loop = MainLoop(
        lambda: open_datastore(cfg.datastore),
        parts,
        ctx,
        reconcile_interval=cfg.reconcile_interval,
        resync_interval=cfg.resync_interval,
        metrics=metrics,
    )
    running.append(loop)

    def stop(signum: int, _frame: Any) -> None:
        log.info("Received %s: stopping", signal.Signals(signum).name)
        loop.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker = threading.Thread(target=loop.run, name="calico-node-loop", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    for part in reversed(parts):
        try:
            part.close(cleanup=cleanup)
        except Exception:
            log.exception("Closing %s failed", part.name)
    if cleanup:
        from pycni.calico.node.nat import delete_table_if_empty

        delete_table_if_empty()
    for server in servers:
        server.stop()
    try:
        os.unlink(pid_file)
    except OSError:
        pass
    log.info("calico-node stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # grpc's fork handlers would run (and complain) at every BIRD start: calico-node never
    # uses grpc in a child.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    flags, threshold, cleanup = _parse(sys.argv[1:] if argv is None else argv)
    if flags & set(PROBES):
        return probe(flags, threshold)
    _setup_logging(dict(os.environ))
    try:
        return run_daemon("startup" in flags, cleanup)
    except MissingExtra as exc:
        logging.getLogger("calico-node").error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
