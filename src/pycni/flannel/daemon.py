"""flanneld: start-up (configuration, interface, lease, dataplane, rules, subnet.env), then
one loop that keeps the node's dataplane equal to what the leases in etcd say.

Start-up checks everything before it writes anything: an invalid configuration, an interface
that cannot be found or a network with no free subnet is an error naming what is wrong, and
leaves no lease, device, rule or file behind.

The loop is level-triggered: every pass computes the wanted devices, neighbours, FDB entries
and routes from the current leases (backends.wanted) and applies the difference
(kernel.sync). A pass runs when the etcd watch brings a change, when the kernel loses
something flanneld made (monitor.py), and every `RESYNC` seconds; the masquerade rules are
checked every `--iptables-resync` seconds; the node's own lease is renewed `margin` minutes
before it expires. etcd being away changes nothing in the kernel.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pycni.flannel import backends, kernel, subnetenv
from pycni.flannel.backends import Local
from pycni.flannel.config import NetworkConfig
from pycni.flannel.etcd import EtcdUnavailable, Registry
from pycni.flannel.iface import ExtIface
from pycni.flannel.lease import SUBNET_TTL, Lease
from pycni.flannel.masq import Masquerade, Plan
from pycni.flannel.monitor import KernelMonitor
from pycni.flannel.watcher import LeaseWatcher

if TYPE_CHECKING:
    from pycni.flannel.metrics import FlannelMetrics

log = logging.getLogger("flanneld")

RACE_RETRIES = 10
CANDIDATES = 100  # flannel picks at random among the first 100 free subnets
RESYNC = 10.0


class StartupError(RuntimeError):
    """Something the operator must fix; the message says what."""


class LeaseRevoked(RuntimeError):
    pass


@dataclass
class Options:
    subnet_file: str = subnetenv.DEFAULT_PATH
    ip_masq: bool = False
    fully_random: bool = True
    forward_rules: bool = True
    renew_margin: int = 60  # minutes
    rules_resync: float = 5.0


# -- the lease ---------------------------------------------------------------------------------


def _free_subnets(config: NetworkConfig, taken: list[Lease]) -> list[ipaddress.IPv4Network]:
    """flannel's allocateSubnet candidates: the first free subnets from SubnetMin to SubnetMax."""
    size = 1 << (32 - config.subnet_len)
    start, end = int(config.subnet_min), int(config.subnet_max)
    used = sorted((int(lease.subnet.network_address), int(lease.subnet.broadcast_address)) for lease in taken)
    out: list[ipaddress.IPv4Network] = []
    value = start
    while value <= end and len(out) < CANDIDATES:
        last = value + size - 1
        if not any(lo <= last and value <= hi for lo, hi in used):
            out.append(ipaddress.IPv4Network(f"{ipaddress.IPv4Address(value)}/{config.subnet_len}"))
        value += size
    return out


def _free_subnet6(config: NetworkConfig, taken: list[Lease]) -> list[ipaddress.IPv6Network]:
    assert config.ipv6_subnet_min is not None and config.ipv6_subnet_max is not None
    size = 1 << (128 - config.ipv6_subnet_len)
    used = [lease.ipv6_subnet for lease in taken if lease.ipv6_subnet is not None]
    out: list[ipaddress.IPv6Network] = []
    value = int(config.ipv6_subnet_min)
    while value <= int(config.ipv6_subnet_max) and len(out) < CANDIDATES:
        net = ipaddress.IPv6Network(f"{ipaddress.IPv6Address(value)}/{config.ipv6_subnet_len}")
        if not any(net.overlaps(u) for u in used):
            out.append(net)
        value += size
    return out


