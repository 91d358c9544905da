"""Link lookups by name: the kernel finds the name (no dump of every link)."""

from __future__ import annotations

from pycni.net import links, netlink

from ..conftest import NetNS, unique


def test_get_by_name(netns: NetNS) -> None:
    name = unique("pctl")
    netns.run("ip", "link", "add", name, "type", "veth", "peer", "name", "peer0")
    with netlink.route(netns.path) as ipr:
        found = links.get(ipr, name)
        assert found is not None and links.name(found) == name and links.kind(found) == "veth"
        assert links.get(ipr, unique("pctl")) is None
        assert links.get(ipr, "x" * 16) is None  # longer than an interface name can be
        assert links.get(ipr, "") is None


def test_a_lookup_does_not_dump_every_link(netns: NetNS) -> None:
    """With many links present, a lookup by name is one RTM_GETLINK for that name: a dump
    would cost a host with hundreds of containers a parsed message per link, per lookup."""
    for i in range(20):
        netns.run("ip", "link", "add", f"many{i}", "type", "veth", "peer", "name", f"many{i}p")
    with netlink.route(netns.path) as ipr:
        seen: list[str] = []
        original = ipr.link

        def counting(command: str, **kwargs: object) -> object:
            seen.append(command)
            return original(command, **kwargs)

        ipr.link = counting  # type: ignore[method-assign]
        found = links.get(ipr, "many7p")
    assert found is not None and links.name(found) == "many7p" and seen == ["get"]
