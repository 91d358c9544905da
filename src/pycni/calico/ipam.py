"""Calico IPAM's allocator: pools cut into blocks, blocks claimed by nodes through affinities.

The policy is libcalico-go's (lib/ipam); the records it reads and writes, with their
compare-and-swap and retry loop, are `pycni.calico.blocks` (ipam_block_reader_writer):

- a node first assigns from the blocks it has an affinity to;
- when those are full it claims a free block of a pool that selects it (the claim's
  three writes are the block store's);
- when no free block is left it borrows addresses from other nodes' blocks,
  unless `strictAffinity` is on;
- every allocation is recorded in its block (the ordinal points at an attribute
  holding the handle and the node/pod/namespace/timestamp) and counted in its
  handle (`<network>.<containerID>`), so a release by handle finds every block;
- a block that becomes empty and has no affinity is deleted.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pycni import faults
from pycni.calico import model
from pycni.calico.blocks import RETRIES, BlockClaimConflict, BlockStore, NotEmpty, Retry, StaleAffinity, retrying
from pycni.calico.datastore import KV, Datastore, KeyNotFound
from pycni.calico.model import AllocationBlock, BlockAffinity, Handle, IPAddress, IPAMConfig, IPNetwork
from pycni.calico.pools import Pool, PoolError, Pools
from pycni.calico.resources import NODE, Resources
from pycni.spec.errors import CNIError, Code

DEFAULT_MAX_BLOCKS_PER_HOST = 20

# The node's affine block that last had room, per (store, host, IP version), in a process that
# lives on (the agent): tried first, it spares reading every full affine block before it
# (Calico's order, which costs a block read per full block: 31 at 2,000 pods in /26 blocks).
# Only an order: a block that filled up since is read and passed over as before.
_last_with_room: dict[tuple[str, str, int], IPNetwork] = {}
_last_with_room_lock = threading.Lock()
EMPTY_BLOCK_MIN_RECLAIM_AGE = 60.0


class _NoFreeBlocks(Exception):
    pass


class _BlockLimit(Exception):
    pass


def ipam_error(msg: str, details: str = "") -> CNIError:
    return CNIError(Code.EXHAUSTED, msg, details)


def calico_timestamp() -> str:
    """Go's time.Now().UTC().String(), as Calico stores it in allocation attributes."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%d %H:%M:%S.") + f"{now.microsecond:06d}000 +0000 UTC"


@dataclass
class Assignments:
    version: int
    requested: int
    ips: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface] = field(default_factory=list)
    msgs: list[str] = field(default_factory=list)

    def add_msg(self, msg: str) -> None:
        if msg not in self.msgs:
            self.msgs.append(msg)

    def partial_error(self) -> str:
        if len(self.ips) >= self.requested:
            return ""
        text = f"Assigned {len(self.ips)} out of {self.requested} requested IPv{self.version} addresses"
        return text + "".join(f"; {m}" for m in self.msgs)


@dataclass
class BlockUsage:
    cidr: IPNetwork
    capacity: int
    in_use: int


@dataclass
class PoolUsage:
    name: str
    cidr: IPNetwork | None
    blocks: list[BlockUsage] = field(default_factory=list)

    @property
    def capacity(self) -> int:
        return self.cidr.num_addresses if self.cidr is not None else 0

    @property
    def in_use(self) -> int:
        return sum(b.in_use for b in self.blocks)


def random_blocks(pool: Pool, host: str) -> Iterator[IPNetwork]:
    """Every block of the pool once, from a start that depends on the host (Calico's
    randomBlockGenerator): concurrent nodes start in different places, one node always
    in the same one."""
    count = pool.blocks()
    if pool.block_size == pool.cidr.max_prefixlen:
        seed = time.time_ns()
    else:
        seed = int.from_bytes(hashlib.blake2s(host.encode(), digest_size=4).digest(), "big")
    start = random.Random(seed).randrange(count)
    for step in range(count):
        yield pool.nth_block((start + step) % count)


