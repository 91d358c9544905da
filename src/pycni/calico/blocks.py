"""Calico IPAM's storage: blocks, block affinities, handles and the IPAM configuration, read
and written with compare-and-swap (libcalico-go's ipam_block_reader_writer).

Every write names the revision it read. A write that lost a race raises `Retry`, and the
step that made it runs again on fresh data under `retrying` (up to Calico's 100 times).
What to allocate, claim or borrow is the allocator's business (`pycni.calico.ipam`); this
module only keeps the records consistent:

- a block is claimed in three writes: the node's affinity `pending`, the block created with
  `affinity: host:<node>`, the affinity `confirmed` (a crashed claim leaves only a pending
  affinity, which the next claim re-uses or finds stale);
- an allocation is counted in its handle before its block is written (`allocate`), so a
  release by handle always finds every block that may hold one of its addresses; a crash
  between the two leaves a handle that overcounts, which release and GC tolerate;
- a release writes the block first (`store_block`), then the handle: a crash between the
  two leaves the same overcount;
- a block that becomes empty and has no affinity is deleted.
"""

from __future__ import annotations

import datetime
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pycni import faults
from pycni.calico import model
from pycni.calico.datastore import KV, Datastore, KeyExists, KeyNotFound, RevisionConflict
from pycni.calico.model import AllocationBlock, BlockAffinity, Handle, IPAMConfig, IPNetwork
from pycni.spec.errors import CNIError, Code

T = TypeVar("T")
RETRIES = 100


class Retry(Exception):
    """A compare-and-swap lost a race: read again and retry."""


class BlockClaimConflict(Exception):
    """Another node's block is at the CIDR this node wanted to claim."""


class StaleAffinity(Exception):
    """This node's affinity names a block that belongs to another node now."""


class NotEmpty(Exception):
    pass


def retrying(fn: Callable[[], T], what: str) -> T:
    """Run `fn` until it stops raising Retry (a lost compare-and-swap), with a little jitter."""
    for attempt in range(RETRIES):
        try:
            return fn()
        except Retry:
            if attempt > 2:
                time.sleep(random.uniform(0, 0.001 * min(attempt, 20)))
    raise CNIError(Code.TRY_AGAIN_LATER, f"Max retries hit - excessive concurrent IPAM requests ({what})")


