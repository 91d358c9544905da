"""ipMasq's record of its rules' handles, taken from the kernel's announcements of the
transaction (no echo, no listing): the same handles a listing of the chain shows."""

from __future__ import annotations

import ipaddress
import secrets

from pycni.net import ipmasq, nft


def listed(instance: str) -> dict[int, str | None]:
    rules = [o["rule"] for o in nft.list_objects(f"chain inet {ipmasq.TABLE} {ipmasq.CHAIN}") if "rule" in o]
    return {int(r["handle"]): ipmasq._saddr(r) for r in rules if str(r.get("comment", "")).startswith(instance)}


def test_apply_records_the_handles_of_exactly_its_rules() -> None:
    network = f"pct-masq-{secrets.token_hex(4)}"
    v4, v6 = ipaddress.ip_interface("10.231.7.3/24"), ipaddress.ip_interface("fd31::3/64")
    mine = ipmasq.IPMasq(network, "eth0", "mine", [v4, v6])
    other = ipmasq.IPMasq(network, "eth0", "other", [ipaddress.ip_interface("10.231.7.4/24")])
    try:
        other.apply()
        mine.apply()
        record = ipmasq._read_record(mine.instance)
        assert record is not None and record == listed(mine.instance)
        assert sorted(record.values()) == ["10.231.7.3", "fd31::3"]
        mine.apply()  # again (a repeated ADD): the old rules replaced, the record follows
        again = ipmasq._read_record(mine.instance)
        assert again == listed(mine.instance) and set(again).isdisjoint(record)
        assert mine.differences() == []
        mine.remove()
        assert listed(mine.instance) == {} and ipmasq._read_record(mine.instance) is None
        assert len(listed(other.instance)) == 1  # the other attachment's rule untouched
    finally:
        mine.remove()
        other.remove()