class IPAM:
    def __init__(self, store: Datastore, env: Mapping[str, str] | None = None, log: Any = None) -> None:
        self.store = store
        self.env = env or {}  # CALICO_IPV4POOL_* and CALICO_IPV6POOL_*, for the default pools
        self.pools = Pools(store)
        self.log = log
        self.records = BlockStore(store, log)

    # -- configuration -------------------------------------------------------
    def config(self) -> IPAMConfig:
        return self.records.config()

    def set_config(self, cfg: IPAMConfig) -> None:
        if not cfg.strict_affinity and not cfg.auto_allocate_blocks:
            raise ValueError("Cannot disable 'StrictAffinity' and 'AutoAllocateBlocks' at the same time")
        if cfg.max_blocks_per_host > 0 and not cfg.strict_affinity:
            raise ValueError("MaxBlocksPerHost requires StrictAffinity to be enabled")
        self.records.set_config(cfg)

    def node_labels(self, host: str) -> dict[str, str]:
        node = Resources(self.store, NODE).get(host)
        labels = ((node or {}).get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}

    # -- what there is -----------------------------------------------------------
    def affine_blocks(self, host: str, version: int) -> list[IPNetwork]:
        return self.records.affine_blocks(host, version)

    def blocks(self, version: int | None = None) -> list[AllocationBlock]:
        return self.records.blocks(version)

    def handles(self) -> dict[str, tuple[Handle, KV]]:
        return self.records.handles()

    # -- pools -------------------------------------------------------------------
    def _pools_for(self, requested: list[IPNetwork], version: int, host: str) -> list[Pool]:
        if not any(p.version == version for p in self.pools.all()):
            try:
                self.pools.ensure_default(version, self.env)
            except PoolError as exc:
                raise CNIError(Code.INVALID_NETWORK_CONFIG, str(exc)) from None
        enabled = self.pools.enabled(version)
        by_cidr = {p.cidr: p for p in enabled}
        if requested:
            chosen = []
            for cidr in requested:
                pool = by_cidr.get(cidr)
                if pool is None:
                    raise CNIError(Code.INVALID_NETWORK_CONFIG, f"the given pool ({cidr}) does not exist, or is not enabled")
                chosen.append(pool)
            return chosen
        labels = self.node_labels(host)
        chosen = [p for p in enabled if "Workload" in p.allowed_uses and p.selects(labels)]
        if not chosen:
            raise ipam_error(f"no configured Calico pools for node {host}")
        return chosen

    # -- claiming blocks ---------------------------------------------------------
    def _find_usable_block(self, host: str, version: int, pools: list[Pool]) -> IPNetwork:
        existing = {b.cidr: b for b in self.blocks(version)}
        empty: list[AllocationBlock] = []
        for pool in pools:
            for cidr in random_blocks(pool, host):
                block = existing.get(cidr)
                if block is None:
                    return cidr
                if block.affinity == f"host:{host}" and block.num_free():
                    return cidr
                if block.empty() and block.num_free():
                    empty.append(block)
        for block in empty:
            claimed = _parse_time(block.affinity_claim_time)
            if claimed is not None and time.time() - claimed < EMPTY_BLOCK_MIN_RECLAIM_AGE:
                continue
            if not block.host:
                return block.cidr
            try:
                self.records.release_block_affinity(block.host, block.cidr, require_empty=True, sequence=block.sequence_number)
            except (BlockClaimConflict, NotEmpty, Retry, KeyNotFound):
                continue
            return block.cidr
        raise _NoFreeBlocks

    def _find_or_claim_block(self, state: _AssignState) -> tuple[AllocationBlock, KV, bool]:
        while state.affine:
            cidr = state.affine.pop(0)

            def try_affine(cidr: IPNetwork = cidr) -> tuple[AllocationBlock, KV] | None:
                found = self.records.affinity(state.host, cidr)
                if found is None:
                    return None
                try:
                    block, kv = self.records.block_from_affinity(found[0], found[1], state.host, cidr)
                except (StaleAffinity, BlockClaimConflict):
                    return None
                return (block, kv) if block.num_free() else None

            got = retrying(try_affine, f"affine block {cidr}")
            if got is not None:
                return got[0], got[1], False
        if not state.allow_new_claim:
            raise _BlockLimit
        if not state.config.auto_allocate_blocks:
            raise _NoFreeBlocks
        for _ in range(RETRIES):
            cidr = self._find_usable_block(state.host, state.version, state.pools)

            def claim(cidr: IPNetwork = cidr) -> tuple[AllocationBlock, KV] | None:
                aff_kv = self.records.pending_affinity(state.host, cidr)
                aff = BlockAffinity.from_json(aff_kv.value)
                try:
                    return self.records.block_from_affinity(aff, aff_kv, state.host, cidr)
                except (BlockClaimConflict, StaleAffinity):
                    return None

            got = retrying(claim, f"claim of block {cidr}")
            if got is not None:
                if got[0].num_free():
                    return got[0], got[1], True
                raise ipam_error(f"Block '{cidr}' has 0 free ips which is less than 1 ips required.")
        raise CNIError(Code.TRY_AGAIN_LATER, "Max retries hit - excessive concurrent IPAM requests")

    def _assign_from_block(
        self, cidr: IPNetwork, num: int, handle_id: str | None, attrs: dict[str, str], host: str, strict: bool
    ) -> list[IPAddress]:
        def attempt() -> list[IPAddress]:
            found = self.records.block(cidr)
            if found is None:
                return []
            block, kv = found
            try:
                ips = block.auto_assign(num, handle_id, attrs, f"host:{host}", strict)
            except ValueError:
                return []
            if ips:
                self.records.allocate(block, kv, handle_id, len(ips))
            return ips

        return retrying(attempt, f"assignment from block {cidr}")

    # -- public operations ---------------------------------------------------------
    def auto_assign(
        self,
        num4: int,
        num6: int,
        handle_id: str | None,
        attrs: dict[str, str],
        host: str,
        v4_pools: list[IPNetwork] | None = None,
        v6_pools: list[IPNetwork] | None = None,
        max_blocks_per_host: int = 0,
    ) -> tuple[Assignments | None, Assignments | None]:
        v4 = v6 = None
        if num4:
            v4 = self._auto_assign(num4, handle_id, attrs, v4_pools or [], 4, host, max_blocks_per_host)
        if num6:
            v6 = self._auto_assign(num6, handle_id, attrs, v6_pools or [], 6, host, max_blocks_per_host)
        return v4, v6

    def _auto_assign(
        self,
        num: int,
        handle_id: str | None,
        attrs: dict[str, str],
        requested: list[IPNetwork],
        version: int,
        host: str,
        max_blocks: int,
    ) -> Assignments:
        pools = self._pools_for(requested, version, host)
        config = self.config()
        if config.max_blocks_per_host > 0 and (max_blocks == 0 or max_blocks > config.max_blocks_per_host):
            max_blocks = config.max_blocks_per_host
        if max_blocks == 0:
            max_blocks = DEFAULT_MAX_BLOCKS_PER_HOST
        affine = [c for c in self.affine_blocks(host, version) if any(c.subnet_of(p.cidr) for p in pools)]  # type: ignore[arg-type]
        hint_key = (self.store.identity, host, version)
        with _last_with_room_lock:
            hint = _last_with_room.get(hint_key)
        if hint in affine:
            affine.remove(hint)
            affine.insert(0, hint)
        state = _AssignState(host, version, pools, affine, config, owned=len(affine))
        result = Assignments(version, num)
        while len(result.ips) < num:
            if state.owned >= max_blocks:
                state.allow_new_claim = False
            try:
                block, _, claimed = self._find_or_claim_block(state)
            except _NoFreeBlocks:
                if config.strict_affinity:
                    result.add_msg("No more free affine blocks and strict affinity enabled")
                break
            except _BlockLimit:
                limit = f"limit of {max_blocks} blocks reached for this node"
                result.add_msg(f"Need to allocate an IPAM block but could not - {limit}")
                return result
            if claimed:
                state.owned += 1
            ips = self._assign_from_block(block.cidr, num - len(result.ips), handle_id, attrs, host, config.strict_affinity)
            with _last_with_room_lock:
                _last_with_room[hint_key] = block.cidr
            result.ips.extend(ipaddress.ip_interface(f"{ip}/{block.cidr.prefixlen}") for ip in ips)
        remaining = num - len(result.ips)
        if not config.strict_affinity and remaining:
            # Borrow from other nodes' blocks. Only existing blocks can lend, so list them once
            # instead of reading every block-sized slice of the pool.
            exhausted = []
            with_space = {b.cidr for b in self.blocks(version) if b.num_free()}
            for pool in pools:
                for cidr in random_blocks(pool, host):
                    if remaining <= 0:
                        break
                    if cidr not in with_space:
                        continue
                    ips = self._assign_from_block(cidr, remaining, handle_id, attrs, host, False)
                    if ips and self.log is not None:
                        self.log.info("Borrowed %d address(es) from block %s", len(ips), cidr)
                    result.ips.extend(ipaddress.ip_interface(f"{ip}/{cidr.prefixlen}") for ip in ips)
                    remaining = num - len(result.ips)
                else:
                    exhausted.append(str(pool.cidr))
                if remaining <= 0:
                    break
            if exhausted and remaining:
                result.add_msg(f"No IPs available in pools: [{' '.join(exhausted)}]")
        return result

    def assign_ip(self, ip: IPAddress, handle_id: str | None, attrs: dict[str, str], host: str) -> None:
        """Allocate one given address (CNI_ARGS IP=...), claiming its block when it does not exist."""
        pool = self.pools.containing(ip, self.pools.enabled(ip.version))
        if pool is None:
            raise CNIError(Code.INVALID_NETWORK_CONFIG, f"The provided IP address {ip} is not in a configured pool")
        config = self.config()
        cidr = pool.block_of(ip)

        def attempt() -> None:
            found = self.records.block(cidr)
            if found is None:
                aff_kv = self.records.pending_affinity(host, cidr)
                try:
                    found = self.records.claim_affine_block(aff_kv, host, cidr)
                except BlockClaimConflict:
                    raise Retry from None
            block, kv = found
            try:
                block.assign(ip, handle_id, attrs, f"host:{host}", config.strict_affinity)
            except ValueError as exc:
                raise CNIError(Code.CONFLICT, f"cannot assign {ip}: {exc}") from None
            self.records.allocate(block, kv, handle_id, 1)

        retrying(attempt, f"assignment of {ip}")

    def _block_for_ip(self, ip: IPAddress, pools: list[Pool]) -> IPNetwork | None:
        pool = self.pools.containing(ip, pools)
        if pool is not None:
            return pool.block_of(ip)
        for block in self.blocks(ip.version):
            if ip in block.cidr:
                return block.cidr
        return None

    def release_ips(self, ips: list[IPAddress], handle_id: str = "") -> list[IPAddress]:
        """Free the given addresses; return those that were not allocated."""
        pools = self.pools.all()
        unallocated: list[IPAddress] = []
        by_block: dict[IPNetwork, list[IPAddress]] = {}
        for ip in ips:
            cidr = self._block_for_ip(ip, pools)
            if cidr is None:
                unallocated.append(ip)
            else:
                by_block.setdefault(cidr, []).append(ip)
        for cidr, members in by_block.items():

            def attempt(cidr: IPNetwork = cidr, members: list[IPAddress] = members) -> tuple[list[IPAddress], dict[str, int]]:
                found = self.records.block(cidr)
                if found is None:
                    return members, {}
                block, kv = found
                try:
                    missing, counts = block.release(members, handle_id)
                except ValueError as exc:
                    raise CNIError(Code.CONFLICT, str(exc)) from None
                if len(missing) == len(members):
                    return missing, {}
                self.records.store_block(block, kv)
                return missing, counts

            missing, counts = retrying(attempt, f"release from block {cidr}")
            unallocated.extend(missing)
            for handle, count in counts.items():
                self.records.change_handle(handle, cidr, -count)
        return unallocated

    def release_by_handle(self, handle_id: str) -> list[IPAddress]:
        """Free every address held by the handle; KeyNotFound when the handle does not exist."""
        handle_id = model.sanitize_handle(handle_id)
        handle = self.records.handle(handle_id)
        if handle is None:
            raise KeyNotFound(model.handle_key(handle_id))
        released: list[IPAddress] = []
        for text in handle.block:
            cidr = ipaddress.ip_network(text)

            def attempt(cidr: IPNetwork = cidr) -> list[IPAddress]:
                found = self.records.block(cidr)
                if found is None:
                    return []
                block, block_kv = found
                ips = block.ips_by_handle(handle_id)
                if not ips:
                    return []
                block.release_by_handle(handle_id)
                self.records.store_block(block, block_kv)
                return ips

            ips = retrying(attempt, f"release of handle {handle_id}")
            released.extend(ips)
            faults.checkpoint("address-released")
            # A handle may overcount (an interrupted assignment): forget blocks that hold nothing for it.
            self.records.change_handle(handle_id, cidr, -len(ips), drop=not ips)
        return released

    def ips_by_handle(self, handle_id: str) -> list[IPAddress]:
        handle = self.records.handle(handle_id)
        if handle is None:
            return []
        out: list[IPAddress] = []
        for text in handle.block:
            found = self.records.block(ipaddress.ip_network(text))
            if found is not None:
                out.extend(found[0].ips_by_handle(handle_id))
        return out

    def assignment(self, ip: IPAddress) -> model.Attribute | None:
        """The attribute (handle and owner) of an allocated address, None when it is free."""
        cidr = self._block_for_ip(ip, self.pools.all())
        found = None if cidr is None else self.records.block(cidr)
        return None if found is None else found[0].attribute_of(ip)

    def release_block_affinity(self, host: str, cidr: IPNetwork, require_empty: bool, sequence: int | None = None) -> None:
        self.records.release_block_affinity(host, cidr, require_empty, sequence)

    def utilization(self) -> list[PoolUsage]:
        usage = [PoolUsage(p.name, p.cidr) for p in self.pools.all()]
        orphans = PoolUsage("orphaned allocation blocks", None)
        for block in self.blocks():
            entry = BlockUsage(block.cidr, block.cidr.num_addresses, block.in_use())
            for pool in usage:
                if pool.cidr is not None and pool.cidr.version == block.cidr.version and pool.cidr.overlaps(block.cidr):
                    pool.blocks.append(entry)
                    break
            else:
                orphans.blocks.append(entry)
        return [*usage, orphans]


@dataclass
class _AssignState:
    host: str
    version: int
    pools: list[Pool]
    affine: list[IPNetwork]
    config: IPAMConfig
    owned: int = 0
    allow_new_claim: bool = True


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC).timestamp()
    except ValueError:
        return None
