"""The fault-injection lab: our plugins installed as launchers, an agent that can be killed and
restarted, the chains under test, and the crash case a runtime goes through.

A case (`crash_case`) is what a node sees when a plugin dies in the middle of a call:

1. a fresh container namespace and container ID; a snapshot of the host (`hoststate`);
2. ADD of the whole chain through `pycni.runtime.CNIConfig`, with `PYCNI_FAULT=<point>` in
   the plugins' environment: the process that reaches the point is SIGKILLed (the plugin's
   own, or the agent serving it); the runtime sees ADD fail and has no cached result;
3. what a runtime does then: DEL through `CNIConfig`, from the configuration, the container
   ID and the interface name alone (in-process, or through the agent, restarted if killed);
4. a snapshot again: it must equal the first (the container namespace left with `lo` only).

A DEL case kills DEL instead (after a complete ADD) and repeats DEL, as a runtime does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycni import faults, launcher
from pycni.runtime import CNIConfig, GCArgs, RuntimeConf
from pycni.spec.config import NetworkConfigList
from pycni.spec.errors import CNIError

from ..agent.conftest import answers
from ..conftest import NetNS, unique, unique_subnet, unique_subnet6
from . import hoststate
from .hoststate import Places

REPO = Path(__file__).resolve().parents[2]
CALL_TIMEOUT = 60.0  # a plugin (or the agent's call) that takes longer is wedged
LIMITS = {"ingressRate": 80_000_000, "ingressBurst": 1_000_000, "egressRate": 80_000_000, "egressBurst": 1_000_000}


# -- the agent -----------------------------------------------------------------------


@dataclass
class Agent:
    """A real `pycni agent` on the lab's socket; `ensure` (re)starts it after it was killed."""

    socket: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure(self) -> None:
        if self.alive():
            return
        argv = [sys.executable, "-m", "pycni.cli.main", "agent", "--socket", str(self.socket)]
        argv += ["--log-file", str(self.log), "--call-timeout", str(CALL_TIMEOUT), "--enable-fault-injection"]
        self.proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        deadline = time.monotonic() + 60
        while not answers(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not start (exit {self.proc.poll()}); see {self.log}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the lab -----------------------------------------------------------------------------


class Lab:
    """Launchers of this installation (handing calls to the lab's agent), a runtime cache, a log."""

    def __init__(self) -> None:
        # Short: a Unix socket path has at most 107 bytes (pytest's tmp_path can be longer).
        self.root = Path(tempfile.mkdtemp(prefix="pct-faults-", dir="/tmp"))
        self.bin = self.root / "bin"
        self.cache = self.root / "cache"
        self.agent = Agent(self.root / "agent.sock", self.root / "agent.log")
        launcher.install(str(self.bin), agent_socket=str(self.agent.socket))

    def close(self) -> None:
        self.agent.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def env(self, chain: Chain, agent: bool, **extra: str) -> dict[str, str]:
        """A plugin's environment; without `agent`, the launchers run calls in-process."""
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYCNI_LOG_FILE": str(self.root / "plugins.log")}
        env.update(chain.env)
        if not agent:
            env["PYCNI_AGENT"] = "off"
        env.update(extra)
        return env

    def runtime(self, env: dict[str, str]) -> CNIConfig:
        return CNIConfig([str(self.bin)], cache_dir=str(self.cache), timeout=CALL_TIMEOUT, base_env=env)


# -- chains ---------------------------------------------------------------------------------


@dataclass
class Attachment:
    chain: Chain
    container_id: str
    ns: NetNS
    ifname: str = "eth0"
    port: int = 0
    device: str = ""  # host-device: the host interface lent to it
    address: str = ""  # static IPAM: its address

    def rt(self) -> RuntimeConf:
        return RuntimeConf(self.container_id, self.ns.path, self.ifname, list(self.chain.cni_args), self.chain.caps(self))

    def net(self) -> NetworkConfigList:
        return NetworkConfigList.from_bytes(json.dumps(self.chain.conf_for(self)).encode())


@dataclass
class Chain:
    """A network configuration list under test and where its plugins keep state."""

    kind: str
    network: str
    conf: dict[str, Any]
    places: Places
    env: dict[str, str] = field(default_factory=dict)
    cni_args: list[tuple[str, str]] = field(default_factory=list)
    capabilities: Callable[[Attachment], dict[str, Any]] = lambda _att: {}
    per_attachment: Callable[[Attachment, dict[str, Any]], None] | None = None
    prepare: Callable[[Attachment], None] | None = None
    release: Callable[[Attachment], None] | None = None
    teardown: list[Callable[[], None]] = field(default_factory=list)
    residents: list[Attachment] = field(default_factory=list)
    lends_devices: bool = False  # host-device: GC takes the device back from a container that stays
    ports: int = field(default_factory=lambda: 20000 + random.randrange(30000))

    def caps(self, att: Attachment) -> dict[str, Any]:
        return self.capabilities(att)

    def conf_for(self, att: Attachment) -> dict[str, Any]:
        conf = json.loads(json.dumps(self.conf))
        if self.per_attachment is not None:
            self.per_attachment(att, conf)
        return conf

    def new_attachment(self) -> Attachment:
        name = unique("pct-ns-", 24)
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.ports += 1
        att = Attachment(self, unique("pctc", 20), NetNS(name), port=self.ports)
        if self.prepare is not None:
            self.prepare(att)
        return att

    def close(self) -> None:
        for step in self.teardown:
            step()

    def discard(self, att: Attachment) -> None:
        subprocess.run(["ip", "netns", "del", att.ns.name], capture_output=True, check=False)
        if self.release is not None:
            self.release(att)


def _sh(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


def _delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def _port_mappings(att: Attachment) -> dict[str, Any]:
    return {"portMappings": [{"hostPort": att.port, "containerPort": 80, "protocol": "tcp"}]}


def _host_local(root: Path, network: str, dual: bool = True) -> dict[str, Any]:
    ranges = [[{"subnet": unique_subnet()}]] + ([[{"subnet": unique_subnet6()}]] if dual else [])
    routes = [{"dst": "0.0.0.0/0"}] + ([{"dst": "::/0"}] if dual else [])
    return {"type": "host-local", "ranges": ranges, "routes": routes, "dataDir": str(root / f"ipam-{network}")}


def _meta(root: Path, network: str, *types: str) -> list[dict[str, Any]]:
    plugins: dict[str, dict[str, Any]] = {
        "portmap": {"type": "portmap", "capabilities": {"portMappings": True}},
        "bandwidth": {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        "tuning": {
            "type": "tuning",
            "dataDir": str(root / f"tuning-{network}"),
            "sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"},
            "txQLen": 500,
        },
        "firewall": {"type": "firewall", "ingressPolicy": "isolated"},
    }
    return [plugins[t] for t in types]


def _places(lab: Lab, root: Path, network: str, *more: str) -> Places:
    directories = [str(root / f"ipam-{network}"), str(root / f"tuning-{network}"), str(lab.cache), *more]
    return Places(directories=[*directories, f"/run/pycni/portmap/{network}", f"/run/cni/host-device/{network}"])


def _caps(*names: str) -> Callable[[Attachment], dict[str, Any]]:
    def caps(att: Attachment) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "portmap" in names:
            out.update(_port_mappings(att))
        if "bandwidth" in names:
            out["bandwidth"] = LIMITS
        if "static" in names:
            out["ips"] = [att.address]
        return out

    return caps


def bridge_chain(lab: Lab, root: Path, meta: tuple[str, ...] = ("portmap", "bandwidth", "tuning", "firewall")) -> Chain:
    """bridge (ipMasq, macspoofchk) + host-local (dual-stack), then the meta plugins."""
    network, bridge = unique("pct-fb-", 20), unique("pctbr")
    main = {
        "type": "bridge",
        "bridge": bridge,
        "isGateway": True,
        "ipMasq": True,
        "macspoofchk": True,
        "ipam": _host_local(root, network),
    }
    conf = {"cniVersion": "1.1.0", "name": network, "plugins": [main, *_meta(root, network, *meta)]}
    chain = Chain("bridge", network, conf, _places(lab, root, network), capabilities=_caps(*meta))
    chain.teardown.append(lambda: _delete_link(bridge))
    return chain


def ptp_chain(lab: Lab, root: Path, meta: tuple[str, ...] = (), dual: bool = True) -> Chain:
    """ptp (ipMasq) + host-local (dual-stack), then the meta plugins."""
    network = unique("pct-fp-", 20)
    main = {"type": "ptp", "ipMasq": True, "mtu": 1400, "ipam": _host_local(root, network, dual)}
    conf = {"cniVersion": "1.1.0", "name": network, "plugins": [main, *_meta(root, network, *meta)]}
    return Chain("ptp", network, conf, _places(lab, root, network), capabilities=_caps(*meta))


def macvlan_chain(lab: Lab, root: Path, meta: tuple[str, ...] = (), dual: bool = True) -> Chain:
    """macvlan (bridge mode, on a veth of the host) + host-local (dual-stack)."""
    network, master, peer = unique("pct-fm-", 20), unique("pctm"), unique("pctm")
    _sh("ip", "link", "add", master, "type", "veth", "peer", "name", peer)
    _sh("ip", "link", "set", master, "up")
    _sh("ip", "link", "set", peer, "up")
    main = {"type": "macvlan", "master": master, "mode": "bridge", "ipam": _host_local(root, network, dual)}
    conf = {"cniVersion": "1.1.0", "name": network, "plugins": [main, *_meta(root, network, *meta)]}
    chain = Chain("macvlan", network, conf, _places(lab, root, network), capabilities=_caps(*meta))
    chain.teardown.append(lambda: _delete_link(master))
    return chain


def calico_chain(lab: Lab, root: Path, meta: tuple[str, ...] = ("portmap", "bandwidth")) -> Chain:
    """calico + calico-ipam (dual-stack) on an embedded datastore, then the meta plugins."""
    from ..plugins.main.test_calico import calico_conf, pool_env

    network = unique("pct-fc-", 20)
    state = root / f"calico-{network}"
    state.mkdir(parents=True)
    main = calico_conf(state, ipam={"type": "calico-ipam", "assign_ipv6": "true"}, log_level="info")
    del main["cniVersion"], main["name"]
    conf = {"cniVersion": "1.1.0", "name": network, "plugins": [main, *_meta(root, network, *meta)]}
    places = _places(lab, root, network, str(state / "journal"))
    places.datastores.append(str(state / "calico.db"))
    env = pool_env(unique_subnet(24), unique_subnet6().replace("/64", "/48"))
    return Chain("calico", network, conf, places, env=env, capabilities=_caps(*meta))


def host_device_chain(lab: Lab, root: Path) -> Chain:
    """host-device (a veth of the host lent to each container, with an address of its own) + static."""
    network = unique("pct-fd-", 20)
    subnet = ipaddress.ip_network(unique_subnet(16), strict=False)
    hosts = subnet.hosts()

    def prepare(att: Attachment) -> None:
        att.device, peer = unique("pctd"), unique("pctd")
        _sh("ip", "link", "add", att.device, "type", "veth", "peer", "name", peer)
        _sh("ip", "addr", "add", f"{next(hosts)}/32", "dev", att.device)
        _sh("ip", "link", "set", att.device, "up")
        att.address = f"{next(hosts)}/{subnet.prefixlen}"

    def release(att: Attachment) -> None:
        _delete_link(att.device)

    def per_attachment(att: Attachment, conf: dict[str, Any]) -> None:
        conf["plugins"][0]["device"] = att.device

    main = {"type": "host-device", "ipam": {"type": "static"}, "capabilities": {"ips": True}}
    conf = {"cniVersion": "1.1.0", "name": network, "plugins": [main]}
    return Chain(
        "host-device",
        network,
        conf,
        _places(lab, root, network),
        capabilities=_caps("static"),
        per_attachment=per_attachment,
        prepare=prepare,
        release=release,
        lends_devices=True,
    )


def tap_chain(lab: Lab, root: Path) -> Chain:
    """tap (made inside the container) + host-local (IPv4), then tuning."""
    network = unique("pct-ft-", 20)
    main = {"type": "tap", "mtu": 1400, "ipam": _host_local(root, network, dual=False)}
    conf = {"cniVersion": "1.1.0", "name": network, "plugins": [main, *_meta(root, network, "tuning")]}
    return Chain("tap", network, conf, _places(lab, root, network))


BUILDERS: dict[str, Callable[[Lab, Path], Chain]] = {
    "bridge": bridge_chain,
    "ptp": ptp_chain,
    "macvlan": macvlan_chain,
    "calico": calico_chain,
    "host-device": host_device_chain,
    "tap": tap_chain,
}


# -- running calls ----------------------------------------------------------------------------


def add(lab: Lab, att: Attachment, agent: bool = False, **extra: str) -> Any:
    return lab.runtime(lab.env(att.chain, agent, **extra)).add_network_list(att.net(), att.rt())


def delete(lab: Lab, att: Attachment, agent: bool = False, **extra: str) -> None:
    lab.runtime(lab.env(att.chain, agent, **extra)).del_network_list(att.net(), att.rt())


def places_of(att: Attachment) -> Places:
    places = att.chain.places
    return Places(places.directories, places.datastores, [*places.namespaces, att.ns.path])


def points(lab: Lab, chain: Chain, command: str = "ADD") -> list[str]:
    """The fault points (`point#n`) one call of `command` passes through, in order."""
    att = chain.new_attachment()
    trace = lab.root / f"trace-{att.container_id}"
    try:
        if command == "ADD":
            add(lab, att, **{faults.TRACE_ENV: str(trace)})
            delete(lab, att)
        else:
            add(lab, att)
            delete(lab, att, **{faults.TRACE_ENV: str(trace)})
    finally:
        chain.discard(att)
    lines = trace.read_text().split() if trace.exists() else []
    trace.unlink(missing_ok=True)
    return lines


@dataclass
class Case:
    chain: str
    command: str
    point: str
    agent: bool  # the injected call went to the agent
    del_via_agent: bool  # the cleanup went to the agent (restarted if the fault killed it)
    cleanup: str = "DEL"  # or GC
    killed: bool = False
    agent_killed: bool = False
    error: str = ""  # how the injected call failed, as the runtime saw it
    problems: list[str] = field(default_factory=list)  # leaks, wedges, failed cleanups
    seconds: float = 0.0

    def describe(self) -> str:
        via = "agent" if self.agent else "process"
        return (
            f"{self.chain} {self.command} kill at {self.point} "
            f"({via}; {self.cleanup} via {'agent' if self.del_via_agent else 'process'})"
        )


def crash_case(
    lab: Lab,
    chain: Chain,
    point: str,
    command: str = "ADD",
    agent: bool = False,
    del_via_agent: bool = False,
    cleanup: str = "DEL",
) -> Case:
    """Kill `command` at `point`, clean up as a runtime does, and compare the host before and after.

    `cleanup` is "DEL", or "GC": the container goes away without a DEL (its namespace is
    deleted, unless the chain lends it a device) and the runtime's GC (`pycni gc`) runs, with
    the chain's resident containers as the valid ones."""
    case = Case(chain.kind, command, point, agent, del_via_agent, cleanup)
    started = time.monotonic()
    att = chain.new_attachment()
    trace = lab.root / f"trace-{att.container_id}"
    try:
        places = places_of(att)
        before = hoststate.take(places)
        if agent or del_via_agent:
            lab.agent.ensure()
        fault = {faults.FAULT_ENV: point, faults.TRACE_ENV: str(trace)}
        try:
            if command == "ADD":
                add(lab, att, agent, **fault)
            else:
                add(lab, att, agent)
                delete(lab, att, agent, **fault)
        except CNIError as err:
            case.error = f"code {err.code}: {err.msg}"
        case.killed = trace.exists() and "killed " in trace.read_text()
        case.agent_killed = agent and case.killed and not lab.agent.alive()
        if case.killed and agent and not case.agent_killed:
            case.problems.append("the fault point was reached in the agent, but the agent still runs")
        if case.killed and not case.error and not (agent and command == "DEL"):  # the launcher repeats a lost DEL
            case.problems.append(f"{command} was killed but the runtime saw it succeed")
        if "timed out" in case.error or "did not finish" in case.error:
            case.problems.append(f"wedged: {case.error}")
        if del_via_agent:
            lab.agent.ensure()  # the restarted agent serves the cleanup
        if cleanup == "GC":
            case.problems += collect(lab, chain, att, del_via_agent)
        else:
            try:
                delete(lab, att, del_via_agent)
            except CNIError as err:
                case.problems.append(f"DEL after the crash failed: code {err.code}: {err.msg}")
        case.problems += hoststate.difference(before, hoststate.take(places))
    finally:
        chain.discard(att)
        trace.unlink(missing_ok=True)
        case.seconds = time.monotonic() - started
    return case


def collect(lab: Lab, chain: Chain, att: Attachment, agent: bool) -> list[str]:
    """The container is gone without a DEL; the runtime's GC runs (the residents are valid)."""
    if not chain.lends_devices:
        subprocess.run(["ip", "netns", "del", att.ns.name], capture_output=True, check=False)
    valid = [(r.container_id, r.ifname) for r in chain.residents]
    errors = lab.runtime(lab.env(chain, agent)).gc_network_list(att.net(), GCArgs(valid_attachments=valid))
    return [f"GC failed: code {err.code}: {err.msg}" for err in errors]


@contextlib.contextmanager
def resident(lab: Lab, chain: Chain) -> Any:
    """A container that stays attached while the cases run (a node is never empty), so that what
    a network shares (its bridge, tables and chains) is there before and after each case."""
    att = chain.new_attachment()
    try:
        add(lab, att)
        chain.residents.append(att)
        yield att
    finally:
        try:
            delete(lab, att)
        finally:
            chain.discard(att)
            if att in chain.residents:
                chain.residents.remove(att)