def _claim_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class BlockStore:
    def __init__(self, store: Datastore, log: Any = None) -> None:
        self.store = store
        self.log = log

    # -- the IPAM configuration -------------------------------------------------
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
        def write() -> None:
            kv = self.store.get(model.IPAM_CONFIG_KEY)
            try:
                if kv is None:
                    self.store.create(model.IPAM_CONFIG_KEY, cfg.to_json())
                else:
                    self.store.update(model.IPAM_CONFIG_KEY, cfg.to_json(), kv.revision)
            except (KeyExists, RevisionConflict):
                raise Retry from None

        retrying(write, "IPAM configuration")

    # -- blocks --------------------------------------------------------------------
    def block(self, cidr: IPNetwork) -> tuple[AllocationBlock, KV] | None:
        kv = self.store.get(model.block_key(cidr))
        return None if kv is None else (AllocationBlock.from_json(kv.value), kv)

    def blocks(self, version: int | None = None) -> list[AllocationBlock]:
        return [AllocationBlock.from_json(kv.value) for kv in self.store.list(model.blocks_prefix(version))]

    def update_block(self, block: AllocationBlock, kv: KV) -> KV:
        block.sequence_number += 1
        try:
            return self.store.update(kv.key, block.to_json(), kv.revision)
        except (RevisionConflict, KeyNotFound):
            raise Retry from None

    def delete_block(self, kv: KV) -> None:
        try:
            self.store.delete(kv.key, kv.revision)
        except KeyNotFound:
            pass
        except RevisionConflict:
            raise Retry from None

    def store_block(self, block: AllocationBlock, kv: KV) -> None:
        """Write a block back after a release: deleted when it is empty and no node's."""
        if block.empty() and block.affinity is None:
            self.delete_block(kv)
        else:
            self.update_block(block, kv)

    # -- affinities --------------------------------------------------------------------
    def affinity(self, host: str, cidr: IPNetwork) -> tuple[BlockAffinity, KV] | None:
        kv = self.store.get(model.affinity_key(host, cidr))
        return None if kv is None else (BlockAffinity.from_json(kv.value), kv)

    def affine_blocks(self, host: str, version: int) -> list[IPNetwork]:
        out = []
        for kv in self.store.list(model.host_affinities_prefix(host, version)):
            parsed = model.parse_affinity_key(kv.key)
            if parsed is not None:
                out.append(parsed[1])
        return out

    def write_affinity(self, aff: BlockAffinity, kv: KV) -> KV:
        try:
            return self.store.update(kv.key, aff.to_json(), kv.revision)
        except (RevisionConflict, KeyNotFound):
            raise Retry from None

    def delete_affinity(self, kv: KV) -> None:
        try:
            self.store.delete(kv.key, kv.revision)
        except (KeyNotFound, RevisionConflict):
            pass

    def confirm_affinity(self, aff_kv: KV) -> None:
        try:
            self.store.update(aff_kv.key, BlockAffinity(model.STATE_CONFIRMED).to_json(), aff_kv.revision)
        except (RevisionConflict, KeyNotFound):
            current = self.store.get(aff_kv.key)
            if current is None or BlockAffinity.from_json(current.value).state != model.STATE_CONFIRMED:
                raise Retry from None

    def pending_affinity(self, host: str, cidr: IPNetwork) -> KV:
        """The node's affinity to `cidr`, written `pending` unless it is confirmed already."""
        key = model.affinity_key(host, cidr)
        try:
            return self.store.create(key, BlockAffinity(model.STATE_PENDING).to_json())
        except KeyExists:
            found = self.affinity(host, cidr)
            if found is None:
                raise Retry from None
            aff, kv = found
            if aff.state != model.STATE_CONFIRMED:
                return self.write_affinity(BlockAffinity(model.STATE_PENDING), kv)
            return kv

    def claim_affine_block(self, aff_kv: KV, host: str, cidr: IPNetwork) -> tuple[AllocationBlock, KV]:
        """Create the block of a pending affinity, then confirm the affinity."""
        block = AllocationBlock.new(cidr, time.time_ns())
        block.affinity = f"host:{host}"
        block.affinity_claim_time = _claim_time()
        try:
            kv = self.store.create(model.block_key(cidr), block.to_json())
        except KeyExists:
            found = self.block(cidr)
            if found is None:
                raise Retry from None
            if found[0].affinity == block.affinity:
                self.confirm_affinity(aff_kv)
                return found
            self.delete_affinity(aff_kv)
            raise BlockClaimConflict(str(cidr)) from None
        self.confirm_affinity(aff_kv)
        if self.log is not None:
            self.log.info("Claimed IPAM block %s for node %s", cidr, host)
        return block, kv

    def block_from_affinity(self, aff: BlockAffinity, aff_kv: KV, host: str, cidr: IPNetwork) -> tuple[AllocationBlock, KV]:
        """The block an affinity of this node points at, claimed (or its claim finished) if needed."""
        found = self.block(cidr)
        if found is None:
            aff_kv = self.write_affinity(BlockAffinity(model.STATE_PENDING), aff_kv)
            return self.claim_affine_block(aff_kv, host, cidr)
        block, kv = found
        if block.affinity != f"host:{host}":
            self.delete_affinity(aff_kv)
            raise StaleAffinity(str(cidr))
        if aff.state not in (model.STATE_CONFIRMED, ""):
            aff_kv = self.write_affinity(BlockAffinity(model.STATE_PENDING), aff_kv)
            kv = self.update_block(block, kv)
            self.confirm_affinity(aff_kv)
        return block, kv

    def release_block_affinity(self, host: str, cidr: IPNetwork, require_empty: bool, sequence: int | None = None) -> None:
        """Give up the node's affinity to `cidr`: the block goes too when it is empty, else it
        stays without affinity. KeyNotFound when the node has no such affinity."""
        found_aff = self.affinity(host, cidr)
        if found_aff is None:
            raise KeyNotFound(model.affinity_key(host, cidr))
        _, aff_kv = found_aff
        found = self.block(cidr)
        if found is None:
            self.delete_affinity(aff_kv)
            return
        block, kv = found
        if sequence is not None and block.sequence_number != sequence:
            raise Retry
        if block.affinity is not None and block.affinity != f"host:{host}":
            self.delete_affinity(aff_kv)
            raise BlockClaimConflict(str(cidr))
        if require_empty and not block.empty():
            raise NotEmpty(str(cidr))
        aff_kv = self.write_affinity(BlockAffinity(model.STATE_PENDING_DELETION), aff_kv)
        if block.empty():
            self.delete_block(kv)
        else:
            block.affinity = None
            block.affinity_claim_time = None
            self.update_block(block, kv)
        self.delete_affinity(aff_kv)

    # -- handles -----------------------------------------------------------------------
    def handle(self, handle_id: str) -> Handle | None:
        kv = self.store.get(model.handle_key(handle_id))
        return None if kv is None else Handle.from_json(kv.value)

    def handles(self) -> dict[str, tuple[Handle, KV]]:
        return {
            kv.key[len(model.HANDLES_PREFIX) :]: (Handle.from_json(kv.value), kv) for kv in self.store.list(model.HANDLES_PREFIX)
        }

    def change_handle(self, handle_id: str, cidr: IPNetwork, delta: int, drop: bool = False) -> None:
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
                raise Retry from None

        retrying(write, f"handle {handle_id}")

    # -- an allocation: a handle and a block -------------------------------------------
    def allocate(self, block: AllocationBlock, kv: KV, handle_id: str | None, count: int) -> None:
        """Write a block in which `count` addresses were just assigned to `handle_id`: the
        handle counts them first, then the block is written; when the block write loses its
        race, the handle gives the count back (and Retry is raised)."""
        if handle_id is not None:
            self.change_handle(handle_id, block.cidr, count)
            faults.checkpoint("handle-written")
        try:
            self.update_block(block, kv)
        except Retry:
            if handle_id is not None:
                self.change_handle(handle_id, block.cidr, -count)
            raise
        faults.checkpoint("address-allocated")
