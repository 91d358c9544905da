"""Qdisc lookups by link and parent: the kernel finds the one qdisc (a qdisc dump is not
filtered by link, so it would return every qdisc of a host with hundreds of pods)."""

from __future__ import annotations

from typing import Any

import pytest

from pycni.net import netlink, tc

from ..conftest import NetNS

TBF = tc.TBF.from_bits(10_000_000, 100_000)


def test_root_tbf_and_ingress_looked_up_by_link(netns: NetNS) -> None:
    netns.run("ip", "link", "add", "qa", "type", "veth", "peer", "name", "qb")
    with netlink.route(netns.path) as ipr:
        a, b = (ipr.link_lookup(ifname=name)[0] for name in ("qa", "qb"))
        assert tc.root_tbf(ipr, a) is None and not tc.has_ingress(ipr, a)
        tc.add_tbf(ipr, a, TBF)
        tc.add_ingress_redirect(ipr, a, b)
        assert tc.matches(tc.root_tbf(ipr, a), TBF) and tc.has_ingress(ipr, a)
        assert tc.root_tbf(ipr, b) is None and not tc.has_ingress(ipr, b)  # the peer's are not a's
        for _ in range(2):  # DEL is idempotent
            tc.delete_root_tbf(ipr, a)
            tc.delete_ingress(ipr, a)
        assert tc.root_tbf(ipr, a) is None and not tc.has_ingress(ipr, a)


def test_a_lookup_decodes_one_qdisc_whatever_the_host_holds(netns: NetNS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted, not timed: with 30 links shaped, a lookup asks the kernel for one qdisc
    (no dump) and decodes one message."""
    with netlink.route(netns.path) as ipr:
        for i in range(30):
            netns.run("ip", "link", "add", f"qs{i}", "type", "veth", "peer", "name", f"qs{i}p")
            tc.add_tbf(ipr, ipr.link_lookup(ifname=f"qs{i}")[0], TBF)
        target = ipr.link_lookup(ifname="qs7")[0]
        requests: list[tuple[int, int]] = []
        original = netlink._request

        def counting(ipr_: Any, msg_type: int, flags: int, body: bytes) -> list[Any]:
            found = original(ipr_, msg_type, flags, body)
            requests.append((flags & netlink.NLM_F_DUMP, len(found)))
            return found

        monkeypatch.setattr(netlink, "_request", counting)
        assert tc.matches(tc.root_tbf(ipr, target), TBF)
    assert requests == [(0, 1)]
