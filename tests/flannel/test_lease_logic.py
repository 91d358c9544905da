"""flanneld's lease decisions (daemon.acquire, renewal) against an in-memory registry: taking
back its lease and VTEP MAC, the subnet of subnet.env, a race lost, a full network, renewal."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import replace

import pytest

from pycni.flannel import config, daemon
from pycni.flannel.backends import Local
from pycni.flannel.iface import ExtIface
from pycni.flannel.lease import Lease, VtepData

EXT = ExtIface(
    "eth0", 2, 1500, ipaddress.IPv4Address("172.20.0.11"), None, ipaddress.IPv4Address("172.20.0.11"), None,
    (ipaddress.IPv4Network("172.20.0.0/24"),),
)  # fmt: skip


class FakeRegistry:
    def __init__(self, leases: list[Lease] | None = None, lose_races: int = 0) -> None:
        self.held = {lease.key: lease for lease in leases or []}
        self.lose_races = lose_races
        self.refreshed: list[int] = []

    def leases(self) -> tuple[list[Lease], list[str], int]:
        return list(self.held.values()), [], 1

    def delete(self, key: str) -> None:
        self.held.pop(key, None)

    def create(self, lease: Lease) -> Lease | None:
        if self.lose_races:
            self.lose_races -= 1
            self.held[lease.key] = replace(lease, public_ip=ipaddress.IPv4Address("172.20.0.99"))
            return None
        if lease.key in self.held:
            return None
        self.held[lease.key] = replace(lease, etcd_lease=7)
        return self.held[lease.key]

    def take_back(self, lease: Lease, seen: Lease) -> Lease | None:
        self.held[lease.key] = replace(lease, etcd_lease=seen.etcd_lease or 8)
        return self.held[lease.key]

    def refresh(self, etcd_lease: int) -> int:
        self.refreshed.append(etcd_lease)
        return 86400


def _config(**extra: object) -> config.NetworkConfig:
    import json

    return config.parse(json.dumps({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}, **extra}))


def test_takes_back_its_lease_and_vtep_mac() -> None:
    mine = Lease(ipaddress.IPv4Network("10.5.7.0/24"), EXT.public_ip, "vxlan", VtepData(1, "0a:00:00:00:00:07"), etcd_lease=3)  # type: ignore[arg-type]
    registry = FakeRegistry([mine])
    lease, local = daemon.acquire(registry, _config(), EXT, {}, ("0e:ff:ff:ff:ff:ff", ""))  # type: ignore[arg-type]
    assert lease.subnet == mine.subnet and local.mac == "0a:00:00:00:00:07"  # the lease's MAC beats the device's


def test_reuses_the_subnet_of_subnet_env_when_free() -> None:
    registry = FakeRegistry()
    lease, _ = daemon.acquire(registry, _config(), EXT, {"FLANNEL_SUBNET": "10.5.42.1/24"}, ("", ""))  # type: ignore[arg-type]
    assert str(lease.subnet) == "10.5.42.0/24"


def test_a_lost_race_picks_again_and_never_shares() -> None:
    registry = FakeRegistry(lose_races=3)
    lease, _ = daemon.acquire(registry, _config(SubnetMin="10.5.1.0", SubnetMax="10.5.5.0"), EXT, {}, ("", ""))  # type: ignore[arg-type]
    assert len({str(le.subnet) for le in registry.held.values()}) == 4 and lease.public_ip == EXT.public_ip


def test_incompatible_lease_is_replaced() -> None:
    old = Lease(ipaddress.IPv4Network("10.9.7.0/24"), EXT.public_ip, "vxlan", VtepData(1, "0a:00:00:00:00:07"))  # type: ignore[arg-type]
    registry = FakeRegistry([old])
    lease, _ = daemon.acquire(registry, _config(), EXT, {}, ("", ""))  # type: ignore[arg-type]
    assert lease.subnet.subnet_of(ipaddress.IPv4Network("10.5.0.0/16")) and old.key not in registry.held


def test_full_network_names_the_range() -> None:
    other = Lease(ipaddress.IPv4Network("10.5.1.0/24"), ipaddress.IPv4Address("172.20.0.12"), "vxlan")
    registry = FakeRegistry([other])
    with pytest.raises(daemon.StartupError, match=r"out of subnets: every /24 of Network 10.5.0.0/16 from SubnetMin 10.5.1.0"):
        daemon.acquire(registry, _config(SubnetMin="10.5.1.0", SubnetMax="10.5.1.0"), EXT, {}, ("", ""))  # type: ignore[arg-type]


def test_renewal_before_the_margin() -> None:
    mine = Lease(ipaddress.IPv4Network("10.5.7.0/24"), EXT.public_ip, "vxlan", VtepData(1, "0a:00:00:00:00:07"), etcd_lease=3)  # type: ignore[arg-type]
    registry = FakeRegistry([mine])
    flanneld = daemon.Flanneld(registry, _config(), EXT, Local(mine, "0a:00:00:00:00:07"), daemon.Options(renew_margin=60))  # type: ignore[arg-type]
    flanneld.expires = time.monotonic() + 3500  # less than the 60-minute margin left
    assert flanneld._renew_at() <= time.monotonic()
    flanneld._renew()
    assert registry.refreshed == [3] and flanneld._renew_at() > time.monotonic() + 20 * 3600
