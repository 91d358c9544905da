"""Calico IPAM: pools cut into blocks, blocks claimed by nodes through affinities.

The flow is libcalico-go's (lib/ipam):

- a node first assigns from the blocks it has an affinity to;
- when those are full it claims a free block of a pool that selects it: an
  affinity is written `pending`, the block created with `affinity: host:<node>`,
  and the affinity `confirmed` (a crashed claim leaves only a pending affinity,
  which the next claim of that node re-uses or finds stale);
- when no free block is left it borrows addresses from other nodes' blocks,
  unless `strictAffinity` is on;
- every allocation is recorded in its block (the ordinal points at an attribute
  holding the handle and the node/pod/namespace/timestamp) and counted in its
  handle (`<network>.<containerID>`), so a release by handle finds every block;
- a block that becomes empty and has no affinity is deleted.

Every write is a compare-and-swap on the revision read; on a conflict the step
is retried with fresh data (up to Calico's 100 times).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pycni import faults
from pycni.calico import model
from pycni.calico.datastore import KV, Datastore, KeyExists, KeyNotFound, RevisionConflict
from pycni.calico.model import AllocationBlock, BlockAffinity, Handle, IPAddress, IPAMConfig, IPNetwork
from pycni.calico.pools import Pool, PoolError, Pools
from pycni.calico.resources import NODE, Resources
from pycni.spec.errors import CNIError, Code

T = TypeVar("T")
RETRIES = 100
DEFAULT_MAX_BLOCKS_PER_HOST = 20
EMPTY_BLOCK_MIN_RECLAIM_AGE = 60.0


class _Retry(Exception):
    """A compare-and-swap lost a race: read again and retry."""


class _NoFreeBlocks(Exception):
    pass


class _BlockClaimConflict(Exception):
    pass


class _StaleAffinity(Exception):
    pass


class _BlockLimit(Exception):
    pass


class _NotEmpty(Exception):
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


def _retrying(fn: Callable[[], T], what: str) -> T:
    """Run `fn` until it stops raising _Retry (a lost compare-and-swap), with a little jitter."""
    for attempt in range(RETRIES):
        try:
            return fn()
        except _Retry:
            if attempt > 2:
                time.sleep(random.uniform(0, 0.001 * min(attempt, 20)))
    raise CNIError(Code.TRY_AGAIN_LATER, f"Max retries hit - excessive concurrent IPAM requests ({what})")


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
        self.env = env or {}
        self.pools = Pools(store)
        self.log = log

    def _debug(self, msg: str, *args: Any) -> None:
        if self.log is not None:
            self.log.debug(msg, *args)

    # -- configuration -------------------------------------------------------
    def config(self) -> IPAMConfig:
        kv = self.store.get(model.IPAM_CONFIG_KEY)
        if kv is None:
            default = IPAMConfig()
            try:
                self.store.create(model.IPAM_CONFIG_KEY, default.to_json())
            except KeyExists:
                kv = self.store.get(model.IPAM_CONFIG_KEY)
            if kv is None:
                return default
        return IPAMConfig.from_json(kv.value)

    def set_config(self, cfg: IPAMConfig) -> None:
        if not cfg.strict_affinity and not cfg.auto_allocate_blocks:
            raise ValueError("Cannot disable 'StrictAffinity' and 'AutoAllocateBlocks' at the same time")
        if cfg.max_blocks_per_host > 0 and not cfg.strict_affinity:
            raise ValueError("MaxBlocksPerHost requires StrictAffinity to be enabled")

        def write() -> None:
            kv = self.store.get(model.IPAM_CONFIG_KEY)
            try:
                if kv is None:
                    self.store.create(model.IPAM_CONFIG_KEY, cfg.to_json())
                else:
                    self.store.update(model.IPAM_CONFIG_KEY, cfg.to_json(), kv.revision)
            except (KeyExists, RevisionConflict):
                raise _Retry from None

        _retrying(write, "IPAM configuration")

    def node_labels(self, host: str) -> dict[str, str]:
        node = Resources(self.store, NODE).get(host)
        labels = ((node or {}).get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}

    # -- low-level reads and writes --------------------------------------------
    def _get_block(self, cidr: IPNetwork) -> tuple[AllocationBlock, KV] | None:
        kv = self.store.get(model.block_key(cidr))
        return None if kv is None else (AllocationBlock.from_json(kv.value), kv)

    def _update_block(self, block: AllocationBlock, kv: KV) -> KV:
        block.sequence_number += 1
        try:
            return self.store.update(kv.key, block.to_json(), kv.revision)
        except (RevisionConflict, KeyNotFound):
            raise _Retry from None

    def _delete_block(self, kv: KV) -> None:
        try:
            self.store.delete(kv.key, kv.revision)
        except KeyNotFound:
            pass
        except RevisionConflict:
            raise _Retry from None

    def _get_affinity(self, host: str, cidr: IPNetwork) -> tuple[BlockAffinity, KV] | None:
        kv = self.store.get(model.affinity_key(host, cidr))
        return None if kv is None else (BlockAffinity.from_json(kv.value), kv)

    def _write_affinity(self, aff: BlockAffinity, kv: KV) -> KV:
        try:
            return self.store.update(kv.key, aff.to_json(), kv.revision)
        except (RevisionConflict, KeyNotFound):
            raise _Retry from None

    def _delete_affinity(self, kv: KV) -> None:
        try:
            self.store.delete(kv.key, kv.revision)
        except (KeyNotFound, RevisionConflict):
            pass

    def affine_blocks(self, host: str, version: int) -> list[IPNetwork]:
        out = []
        for kv in self.store.list(model.host_affinities_prefix(host, version)):
            parsed = model.parse_affinity_key(kv.key)
            if parsed is not None:
                out.append(parsed[1])
        return out

    def blocks(self, version: int | None = None) -> list[AllocationBlock]:
        return [AllocationBlock.from_json(kv.value) for kv in self.store.list(model.blocks_prefix(version))]

    def handles(self) -> dict[str, tuple[Handle, KV]]:
        return {
            kv.key[len(model.HANDLES_PREFIX) :]: (Handle.from_json(kv.value), kv) for kv in self.store.list(model.HANDLES_PREFIX)
        }

    def _change_handle(self, handle_id: str, cidr: IPNetwork, delta: int, drop: bool = False) -> None:
        """Add `delta` addresses in `cidr` to the handle (or forget the block, with `drop`)."""

        def write() -> None:
            kv = self.store.get(model.handle_key(handle_id))
            handle = Handle() if kv is None else Handle.from_json(kv.value)
            if delta > 0:
                handle.increment(cidr, delta)
            else:
                if kv is None:
                    return
                if drop or handle.block.get(str(cidr), 0) <= -delta:
                    handle.block.pop(str(cidr), None)
                else:
                    handle.decrement(cidr, -delta)
            try:
                if kv is None:
                    self.store.create(model.handle_key(handle_id), handle.to_json())
                elif handle.empty():
                    self.store.delete(kv.key, kv.revision)
                else:
                    self.store.update(kv.key, handle.to_json(), kv.revision)
            except (KeyExists, KeyNotFound, RevisionConflict):
                raise _Retry from None

        _retrying(write, f"handle {handle_id}")

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
    def _confirm_affinity(self, aff_kv: KV) -> None:
        try:
            self.store.update(aff_kv.key, BlockAffinity(model.STATE_CONFIRMED).to_json(), aff_kv.revision)
        except (RevisionConflict, KeyNotFound):
            current = self.store.get(aff_kv.key)
            if current is None or BlockAffinity.from_json(current.value).state != model.STATE_CONFIRMED:
                raise _Retry from None

    def _pending_affinity(self, host: str, cidr: IPNetwork) -> KV:
        key = model.affinity_key(host, cidr)
        try:
            return self.store.create(key, BlockAffinity(model.STATE_PENDING).to_json())
        except KeyExists:
            found = self._get_affinity(host, cidr)
            if found is None:
                raise _Retry from None
            aff, kv = found
            if aff.state != model.STATE_CONFIRMED:
                return self._write_affinity(BlockAffinity(model.STATE_PENDING), kv)
            return kv

    def _claim_affine_block(self, aff_kv: KV, host: str, cidr: IPNetwork) -> tuple[AllocationBlock, KV]:
        block = AllocationBlock.new(cidr, time.time_ns())
        block.affinity = f"host:{host}"
        block.affinity_claim_time = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            kv = self.store.create(model.block_key(cidr), block.to_json())
        except KeyExists:
            found = self._get_block(cidr)
            if found is None:
                raise _Retry from None
            if found[0].affinity == block.affinity:
                self._confirm_affinity(aff_kv)
                return found
            self._delete_affinity(aff_kv)
            raise _BlockClaimConflict(str(cidr)) from None
        self._confirm_affinity(aff_kv)
        if self.log is not None:
            self.log.info("Claimed IPAM block %s for node %s", cidr, host)
        return block, kv

    def _block_from_affinity(self, aff: BlockAffinity, aff_kv: KV, host: str, cidr: IPNetwork) -> tuple[AllocationBlock, KV]:
        found = self._get_block(cidr)
        if found is None:
            aff_kv = self._write_affinity(BlockAffinity(model.STATE_PENDING), aff_kv)
            return self._claim_affine_block(aff_kv, host, cidr)
        block, kv = found
        if block.affinity != f"host:{host}":
            self._delete_affinity(aff_kv)
            raise _StaleAffinity(str(cidr))
        if aff.state not in (model.STATE_CONFIRMED, ""):
            aff_kv = self._write_affinity(BlockAffinity(model.STATE_PENDING), aff_kv)
            kv = self._update_block(block, kv)
            self._confirm_affinity(aff_kv)
        return block, kv

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
                self.release_block_affinity(block.host, block.cidr, require_empty=True, sequence=block.sequence_number)
            except (_BlockClaimConflict, _NotEmpty, _Retry, KeyNotFound):
                continue
            return block.cidr
        raise _NoFreeBlocks

    def _find_or_claim_block(self, state: _AssignState) -> tuple[AllocationBlock, KV, bool]:
        while state.affine:
            cidr = state.affine.pop(0)

            def try_affine(cidr: IPNetwork = cidr) -> tuple[AllocationBlock, KV] | None:
                found = self._get_affinity(state.host, cidr)
                if found is None:
                    return None
                try:
                    block, kv = self._block_from_affinity(found[0], found[1], state.host, cidr)
                except (_StaleAffinity, _BlockClaimConflict):
                    return None
                return (block, kv) if block.num_free() else None

            got = _retrying(try_affine, f"affine block {cidr}")
            if got is not None:
                return got[0], got[1], False
        if not state.allow_new_claim:
            raise _BlockLimit
        if not state.config.auto_allocate_blocks:
            raise _NoFreeBlocks
        for _ in range(RETRIES):
            cidr = self._find_usable_block(state.host, state.version, state.pools)

            def claim(cidr: IPNetwork = cidr) -> tuple[AllocationBlock, KV] | None:
                aff_kv = self._pending_affinity(state.host, cidr)
                aff = BlockAffinity.from_json(aff_kv.value)
                try:
                    return self._block_from_affinity(aff, aff_kv, state.host, cidr)
                except (_BlockClaimConflict, _StaleAffinity):
                    return None

            got = _retrying(claim, f"claim of block {cidr}")
            if got is not None:
                if got[0].num_free():
                    return got[0], got[1], True
                raise ipam_error(f"Block '{cidr}' has 0 free ips which is less than 1 ips required.")
        raise CNIError(Code.TRY_AGAIN_LATER, "Max retries hit - excessive concurrent IPAM requests")

    def _assign_from_block(
        self, cidr: IPNetwork, num: int, handle_id: str | None, attrs: dict[str, str], host: str, strict: bool
    ) -> list[IPAddress]:
        def attempt() -> list[IPAddress]:
            found = self._get_block(cidr)
            if found is None:
                return []
            block, kv = found
            try:
                ips = block.auto_assign(num, handle_id, attrs, f"host:{host}", strict)
            except ValueError:
                return []
            if not ips:
                return []
            if handle_id is not None:
                self._change_handle(handle_id, cidr, len(ips))
                faults.checkpoint("handle-written")
            try:
                self._update_block(block, kv)
            except _Retry:
                if handle_id is not None:
                    self._change_handle(handle_id, cidr, -len(ips))
                raise
            faults.checkpoint("address-allocated")
            return ips

        return _retrying(attempt, f"assignment from block {cidr}")

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
            found = self._get_block(cidr)
            if found is None:
                aff_kv = self._pending_affinity(host, cidr)
                try:
                    found = self._claim_affine_block(aff_kv, host, cidr)
                except _BlockClaimConflict:
                    raise _Retry from None
            block, kv = found
            try:
                block.assign(ip, handle_id, attrs, f"host:{host}", config.strict_affinity)
            except ValueError as exc:
                raise CNIError(Code.CONFLICT, f"cannot assign {ip}: {exc}") from None
            if handle_id is not None:
                self._change_handle(handle_id, cidr, 1)
                faults.checkpoint("handle-written")
            try:
                self._update_block(block, kv)
            except _Retry:
                if handle_id is not None:
                    self._change_handle(handle_id, cidr, -1)
                raise
            faults.checkpoint("address-allocated")

        _retrying(attempt, f"assignment of {ip}")

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
                found = self._get_block(cidr)
                if found is None:
                    return members, {}
                block, kv = found
                try:
                    missing, counts = block.release(members, handle_id)
                except ValueError as exc:
                    raise CNIError(Code.CONFLICT, str(exc)) from None
                if len(missing) == len(members):
                    return missing, {}
                if block.empty() and block.affinity is None:
                    self._delete_block(kv)
                else:
                    self._update_block(block, kv)
                return missing, counts

            missing, counts = _retrying(attempt, f"release from block {cidr}")
            unallocated.extend(missing)
            for handle, count in counts.items():
                self._change_handle(handle, cidr, -count)
        return unallocated

    def release_by_handle(self, handle_id: str) -> list[IPAddress]:
        """Free every address held by the handle; KeyNotFound when the handle does not exist."""
        handle_id = model.sanitize_handle(handle_id)
        kv = self.store.get(model.handle_key(handle_id))
        if kv is None:
            raise KeyNotFound(model.handle_key(handle_id))
        released: list[IPAddress] = []
        for text in Handle.from_json(kv.value).block:
            cidr = ipaddress.ip_network(text)

            def attempt(cidr: IPNetwork = cidr) -> list[IPAddress]:
                found = self._get_block(cidr)
                if found is None:
                    return []
                block, block_kv = found
                ips = block.ips_by_handle(handle_id)
                if not ips:
                    return []
                block.release_by_handle(handle_id)
                if block.empty() and block.affinity is None:
                    self._delete_block(block_kv)
                else:
                    self._update_block(block, block_kv)
                return ips

            ips = _retrying(attempt, f"release of handle {handle_id}")
            released.extend(ips)
            faults.checkpoint("address-released")
            # A handle may overcount (an interrupted assignment): forget blocks that hold nothing for it.
            self._change_handle(handle_id, cidr, -len(ips), drop=not ips)
        return released

    def ips_by_handle(self, handle_id: str) -> list[IPAddress]:
        kv = self.store.get(model.handle_key(handle_id))
        if kv is None:
            return []
        out: list[IPAddress] = []
        for text in Handle.from_json(kv.value).block:
            found = self._get_block(ipaddress.ip_network(text))
            if found is not None:
                out.extend(found[0].ips_by_handle(handle_id))
        return out

    def assignment(self, ip: IPAddress) -> model.Attribute | None:
        """The attribute (handle and owner) of an allocated address, None when it is free."""
        cidr = self._block_for_ip(ip, self.pools.all())
        found = None if cidr is None else self._get_block(cidr)
        return None if found is None else found[0].attribute_of(ip)

    def release_block_affinity(self, host: str, cidr: IPNetwork, require_empty: bool, sequence: int | None = None) -> None:
        found_aff = self._get_affinity(host, cidr)
        if found_aff is None:
            raise KeyNotFound(model.affinity_key(host, cidr))
        _, aff_kv = found_aff
        found = self._get_block(cidr)
        if found is None:
            self._delete_affinity(aff_kv)
            return
        block, kv = found
        if sequence is not None and block.sequence_number != sequence:
            raise _Retry
        if block.affinity is not None and block.affinity != f"host:{host}":
            self._delete_affinity(aff_kv)
            raise _BlockClaimConflict(str(cidr))
        if require_empty and not block.empty():
            raise _NotEmpty(str(cidr))
        aff_kv = self._write_affinity(BlockAffinity(model.STATE_PENDING_DELETION), aff_kv)
        if block.empty():
            self._delete_block(kv)
        else:
            block.affinity = None
            block.affinity_claim_time = None
            self._update_block(block, kv)
        self._delete_affinity(aff_kv)

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