def acquire(
    registry: Registry, config: NetworkConfig, ext: ExtIface, previous: dict[str, str], device_macs: tuple[str, str]
) -> tuple[Lease, Local]:
    """This node's lease (flannel's tryAcquireLease): the one with its public address if it
    still fits the configuration, else the subnet in its subnet.env if free, else a free one.
    A lease taken back keeps its VTEP MAC (peers have it in their neighbour tables)."""
    assert ext.public_ip is not None
    prev4 = subnetenv.previous_subnet(previous, "FLANNEL_SUBNET", 4)
    prev6 = subnetenv.previous_subnet(previous, "FLANNEL_IPV6_SUBNET", 6)
    for _ in range(RACE_RETRIES):
        leases, _bad, _rev = registry.leases()
        mine = next((lease for lease in leases if lease.public_ip == ext.public_ip), None)
        if mine is not None and not (config.subnet_fits(mine.subnet) and config.ipv6_subnet_fits(mine.ipv6_subnet)):
            log.info(
                "Found lease %s for this node's address %s, but it does not fit the configuration: deleting it",
                mine.key,
                ext.public_ip,
            )
            registry.delete(mine.key)
            leases.remove(mine)
            mine = None
        mac = (mine.vtep.mac if mine and mine.vtep else "") or device_macs[0] or backends.new_mac()
        mac6 = (mine.vtep6.mac if mine and mine.vtep6 else "") or device_macs[1] or backends.new_mac()
        vtep, vtep6 = backends.attrs(config, ext, mac, mac6)
        base = Lease(
            subnet=ipaddress.IPv4Network("0.0.0.0/32"),
            public_ip=ext.public_ip,
            backend_type=config.backend.type,
            vtep=vtep,
            public_ipv6=ext.public_ipv6 if config.enable_ipv6 else None,
            vtep6=vtep6,
        )
        if mine is not None:
            log.info("Found lease %s for this node's address %s: taking it back", mine.key, ext.public_ip)
            wanted = replace(base, subnet=mine.subnet, ipv6_subnet=mine.ipv6_subnet)
            taken = registry.take_back(wanted, mine)
            if taken is None:
                continue  # changed under us: read again
            return taken, Local(taken, mac, mac6)
        subnet = subnet6 = None
        held = {lease.subnet for lease in leases}
        if (
            prev4 is not None
            and prev4 not in held
            and config.subnet_fits(prev4)  # type: ignore[arg-type]
            and config.ipv6_subnet_fits(prev6 if config.enable_ipv6 else None)  # type: ignore[arg-type]
        ):
            log.info("Found the previously leased subnet %s in %s: reusing it", prev4, "subnet.env")
            subnet, subnet6 = prev4, (prev6 if config.enable_ipv6 else None)
        if subnet is None:
            free = _free_subnets(config, leases)
            free6 = _free_subnet6(config, leases) if config.enable_ipv6 else [None]
            if not free or not free6:
                raise StartupError(
                    f"out of subnets: every /{config.subnet_len} of Network {config.network} from SubnetMin {config.subnet_min}"
                    f" to SubnetMax {config.subnet_max} is leased ({len(leases)} leases in etcd"
                    + (", or every IPv6 subnet" if config.enable_ipv6 and not free6 else "")
                    + "): widen Network or the SubnetMin..SubnetMax range, or delete the leases of nodes that are gone"
                )
            subnet, subnet6 = random.choice(free), random.choice(free6)
        created = registry.create(replace(base, subnet=subnet, ipv6_subnet=subnet6))  # type: ignore[arg-type]
        if created is None:
            continue  # another node took it first
        log.info("Allocated lease %s to this node (%s)", created.key, ext.public_ip)
        return created, Local(created, mac, mac6)
    raise StartupError(f"could not acquire a subnet after {RACE_RETRIES} attempts: other nodes kept taking the chosen ones")


def device_macs(config: NetworkConfig) -> tuple[str, str]:
    """The MACs of existing VXLAN devices (a restart after the lease expired keeps them too)."""
    from pycni.net import netlink

    out = []
    with netlink.route() as ipr:
        for version in (4, 6):
            found = ipr.link_lookup(ifname=backends.device_name(config.backend.vni, version))
            out.append(str(ipr.get_links(found[0])[0].get_attr("IFLA_ADDRESS")).lower() if found else "")
    return out[0], out[1]


# -- the running daemon ------------------------------------------------------------------------


@dataclass
class Status:
    ready: bool = False
    problems: dict[str, str] = field(default_factory=dict)
    reconciles: int = 0
    last_outcome: kernel.Outcome | None = None


