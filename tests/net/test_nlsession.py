"""One netlink socket per namespace per call: `nlsession.session` shares, per context, one
IPRoute per namespace, and our own encoded requests and dumps go through its socket."""

from __future__ import annotations

import socket
import threading
from typing import Any

from pycni.net import links, netlink, nlsession

from ..conftest import NetNS, unique


def test_one_iproute_per_namespace_within_a_session(netns: NetNS) -> None:
    with nlsession.session():
        with netlink.route(None) as host, netlink.route(netns.path) as container:
            with netlink.route(None) as again, nlsession.session(), netlink.route(netns.path) as nested:
                assert again is host and nested is container and host is not container
            sock = host.pycni_sock
            with netlink._socket_for(None) as used:
                assert used is sock  # our own requests take the IPRoute's socket
        assert sock.fileno() != -1  # leaving `route` does not close a shared one
    assert sock.fileno() == -1  # the session does
    assert nlsession.current() is None


def test_without_a_session_each_route_is_its_own() -> None:
    with netlink.route(None) as first:
        pass
    with netlink.route(None) as second:
        assert second is not first
    assert first.pycni_sock.fileno() == -1


def test_concurrent_calls_do_not_share(netns: NetNS) -> None:
    """A thread (a call the agent runs beside this one, or a worker a call starts) has its own
    context: it never sees this session's sockets."""
    seen: dict[str, Any] = {}

    def other() -> None:
        seen["session"] = nlsession.current()
        with nlsession.session(), netlink.route(netns.path) as ipr:
            seen["ipr"] = ipr

    with nlsession.session(), netlink.route(netns.path) as mine:
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert seen["session"] is None and seen["ipr"] is not mine


def test_shared_socket_serves_pyroute2_and_our_own_messages(netns: NetNS) -> None:
    """Kernel-filtered dumps and requests we encode, interleaved with pyroute2's own calls on
    the same socket: each gets its own answers, and the socket is left as pyroute2 set it."""
    name = unique("pctl")
    netns.run("ip", "link", "add", name, "type", "veth", "peer", "name", "peer0")
    netns.run("ip", "addr", "add", "10.250.7.1/24", "dev", name)
    netns.run("ip", "link", "set", name, "up")
    with nlsession.session(), netlink.route(netns.path) as ipr:
        timeout = ipr.pycni_sock.gettimeout()
        for _ in range(3):
            found = links.get(ipr, name)
            assert found is not None
            dumped = netlink.link_addresses(ipr, found["index"], socket.AF_INET)
            assert [m.get_attr("IFA_ADDRESS") for m in dumped] == ["10.250.7.1"]
            assert [r.get_attr("RTA_DST") for r in netlink.routes(ipr, socket.AF_INET, table=254)] == ["10.250.7.0"]
        assert ipr.pycni_sock.gettimeout() == timeout
        assert netlink.route_oif(netns.path, "10.250.7.9") == found["index"]
        assert links.get(ipr, name) is not None  # pyroute2 still reads its own answers


def test_route_oif_agrees_with_pyroute2(netns: NetNS) -> None:
    netns.run("ip", "link", "set", "lo", "up")
    with netlink.route(netns.path) as ipr:
        expected = ipr.route("get", dst="127.0.0.1")[0].get_attr("RTA_OIF")
    assert netlink.route_oif(netns.path, "127.0.0.1") == expected
    try:
        netlink.route_oif(netns.path, "192.0.2.1")  # no route at all: the kernel's refusal
    except OSError as exc:
        assert exc.errno is not None
    else:
        raise AssertionError("a lookup without a route succeeded")
