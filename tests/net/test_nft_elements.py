"""Set and map elements written as netlink messages (`nft.change_elements`): the same
elements libnftables would write, one transaction, all or nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pycni.net import nft

TABLE = "pct_elements"


@pytest.fixture
def table() -> Iterator[str]:
    nft.run_text(
        f"add table ip {TABLE}\n"
        f"add set ip {TABLE} hairpins {{ type iface_index . inet_proto . inet_service; }}\n"
        f"add map ip {TABLE} targets {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}\n"
    )
    yield TABLE
    nft.run_text(f"delete table ip {TABLE}\n")


def key(ifindex: int | None, port: int) -> bytes:
    fields = [nft.key_field("tcp", "proto"), nft.key_field(port, "port")]
    return nft.concat(*([nft.key_field(ifindex, "ifindex")] if ifindex is not None else []), *fields)


def test_create_add_delete_as_libnftables_would(table: str) -> None:
    target = nft.concat(nft.key_field("10.1.2.3", "addr"), nft.key_field(80, "port"))
    nft.change_elements(
        [
            nft.ElementChange("create", "ip", table, "targets", key(None, 8080), target, "tag-a"),
            nft.ElementChange("add", "ip", table, "hairpins", key(7, 8080), None, "tag-a"),
        ],
        "test",
    )
    assert nft.lookup("ip", table, "targets", key(None, 8080)) == nft.Element("tag-a", target)
    assert nft.lookup("ip", table, "hairpins", key(7, 8080)) == nft.Element("tag-a", None)
    text = str(nft.list_objects(f"map ip {table} targets"))  # libnftables reads them back
    assert "8080" in text and "10.1.2.3" in text and "tag-a" in text, text
    nft.change_elements([nft.ElementChange("add", "ip", table, "hairpins", key(7, 8080), None, "tag-a")], "again")

    # A create of a taken key fails the whole transaction: the other element is not added.
    with pytest.raises(nft.NftError, match="exists"):
        nft.change_elements(
            [
                nft.ElementChange("add", "ip", table, "hairpins", key(8, 9090), None, "tag-b"),
                nft.ElementChange("create", "ip", table, "targets", key(None, 8080), target, "tag-b"),
            ],
            "conflict",
        )
    assert nft.lookup("ip", table, "hairpins", key(8, 9090)) is None
    assert nft.lookup("ip", table, "targets", key(None, 8080)) == nft.Element("tag-a", target)

    nft.change_elements(
        [
            nft.ElementChange("delete", "ip", table, "targets", key(None, 8080)),
            nft.ElementChange("delete", "ip", table, "hairpins", key(7, 8080)),
        ],
        "delete",
    )
    assert nft.lookup("ip", table, "targets", key(None, 8080)) is None
    assert nft.lookup("ip", table, "hairpins", key(7, 8080)) is None
