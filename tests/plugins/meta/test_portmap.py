"""portmap with real traffic: a TCP server in a container reached through its host port."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import MAIN_IMPLS, ask, free_port, nft_mentions


def portmap(**extra: Any) -> dict[str, Any]:
    return {"type": "portmap", "capabilities": {"portMappings": True}, **extra}


@pytest.mark.parametrize("main", MAIN_IMPLS)
def test_reached_from_loopback_host_address_client_and_neighbour(
    main: str, make_network: Any, make_netns: Any, tcp_server: Any, client_ns: Any
) -> None:
    network = make_network([portmap()], main=main)
    web, neighbour = make_netns(), make_netns()
    port = free_port()
    mappings = {"portMappings": [{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}]}
    att = network.attach(web, mappings)
    other = network.attach(neighbour)
    tcp_server(web, 8080)
    client = client_ns()
    gateway = network.gateway
    # From the host's loopback: masqueraded to the bridge address (route_localnet + SNAT).
    assert ask("127.0.0.1", port) == gateway
    # From a host address we own: the host's own address.
    assert ask(gateway, port) == gateway
    # From another machine (a namespace behind its own link): its address, unchanged.
    assert ask(client.host_address, port, ns=client.ns) == client.address
    # From a neighbour on the same bridge: masqueraded, or its reply would bypass the host.
    assert ask(gateway, port, ns=neighbour) == gateway
    # Hairpin: the container to its own host port.
    assert ask(gateway, port, ns=web) == gateway
    network.check(att)
    network.detach(att)
    assert nft_mentions(att.rt.container_id) == []
    with pytest.raises(OSError):
        ask(gateway, port, timeout=0.5)
    network.detach(other)
