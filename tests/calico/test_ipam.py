"""Calico IPAM on the embedded store: pools, blocks, affinities, handles, borrowing."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycni.calico import model
from pycni.calico.datastore import Datastore, DatastoreSettings, open_datastore
from pycni.calico.ipam import IPAM
from pycni.calico.model import IPAMConfig
from pycni.spec.errors import CNIError, Code


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Datastore]:
    ds = open_datastore(DatastoreSettings(path=str(tmp_path / "calico.db")))
    try:
        yield ds
    finally:
        ds.close()


def make_pool(ipam: IPAM, name: str, cidr: str, block_size: int, **spec: object) -> None:
    ipam.pools.create({"metadata": {"name": name}, "spec": {"cidr": cidr, "blockSize": block_size, **spec}})


def attrs(node: str, pod: str = "") -> dict[str, str]:
    out = {"node": node, "timestamp": "t"}
    if pod:
        out.update(pod=pod, namespace="default")
    return out


def test_first_assignment_creates_the_default_pool_and_claims_a_block(store: Datastore) -> None:
    ipam = IPAM(store, env={"CALICO_IPV4POOL_CIDR": "10.244.0.0/16"})
    v4, v6 = ipam.auto_assign(1, 0, "net.c1", attrs("node1", "pod1"), "node1")
    assert v6 is None and v4 is not None and len(v4.ips) == 1
    ip = v4.ips[0]
    assert ip.network.prefixlen == 26 and ip.ip in ipaddress.ip_network("10.244.0.0/16")
    pool = ipam.pools.resources.get("default-ipv4-ippool")
    assert pool is not None and pool["spec"]["natOutgoing"] is True and pool["spec"]["blockSize"] == 26
    # The block, its affinity (confirmed) and the handle, in Calico's key layout.
    block_kv = store.get(model.block_key(ip.network))
    assert block_kv is not None
    block = json.loads(block_kv.value)
    assert block["affinity"] == "host:node1" and block["cidr"] == str(ip.network)
    attr = block["attributes"][block["allocations"][block["unallocated"][0] - 1] or 0]
    assert attr["handle_id"] == "net.c1" and attr["secondary"]["pod"] == "pod1" and attr["secondary"]["node"] == "node1"
    aff = store.get(f"/calico/ipam/v2/host/node1/ipv4/block/{str(ip.network).replace('/', '-')}")
    assert aff is not None and json.loads(aff.value)["state"] == "confirmed"
    handle = store.get("/calico/ipam/v2/handle/net.c1")
    assert handle is not None and json.loads(handle.value)["block"] == {str(ip.network): 1}


def test_default_pool_is_192_168_when_no_cidr_is_given(store: Datastore) -> None:
    ipam = IPAM(store)
    v4, _ = ipam.auto_assign(1, 0, "net.c", attrs("n"), "n")
    assert v4 is not None and v4.ips[0].ip in ipaddress.ip_network("192.168.0.0/16")


def test_affine_block_first_then_a_new_block(store: Datastore) -> None:
    ipam = IPAM(store)
    make_pool(ipam, "p", "10.1.0.0/24", 28)
    v4, _ = ipam.auto_assign(20, 0, "net.a", attrs("n1"), "n1")
    assert v4 is not None and len(v4.ips) == 20
    blocks = {ip.network for ip in v4.ips}
    assert len(blocks) == 2  # 16 in the first block, 4 in a second one
    assert all(b.affinity == "host:n1" for b in ipam.blocks())
    assert len(set(v4.ips)) == 20


def test_release_by_handle_keeps_affine_block_frees_borrowed_empty_block(store: Datastore) -> None:
    ipam = IPAM(store)
    make_pool(ipam, "p", "10.2.0.0/27", 28)  # two blocks
    ipam.auto_assign(16, 0, "net.owner1", attrs("n1"), "n1")
    ipam.auto_assign(10, 0, "net.owner2", attrs("n2"), "n2")
    # No free block is left: n3 borrows from n2's block.
    v4, _ = ipam.auto_assign(2, 0, "net.borrower", attrs("n3"), "n3")
    assert v4 is not None and len(v4.ips) == 2
    assert ipam.affine_blocks("n3", 4) == []
    assert sorted(str(ip.ip) for ip in v4.ips) == sorted(str(ip) for ip in ipam.ips_by_handle("net.borrower"))
    released = ipam.release_by_handle("net.borrower")
    assert len(released) == 2 and store.get(model.handle_key("net.borrower")) is None
    # A block that loses its affinity and then its last address is deleted.
    n2_block = ipam.affine_blocks("n2", 4)[0]
    ipam.release_block_affinity("n2", n2_block, require_empty=False)
    assert store.get(model.block_key(n2_block)) is not None
    ipam.release_by_handle("net.owner2")
    assert store.get(model.block_key(n2_block)) is None
    # An empty affine block stays (it is the node's).
    ipam.release_by_handle("net.owner1")
    assert store.get(model.block_key(ipam.affine_blocks("n1", 4)[0])) is not None


def test_strict_affinity_exhaustion_is_clear(store: Datastore) -> None:
    ipam = IPAM(store)
    make_pool(ipam, "p", "10.3.0.0/28", 28)
    ipam.set_config(IPAMConfig(strict_affinity=True, auto_allocate_blocks=True))
    ipam.auto_assign(1, 0, "net.a", attrs("n1"), "n1")
    v4, _ = ipam.auto_assign(1, 0, "net.b", attrs("n2"), "n2")
    assert v4 is not None and v4.ips == []
    assert v4.partial_error() == (
        "Assigned 0 out of 1 requested IPv4 addresses; No more free affine blocks and strict affinity enabled"
    )


def test_pool_exhaustion_without_strict_affinity(store: Datastore) -> None:
    ipam = IPAM(store)
    make_pool(ipam, "p", "10.4.0.0/28", 28)
    v4, _ = ipam.auto_assign(16, 0, "net.a", attrs("n1"), "n1")
    assert v4 is not None and len(v4.ips) == 16
    v4, _ = ipam.auto_assign(1, 0, "net.b", attrs("n2"), "n2")
    assert v4 is not None and v4.partial_error() == (
        "Assigned 0 out of 1 requested IPv4 addresses; No IPs available in pools: [10.4.0.0/28]"
    )


def test_max_blocks_per_host(store: Datastore) -> None:
    ipam = IPAM(store)
    make_pool(ipam, "p", "10.5.0.0/24", 28)
    ipam.set_config(IPAMConfig(strict_affinity=True, auto_allocate_blocks=True, max_blocks_per_host=1))
    v4, _ = ipam.auto_assign(17, 0, "net.a", attrs("n1"), "n1")
    assert v4 is not None and len(v4.ips) == 16
    assert "limit of 1 blocks reached for this node" in v4.partial_error()
    with pytest.raises(ValueError, match="requires StrictAffinity"):
        ipam.set_config(IPAMConfig(max_blocks_per_host=2))


def test_requested_pools_disabled_pools_and_node_selectors(store: Datastore) -> None:
    ipam = IPAM(store)
    make_pool(ipam, "a", "10.6.0.0/24", 26)
    make_pool(ipam, "off", "10.7.0.0/24", 26, disabled=True)
    make_pool(ipam, "rack1", "10.8.0.0/24", 26, nodeSelector='rack == "1"')
    v4, _ = ipam.auto_assign(1, 0, "net.a", attrs("n1"), "n1", v4_pools=[ipaddress.ip_network("10.8.0.0/24")])
    assert v4 is not None and v4.ips[0].ip in ipaddress.ip_network("10.8.0.0/24")  # requested pools ignore selectors
    with pytest.raises(CNIError) as err:
        ipam.auto_assign(1, 0, "net.b", attrs("n1"), "n1", v4_pools=[ipaddress.ip_network("10.7.0.0/24")])
    assert err.value.code == Code.INVALID_NETWORK_CONFIG and "10.7.0.0/24" in err.value.msg
    v4, _ = ipam.auto_assign(4, 0, "net.c", attrs("n2"), "n2")
    assert v4 is not None and all(ip.ip in ipaddress.ip_network("10.6.0.0/24") for ip in v4.ips)


def test_ipv6_and_dual_stack(store: Datastore) -> None:
    ipam = IPAM(store)
    make_pool(ipam, "v4", "10.9.0.0/24", 26)
    make_pool(ipam, "v6", "fd00:9::/120", 122)
    v4, v6 = ipam.auto_assign(1, 1, "net.ds", attrs("n1"), "n1")
    assert v4 is not None and v6 is not None
    assert v6.ips[0].network.prefixlen == 122 and v6.ips[0].ip in ipaddress.ip_network("fd00:9::/120")
    assert len(ipam.release_by_handle("net.ds")) == 2


def test_default_ipv6_pool_is_a_random_ula(store: Datastore) -> None:
    ipam = IPAM(store)
    _, v6 = ipam.auto_assign(0, 1, "net.v6", attrs("n1"), "n1")
    assert v6 is not None and v6.ips[0].ip in ipaddress.ip_network("fd00::/8") and v6.ips[0].network.prefixlen == 122


def test_assign_ip_and_release_ips(store: Datastore) -> None:
    ipam = IPAM(store)
    make_pool(ipam, "p", "10.10.0.0/24", 26)
    ip = ipaddress.ip_address("10.10.0.77")
    ipam.assign_ip(ip, "net.fixed", attrs("n1"), "n1")
    attr = ipam.assignment(ip)
    assert attr is not None and attr.handle_id == "net.fixed"
    with pytest.raises(CNIError) as err:
        ipam.assign_ip(ip, "net.other", attrs("n1"), "n1")
    assert err.value.code == Code.CONFLICT
    assert ipam.release_ips([ip]) == []
    assert ipam.assignment(ip) is None
    assert ipam.release_ips([ip]) == [ip]
    assert store.get(model.handle_key("net.fixed")) is None


def test_utilization(store: Datastore) -> None:
    ipam = IPAM(store)
    make_pool(ipam, "p", "10.11.0.0/24", 26)
    ipam.auto_assign(3, 0, "net.a", attrs("n1"), "n1")
    usage = {u.name: u for u in ipam.utilization()}
    assert usage["p"].capacity == 256 and usage["p"].in_use == 3 and len(usage["p"].blocks) == 1
    assert usage["orphaned allocation blocks"].blocks == []