class Flanneld:
    def __init__(self, registry: Registry, config: NetworkConfig, ext: ExtIface, local: Local, options: Options) -> None:
        self.registry = registry
        self.config = config
        self.ext = ext
        self.local = local
        self.options = options
        self.status = Status()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.watcher = LeaseWatcher(registry, self._wake.set)
        self.monitor: KernelMonitor | None = None
        self._device_indexes: set[int] = set()
        plans = [Plan(config.network, local.lease.subnet, options.ip_masq, options.forward_rules, options.fully_random)]
        if config.enable_ipv6 and config.ipv6_network is not None and local.lease.ipv6_subnet is not None:
            plans.append(
                Plan(config.ipv6_network, local.lease.ipv6_subnet, options.ip_masq, options.forward_rules, options.fully_random)
            )
        self.masq = Masquerade(plans)
        self.expires = time.monotonic() + SUBNET_TTL
        self.metrics: FlannelMetrics | None = None  # FlannelMetrics.attach, with --metrics-address

    @property
    def mtu(self) -> int:
        return backends.mtu(self.config, self.ext)

    def versions(self) -> tuple[int, ...]:
        return (4, 6) if self.config.enable_ipv6 else (4,)

    def reconcile(self) -> kernel.Outcome:
        leases = self.watcher.snapshot()
        started = time.monotonic()
        wanted = backends.wanted(self.config, self.ext, self.local, leases)
        outcome = kernel.sync(wanted, self.versions())
        took = (time.monotonic() - started) * 1000
        if self.metrics is not None:
            self.metrics.synced(wanted, outcome, took / 1000, self.versions())
        self.status.reconciles += 1
        self.status.last_outcome = outcome
        if outcome.written or outcome.deleted:
            log.info(
                "Dataplane: %d written, %d removed (%d remote leases) in %.0f ms",
                outcome.written,
                outcome.deleted,
                len(leases) - 1,
                took,
            )
        for problem in outcome.failures:
            log.error("Dataplane: %s", problem)
        if outcome.blocked:
            log.warning("Routes not written, another route holds the destination: %s", "; ".join(outcome.blocked))
        if outcome.failures:
            self.status.problems["dataplane"] = "; ".join(outcome.failures[:5])
        else:
            self.status.problems.pop("dataplane", None)
        self._device_indexes = self._indexes(wanted)
        return outcome

    @staticmethod
    def _indexes(wanted: kernel.Wanted) -> set[int]:
        from pycni.net import netlink

        out = set()
        with netlink.route() as ipr:
            for device in wanted.devices:
                found = ipr.link_lookup(ifname=device.name)
                if found:
                    out.add(int(found[0]))
        return out

    def start(self, leases: list[Lease], revision: int) -> None:
        """The dataplane from the listing read at start, the rules, subnet.env; then the watch."""
        self.watcher.start(leases, revision)
        self.reconcile()
        if self.masq.plans:
            self.masq.ensure()
        text = subnetenv.render(
            self.config, self.options.ip_masq, self.local.lease.subnet, self.local.lease.ipv6_subnet, self.mtu
        )
        subnetenv.write(self.options.subnet_file, text)
        log.info("Wrote subnet file to %s", self.options.subnet_file)
        self.monitor = KernelMonitor(self._wake.set, lambda: self._device_indexes)
        self.monitor.start()
        if not self.local.lease.etcd_lease:
            self.expires = float("inf")  # a reservation: it never expires, nothing to renew
            log.info("Lease %s is a reservation (no TTL)", self.local.lease.key)
        else:
            try:
                ttl = self.registry.ttl(self.local.lease.etcd_lease)
                if ttl > 0:
                    self.expires = time.monotonic() + ttl
            except EtcdUnavailable:
                pass
        self.status.ready = True
        log.info("flannel is ready: lease %s, backend %s", self.local.lease.key, self.config.backend.type)

    def run(self) -> None:
        """The loop, until `stop` (or the node's lease is deleted: LeaseRevoked)."""
        next_resync = time.monotonic() + RESYNC
        next_rules = time.monotonic() + self.options.rules_resync
        pause = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = max(0.0, min(next_resync, next_rules, self._renew_at()) - now)
            self._wake.wait(max(timeout, pause))
            if self._stop.is_set():
                break
            self._wake.clear()
            now = time.monotonic()
            if self.watcher.synced and self.watcher.get(self.local.lease.key) is None and not self.watcher.problem:
                raise LeaseRevoked(f"this node's lease {self.local.lease.key} was deleted from etcd")
            self._update_etcd_problem()
            try:
                self.reconcile()
                pause = 0.0
            except (kernel.KernelError, OSError) as exc:
                self._failed()
                self.status.problems["dataplane"] = str(exc)
                log.error("Dataplane: %s (retrying)", exc)
                pause = 1.0
            except Exception as exc:  # noqa: BLE001 - a netlink error: retried on the next pass
                self._failed()
                self.status.problems["dataplane"] = f"{type(exc).__name__}: {exc}"
                log.error("Dataplane: %s (retrying)", self.status.problems["dataplane"])
                pause = 1.0
            if now >= next_resync:
                next_resync = now + RESYNC
            if now >= next_rules:
                next_rules = now + self.options.rules_resync
                self._rules()
            if now >= self._renew_at():
                self._renew()

    def _failed(self) -> None:
        if self.metrics is not None:
            self.metrics.failures.inc()

    def _update_etcd_problem(self) -> None:
        if self.watcher.problem:
            self.status.problems["etcd"] = self.watcher.problem
        else:
            self.status.problems.pop("etcd", None)

    def _rules(self) -> None:
        if not self.masq.plans:
            return
        try:
            self.masq.ensure()
            self.status.problems.pop("rules", None)
        except Exception as exc:  # noqa: BLE001 - nftables errors are retried at the next check
            self.status.problems["rules"] = str(exc)
            log.error("nftables rules: %s", exc)

    def _renew_at(self) -> float:
        return self.expires - self.options.renew_margin * 60

    def _renew(self) -> None:
        try:
            ttl = self.registry.refresh(self.local.lease.etcd_lease)
        except EtcdUnavailable as exc:
            log.error("Error renewing lease (trying again in 1 min): %s", exc)
            if self.metrics is not None:
                self.metrics.renewal_failures.inc()
            self.expires = time.monotonic() + self.options.renew_margin * 60 + 60
            return
        if ttl <= 0:
            raise LeaseRevoked(f"this node's lease {self.local.lease.key} expired in etcd")
        self.expires = time.monotonic() + ttl
        if self.metrics is not None:
            self.metrics.renewals.inc()
        log.info("Lease renewed, new expiration in %d s", ttl)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self.watcher.stop()
        if self.monitor is not None:
            self.monitor.stop()
