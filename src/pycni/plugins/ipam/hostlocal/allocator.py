"""host-local's allocation strategy, the reference's: round robin over a range set.

Candidates start right after the range set's last reserved address (or at the first
range's start when there is none, or it is no longer in the set), run to the end of
each range, wrap to the next range and around, skip gateways, and stop where they
started. A crash-looping container therefore does not get the same address back until
the whole set has been used.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from pycni.plugins.ipam.hostlocal.config import Range, RangeSet, Requested
from pycni.plugins.ipam.hostlocal.store import Store
from pycni.spec.errors import CNIError, Code
from pycni.spec.result import IPAddress, IPConfig


def candidates(range_set: RangeSet, last: IPAddress | None) -> Iterator[tuple[IPAddress, Range]]:
    ranges = range_set.ranges
    index = 0
    current: IPAddress | None = None
    if last is not None:
        for i, r in enumerate(ranges):
            if r.contains(last):
                index, current = i, last
                break
    start: IPAddress | None = None
    while True:
        r = ranges[index]
        if current is None:
            current = start = r.start
        else:
            if current == r.end:
                index = (index + 1) % len(ranges)
                r = ranges[index]
                current = r.start
            else:
                current = current + 1
            if start is None:
                start = current
            elif current == start:
                return
        if current != r.gateway:
            yield current, r


def _config(ip: IPAddress, r: Range) -> IPConfig:
    return IPConfig(address=ipaddress.ip_interface(f"{ip}/{r.subnet.prefixlen}"), gateway=r.gateway)


def allocate(
    store: Store, range_set: RangeSet, index: int, container_id: str, ifname: str, requested: Requested | None
) -> IPConfig:
    """One address from `range_set` (range set number `index`) for the attachment."""
    if requested is not None:
        r = range_set.range_for(requested.ip)
        if r is None:  # the caller matched requests to range sets
            raise CNIError(requested.code, f"requested IP {requested.ip} ({requested.source}) is not in range set {range_set}")
        if requested.ip == r.gateway:
            raise CNIError(requested.code, f"requested IP {requested.ip} ({requested.source}) is the gateway of {r.subnet}")
        if not store.reserve(requested.ip, container_id, ifname, index):
            holder = store.allocations().get(requested.ip)
            owner = f" (held by container {holder.container_id})" if holder else ""
            raise CNIError(
                Code.CONFLICT,
                f"requested IP address {requested.ip} is not available in range set {range_set}{owner}",
            )
        return _config(requested.ip, r)
    for ip in store.held_by(container_id, ifname):
        if range_set.contains(ip):
            raise CNIError(Code.CONFLICT, f"{ip} has been allocated to {container_id}, duplicate allocation is not allowed")
    for ip, r in candidates(range_set, store.last_reserved(index)):
        if store.reserve(ip, container_id, ifname, index):
            return _config(ip, r)
    raise CNIError(Code.EXHAUSTED, f"no IP addresses available in range set: {range_set}")


def free(store: Store, range_set: RangeSet) -> int:
    """How many addresses of the range set are still free."""
    taken = 0
    for ip in store.allocations():
        r = range_set.range_for(ip)
        if r is not None and ip != r.gateway:
            taken += 1
    return sum(r.size() for r in range_set.ranges) - taken
