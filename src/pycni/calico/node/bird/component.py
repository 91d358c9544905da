"""The BGP component: confd's job (render BIRD's configuration from the view, only rewriting
and reloading when the text changes) and BIRD's supervision, for IPv4 (`bird`, bird.ctl) and,
when the node has an IPv6 address, IPv6 (`bird6`, bird6.ctl).

Files go to CALICO_VAR_RUN_DIR/confd/config (Calico: /etc/calico/confd/config), written
whole through a temporary file, so BIRD never reads half a configuration.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from pycni.calico import model
from pycni.calico.datastore import KV, WatchEvent
from pycni.calico.node import kernel
from pycni.calico.node.bird import control
from pycni.calico.node.bird.confd import Generator
from pycni.calico.node.bird.process import BirdMissing, BirdProcess
from pycni.calico.node.component import NodeContext
from pycni.calico.node.view import BGPCONFIG_PREFIX, BGPPEERS_PREFIX, NODES_PREFIX, POOLS_PREFIX, ClusterView
from pycni.net import netlink

log = logging.getLogger("calico-node")


def _write_if_changed(path: str, text: str) -> bool:
    try:
        with open(path) as fh:
            if fh.read() == text:
                return False
    except OSError:
        pass
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return True


class BirdComponent:
    name: str = "bird"
    prefixes: tuple[str, ...] = (NODES_PREFIX, POOLS_PREFIX, model.HOSTS_PREFIX, BGPCONFIG_PREFIX, BGPPEERS_PREFIX)

    def __init__(self, ctx: NodeContext, confd_dir: str, run_dir: str, binaries: dict[int, str], router_id: str = "") -> None:
        self.ctx = ctx
        self.confd_dir = confd_dir
        self.run_dir = run_dir
        self.binaries = binaries
        self.view = ClusterView()
        self.generator = Generator(self.view, ctx.nodename, router_id)
        self.birds: dict[int, BirdProcess] = {}
        self.problem = "not configured yet"
        if not binaries.get(4):
            raise BirdMissing("bird")

    def socket(self, version: int) -> str:
        return os.path.join(self.run_dir, "bird.ctl" if version == 4 else "bird6.ctl")

    def _versions(self) -> list[int]:
        me = self.view.nodes.get(self.ctx.nodename)
        if me is None:
            return [4]
        out = [4] if me.ipv4 is not None or me.ipv6 is None else []
        if me.ipv6 is not None and self.binaries.get(6):
            out.append(6)
        return out or [4]

    def resync(self, listing: Sequence[KV]) -> None:
        self.view.load(listing)
        self.reconcile()

    def on_events(self, events: Sequence[WatchEvent]) -> None:
        if self.view.apply_events(events):
            self.reconcile()

    def reconcile(self) -> None:
        if self.ctx.nodename not in self.view.nodes:
            self.problem = f"the Node resource {self.ctx.nodename} is missing"
            return
        os.makedirs(self.confd_dir, exist_ok=True)
        problems = []
        for version in self._versions():
            changed = False
            for name, text in self.generator.render(version).by_name(version).items():
                changed = _write_if_changed(os.path.join(self.confd_dir, name), text) or changed
            bird = self.birds.get(version)
            if bird is None:
                name = "bird" if version == 4 else "bird6"
                bird = BirdProcess(
                    self.binaries[version], os.path.join(self.confd_dir, f"{name}.cfg"), self.socket(version), name
                )
                self.birds[version] = bird
                bird.start()
            elif changed:
                bird.reload()
            if bird.problem and bird.problem != "not started":
                problems.append(bird.problem)
        self.problem = "; ".join(problems)

    def ready(self) -> str:
        problems = [b.problem for b in self.birds.values() if b.problem]
        if not self.birds:
            return self.problem or "BIRD not started"
        return self.problem or "; ".join(problems)

    def peers(self, version: int = 4) -> list[control.Peer]:
        return control.bgp_peers(self.socket(version), version)

    def close(self, *, cleanup: bool = False) -> None:
        for bird in self.birds.values():
            bird.stop()
        if cleanup:
            # BIRD persists its routes on purpose; with cleanup they go too.
            with netlink.route() as ipr:
                for version in (4, 6):
                    for route in kernel.kernel_routes(ipr, version, kernel.BIRD_PROTO).values():
                        kwargs = {"dst": str(route.dst), "proto": kernel.BIRD_PROTO, "table": kernel.MAIN_TABLE}
                        if route.blackhole:
                            kwargs["type"] = kernel.RTN_BLACKHOLE
                        try:
                            ipr.route("del", family=kernel.family_of(version), **kwargs)
                        except netlink.netlink_error():
                            pass
