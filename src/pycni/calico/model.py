"""Calico's data model in the datastore: its key layout and the JSON of each value.

Keys follow libcalico-go's etcd v3 backend, so a tool reading Calico's etcd finds
the same things here:

    /calico/ipam/v2/config                                  IPAM configuration
    /calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26       allocation block
    /calico/ipam/v2/host/<node>/ipv4/block/10.0.0.0-26      block affinity
    /calico/ipam/v2/handle/<handle>                         handle: addresses per block
    /calico/resources/v3/projectcalico.org/ippools/<name>
    /calico/resources/v3/projectcalico.org/workloadendpoints/<namespace>/<name>
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

IPAM_CONFIG_KEY = "/calico/ipam/v2/config"
BLOCKS_PREFIX = "/calico/ipam/v2/assignment/"
HOSTS_PREFIX = "/calico/ipam/v2/host/"
HANDLES_PREFIX = "/calico/ipam/v2/handle/"
RESOURCES_PREFIX = "/calico/resources/v3/projectcalico.org/"

# Allocation attribute keys (libcalico-go's model.IPAMBlockAttribute*).
ATTR_POD = "pod"
ATTR_NAMESPACE = "namespace"
ATTR_NODE = "node"
ATTR_TIMESTAMP = "timestamp"
ATTR_TYPE = "type"

STATE_CONFIRMED = "confirmed"
STATE_PENDING = "pending"
STATE_PENDING_DELETION = "pendingDeletion"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def cidr_segment(cidr: IPNetwork) -> str:
    return str(cidr).replace("/", "-")


def block_key(cidr: IPNetwork) -> str:
    return f"{BLOCKS_PREFIX}ipv{cidr.version}/block/{cidr_segment(cidr)}"


def blocks_prefix(version: int | None = None) -> str:
    return BLOCKS_PREFIX if version is None else f"{BLOCKS_PREFIX}ipv{version}/"


def affinity_key(host: str, cidr: IPNetwork) -> str:
    return f"{HOSTS_PREFIX}{host}/ipv{cidr.version}/block/{cidr_segment(cidr)}"


def host_affinities_prefix(host: str, version: int) -> str:
    return f"{HOSTS_PREFIX}{host}/ipv{version}/block/"


def parse_affinity_key(key: str) -> tuple[str, IPNetwork] | None:
    """(host, cidr) from an affinity key, None when the key is not one."""
    if not key.startswith(HOSTS_PREFIX):
        return None
    parts = key[len(HOSTS_PREFIX) :].split("/")
    if len(parts) != 4 or parts[2] != "block":
        return None
    try:
        return parts[0], ipaddress.ip_network(parts[3].replace("-", "/", 1))
    except ValueError:
        return None


def handle_key(handle_id: str) -> str:
    return f"{HANDLES_PREFIX}{handle_id}"


def resource_key(plural: str, name: str, namespace: str | None = None) -> str:
    if namespace is None:
        return f"{RESOURCES_PREFIX}{plural}/{name}"
    return f"{RESOURCES_PREFIX}{plural}/{namespace}/{name}"


def resource_prefix(plural: str, namespace: str | None = None) -> str:
    if namespace is None:
        return f"{RESOURCES_PREFIX}{plural}/"
    return f"{RESOURCES_PREFIX}{plural}/{namespace}/"


# -- IPAM configuration ----------------------------------------------------------


@dataclass
class IPAMConfig:
    strict_affinity: bool = False
    auto_allocate_blocks: bool = True
    max_blocks_per_host: int = 0

    def to_json(self) -> str:
        out: dict[str, Any] = {}
        if self.strict_affinity:
            out["strict_affinity"] = True
        if self.auto_allocate_blocks:
            out["auto_allocate_blocks"] = True
        if self.max_blocks_per_host:
            out["maxBlocksPerHost"] = self.max_blocks_per_host
        return dumps(out)

    @classmethod
    def from_json(cls, text: str) -> IPAMConfig:
        data = json.loads(text)
        return cls(
            strict_affinity=bool(data.get("strict_affinity", False)),
            auto_allocate_blocks=bool(data.get("auto_allocate_blocks", False)),
            max_blocks_per_host=int(data.get("maxBlocksPerHost", 0) or 0),
        )


# -- block affinity --------------------------------------------------------------


@dataclass
class BlockAffinity:
    state: str = STATE_PENDING
    deleted: bool = False

    def to_json(self) -> str:
        return dumps({"state": self.state, "deleted": self.deleted})

    @classmethod
    def from_json(cls, text: str) -> BlockAffinity:
        data = json.loads(text)
        return cls(state=str(data.get("state", "")), deleted=bool(data.get("deleted", False)))


# -- handle ----------------------------------------------------------------------


@dataclass
class Handle:
    """How many addresses a handle holds in each block (`block` maps block CIDR → count)."""

    block: dict[str, int] = field(default_factory=dict)
    deleted: bool = False

    def to_json(self) -> str:
        return dumps({"block": self.block, "deleted": self.deleted})

    @classmethod
    def from_json(cls, text: str) -> Handle:
        data = json.loads(text)
        return cls(block={str(k): int(v) for k, v in (data.get("block") or {}).items()}, deleted=bool(data.get("deleted")))

    def increment(self, cidr: IPNetwork, num: int) -> None:
        self.block[str(cidr)] = self.block.get(str(cidr), 0) + num

    def decrement(self, cidr: IPNetwork, num: int) -> None:
        current = self.block.get(str(cidr), 0)
        if current < num:
            raise ValueError(f"handle holds {current} addresses in block {cidr}, cannot release {num}")
        if current == num:
            del self.block[str(cidr)]
        else:
            self.block[str(cidr)] = current - num

    def empty(self) -> bool:
        return not self.block


# -- allocation block ------------------------------------------------------------


@dataclass
class Attribute:
    handle_id: str | None
    secondary: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.handle_id is not None:
            out["handle_id"] = self.handle_id
        if self.secondary:
            out["secondary"] = dict(self.secondary)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attribute:
        handle = data.get("handle_id")
        return cls(handle_id=None if handle is None else str(handle), secondary=dict(data.get("secondary") or {}))


def sanitize_handle(handle_id: str) -> str:
    """Calico's fix for handles written with a trailing carriage return by old migrations."""
    return handle_id.split("\r")[0]


@dataclass
class AllocationBlock:
    """One block of a pool: which ordinals are allocated, to what, and the free ones in order."""

    cidr: IPNetwork
    affinity: str | None = None
    affinity_claim_time: str | None = None
    allocations: list[int | None] = field(default_factory=list)
    unallocated: list[int] = field(default_factory=list)
    attributes: list[Attribute] = field(default_factory=list)
    sequence_number: int = 0
    sequence_number_for_allocation: dict[str, int] = field(default_factory=dict)
    deleted: bool = False

    @classmethod
    def new(cls, cidr: IPNetwork, sequence_number: int) -> AllocationBlock:
        size = cidr.num_addresses
        return cls(
            cidr=cidr,
            allocations=[None] * size,
            unallocated=list(range(size)),
            sequence_number=sequence_number,
        )

    # -- JSON (libcalico-go's model.AllocationBlock) --
    def to_json(self) -> str:
        out: dict[str, Any] = {"cidr": str(self.cidr), "affinity": self.affinity}
        if self.affinity_claim_time:
            out["affinityClaimTime"] = self.affinity_claim_time
        out["allocations"] = self.allocations
        out["unallocated"] = self.unallocated
        out["attributes"] = [a.to_dict() for a in self.attributes]
        out["sequenceNumber"] = self.sequence_number
        out["sequenceNumberForAllocation"] = self.sequence_number_for_allocation
        out["deleted"] = self.deleted
        return dumps(out)

    @classmethod
    def from_json(cls, text: str) -> AllocationBlock:
        data = json.loads(text)
        affinity = data.get("affinity")
        if affinity is None and data.get("hostAffinity"):
            affinity = "host:" + str(data["hostAffinity"])
        return cls(
            cidr=ipaddress.ip_network(data["cidr"]),
            affinity=affinity,
            affinity_claim_time=data.get("affinityClaimTime"),
            allocations=list(data.get("allocations") or []),
            unallocated=list(data.get("unallocated") or []),
            attributes=[Attribute.from_dict(a) for a in data.get("attributes") or []],
            sequence_number=int(data.get("sequenceNumber", 0)),
            sequence_number_for_allocation={str(k): int(v) for k, v in (data.get("sequenceNumberForAllocation") or {}).items()},
            deleted=bool(data.get("deleted", False)),
        )

    # -- addressing --
    @property
    def host(self) -> str:
        if self.affinity and self.affinity.startswith("host:"):
            return self.affinity[len("host:") :]
        return ""

    def ordinal_to_ip(self, ordinal: int) -> IPAddress:
        return self.cidr.network_address + ordinal

    def ip_to_ordinal(self, ip: IPAddress) -> int:
        ordinal = int(ip) - int(self.cidr.network_address)
        if ip.version != self.cidr.version or not 0 <= ordinal < self.cidr.num_addresses:
            raise ValueError(f"IP {ip} not in block {self.cidr}")
        return ordinal

    def num_free(self) -> int:
        return len(self.unallocated)

    def in_use(self) -> int:
        return sum(1 for a in self.allocations if a is not None)

    def empty(self) -> bool:
        return all(a is None for a in self.allocations)

    def _find_or_add_attribute(self, handle_id: str | None, attrs: dict[str, str]) -> int:
        for idx, existing in enumerate(self.attributes):
            if existing.handle_id == handle_id and existing.secondary == attrs:
                return idx
        self.attributes.append(Attribute(handle_id, dict(attrs)))
        return len(self.attributes) - 1

    # -- assignment --
    def auto_assign(self, num: int, handle_id: str | None, attrs: dict[str, str], affinity: str, strict: bool) -> list[IPAddress]:
        """Take up to `num` free addresses in the block's free order (Calico's autoAssign)."""
        if strict and self.affinity is not None and self.affinity != affinity:
            raise ValueError(f"Block affinity ({self.affinity}) does not match provided ({affinity})")
        if strict and self.affinity is None:
            raise ValueError(f"Attempt to assign from block {self.cidr} with no affinity")
        taken = self.unallocated[:num]
        if not taken:
            return []
        self.unallocated = self.unallocated[len(taken) :]
        attr = self._find_or_add_attribute(handle_id, attrs)
        for ordinal in taken:
            self.allocations[ordinal] = attr
            self.sequence_number_for_allocation[str(ordinal)] = self.sequence_number
        return [self.ordinal_to_ip(o) for o in taken]

    def assign(self, ip: IPAddress, handle_id: str | None, attrs: dict[str, str], affinity: str, strict: bool) -> None:
        """Allocate one given address (Calico's assign); ValueError when it is taken or not ours."""
        if strict and self.affinity is not None and self.affinity != affinity:
            raise ValueError("Block host affinity does not match")
        if strict and self.affinity is None:
            raise ValueError(f"Attempt to assign from block {self.cidr} with no affinity")
        ordinal = self.ip_to_ordinal(ip)
        if self.allocations[ordinal] is not None:
            raise ValueError(f"Address already assigned in block: {ip}")
        self.sequence_number_for_allocation[str(ordinal)] = self.sequence_number
        self.allocations[ordinal] = self._find_or_add_attribute(handle_id, attrs)
        self.unallocated.remove(ordinal)

    # -- release --
    def _attribute_refcounts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for a in self.allocations:
            if a is not None:
                counts[a] = counts.get(a, 0) + 1
        return counts

    def _delete_attributes(self, indexes: set[int]) -> None:
        mapping: dict[int, int] = {}
        kept: list[Attribute] = []
        for old, attr in enumerate(self.attributes):
            if old not in indexes:
                mapping[old] = len(kept)
                kept.append(attr)
        self.attributes = kept
        self.allocations = [None if a is None else mapping[a] for a in self.allocations]

    def _free(self, ordinals: list[int], attr_counts: dict[int, int]) -> None:
        refcounts = self._attribute_refcounts()
        for ordinal in ordinals:
            self.allocations[ordinal] = None
            self.unallocated.append(ordinal)
            self.sequence_number_for_allocation.pop(str(ordinal), None)
        # An attribute whose every allocation was just released goes too.
        self._delete_attributes({idx for idx, n in attr_counts.items() if refcounts.get(idx) == n})

    def release(self, ips: list[IPAddress], handle_id: str = "") -> tuple[list[IPAddress], dict[str, int]]:
        """Free the given addresses; return those that were not allocated and counts per handle.

        With `handle_id`, an address held by another handle is a conflict (ValueError)."""
        unallocated: list[IPAddress] = []
        ordinals: list[int] = []
        attr_counts: dict[int, int] = {}
        by_handle: dict[str, int] = {}
        for ip in dict.fromkeys(ips):
            ordinal = self.ip_to_ordinal(ip)
            attr = self.allocations[ordinal]
            if attr is None:
                unallocated.append(ip)
                continue
            owner = self.attributes[attr].handle_id
            owner = sanitize_handle(owner) if owner is not None else ""
            if handle_id and owner != handle_id:
                raise ValueError(f"{ip} is held by handle {owner!r}, not {handle_id!r}")
            ordinals.append(ordinal)
            attr_counts[attr] = attr_counts.get(attr, 0) + 1
            if owner:
                by_handle[owner] = by_handle.get(owner, 0) + 1
        self._free(ordinals, attr_counts)
        return unallocated, by_handle

    def _handle_attributes(self, handle_id: str) -> set[int]:
        return {i for i, a in enumerate(self.attributes) if a.handle_id is not None and sanitize_handle(a.handle_id) == handle_id}

    def ips_by_handle(self, handle_id: str) -> list[IPAddress]:
        attrs = self._handle_attributes(handle_id)
        return [self.ordinal_to_ip(o) for o, a in enumerate(self.allocations) if a is not None and a in attrs]

    def release_by_handle(self, handle_id: str) -> int:
        attrs = self._handle_attributes(handle_id)
        ordinals = [o for o, a in enumerate(self.allocations) if a is not None and a in attrs]
        counts: dict[int, int] = {}
        for o in ordinals:
            a = self.allocations[o]
            assert a is not None
            counts[a] = counts.get(a, 0) + 1
        self._free(ordinals, counts)
        return len(ordinals)

    def attribute_of(self, ip: IPAddress) -> Attribute | None:
        attr = self.allocations[self.ip_to_ordinal(ip)]
        return None if attr is None else self.attributes[attr]

    def allocated(self) -> list[tuple[IPAddress, Attribute]]:
        return [(self.ordinal_to_ip(o), self.attributes[a]) for o, a in enumerate(self.allocations) if a is not None]
