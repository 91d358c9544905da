"""`make bench`: pycni against Debian's Go reference plugins, side by side, in one run.

    python bench/run.py [--rounds 20] [--attachments 500,2000] [--concurrency 256]
                        [--only chain,scale,concurrent,calico,ondemand] [--smoke] [--no-readme] [--profile DIR]

Scenarios (each in a private host namespace, see lab.py):
  chain       ADD and DEL of bridge + host-local + portmap + bandwidth driven by one
              runtime (pycni.runtime), for the reference, ours through the agent and
              ours without it; peak memory of the launchers.
  scale       ADD and DEL on an empty host and with each of --attachments already
              there, bridge and calico chains, through the agent and standalone
              (bench/flatcost.py).
  concurrent  --concurrency simultaneous ADDs into one host-local range: wall time,
              and no address given twice.
  calico      calico + calico-ipam + portmap + bandwidth with the embedded store and
              with etcd (there is no Go calico to compare with: ours only).
  ondemand    the agent started on demand: the first chain call, launchers' memory,
              --concurrency ADDs racing to start it (bench/ondemand.py).
Every figure is the median of --rounds rounds, after two warm-up rounds. Which of
our plugins exist is asked of `pycni plugins list`; a scenario whose plugins are
missing measures the reference alone and says what is missing. The table goes to
stdout and into bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flatcost
import lab
import ondemand
import report

from pycni.runtime import CNIConfig, RuntimeConf
from pycni.spec.config import NetworkConfigList
from pycni.spec.errors import CNIError

SCENARIOS = ("chain", "scale", "concurrent", "calico", "ondemand")
NEEDS = {
    "chain": ["bridge", "host-local", "portmap", "bandwidth"],
    "scale": ["bridge", "host-local", "portmap", "bandwidth"],  # and calico's, for its chain
    "concurrent": ["host-local"],
    "calico": ["calico", "calico-ipam", "portmap", "bandwidth"],
    "ondemand": ["bridge", "host-local", "portmap", "bandwidth"],
}
WARMUP = 2
BANDWIDTH = {"ingressRate": 10_000_000, "ingressBurst": 100_000, "egressRate": 10_000_000, "egressBurst": 100_000}


# -- one chain, one variant ------------------------------------------------------------


class Chain:
    """A network of one variant, driven by pycni's runtime as containerd drives libcni."""

    def __init__(self, run_dir: Path, variant: lab.Variant, conf: dict[str, Any], args: list[tuple[str, str]] | None = None):
        self.variant = variant
        self.net = NetworkConfigList.from_bytes(json.dumps(conf).encode())
        self.cni = CNIConfig(
            [str(variant.bin_dir)],
            cache_dir=str(run_dir / "cache" / conf["name"]),
            base_env={**os.environ, **variant.env},
        )
        self.args = args or []
        self.ns_dir = run_dir / "ns" / conf["name"]

    def _rt(self, key: str, port: int) -> RuntimeConf:
        caps = {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}], "bandwidth": BANDWIDTH}
        args = [(k, v.replace("{key}", key)) for k, v in self.args]
        return RuntimeConf(
            container_id=f"bench-{key}", netns=str(self.ns_dir / key), ifname="eth0", args=args, capability_args=caps
        )

    def add(self, key: str, port: int) -> float:
        """Create the container's namespace (not timed) and ADD it; the seconds ADD took."""
        lab.make_netns(self.ns_dir / key)
        started = time.perf_counter()
        self.cni.add_network_list(self.net, self._rt(key, port))
        return time.perf_counter() - started

    def delete(self, key: str, port: int) -> float:
        started = time.perf_counter()
        try:
            self.cni.del_network_list(self.net, self._rt(key, port))
        finally:
            elapsed = time.perf_counter() - started
            lab.drop_netns(self.ns_dir / key)
        return elapsed


def bridge_chain(name: str, bridge: str, subnet: str, data_dir: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        ],
    }


def chains_for(run_dir: Path, names: list[str], tag: str, octet: int) -> dict[str, Chain]:
    """The variants' chains: one bridge network for the reference and one for ours
    (both of our variants use it: they run the same plugins), each with its own
    bridge, /16, IPAM store and result cache."""
    all_variants = lab.variants(run_dir)
    out = {}
    for name in names:
        impl = "o" if all_variants[name].ours else "r"
        network = f"pcb{tag}{impl}"
        subnet = f"10.{octet + (1 if impl == 'o' else 0)}.0.0/16"
        conf = bridge_chain(network, network, subnet, run_dir / "ipam")
        out[name] = Chain(run_dir, all_variants[name], conf)
    return out


def timed_rounds(chains: dict[str, Chain], rounds: int, port_base: int, tag: str) -> dict[str, dict[str, Any]]:
    """ADD then DEL a fresh container for every variant, round after round (variants
    interleaved so that a change in the machine's load hits them all alike)."""
    stats: dict[str, dict[str, Any]] = {name: {"add": [], "del": []} for name in chains}
    failed: dict[str, str] = {}
    for number in range(WARMUP + rounds):
        order = list(chains)[number % len(chains) :] + list(chains)[: number % len(chains)]
        for name in order:
            if name in failed:
                continue
            chain = chains[name]
            key = f"{tag}{number}{name[0]}"
            port = port_base + number
            try:
                add = chain.add(key, port)
            except CNIError as err:
                failed[name] = f"ADD failed: {err}"
                with contextlib.suppress(CNIError):
                    chain.delete(key, port)
                continue
            try:
                delete = chain.delete(key, port)
            except CNIError as err:
                failed[name] = f"DEL failed: {err}"
                continue
            if number >= WARMUP:
                stats[name]["add"].append(add)
                stats[name]["del"].append(delete)
    out: dict[str, dict[str, Any]] = {}
    for name, samples in stats.items():
        add, delete = lab.median_ms(samples["add"]), lab.median_ms(samples["del"])
        both = [a + d for a, d in zip(samples["add"], samples["del"], strict=True)]
        out[name] = {"add": add, "del": delete, "total": lab.median_ms(both), "rounds": len(both), "error": failed.get(name)}
    return out


# -- scenarios (each runs inside its own host namespace) ------------------------------------


def ours_usable(available: list[str], scenario: str) -> tuple[bool, str]:
    missing = [t for t in NEEDS[scenario] if t not in available]
    if not missing:
        return True, ""
    return False, f"ours skipped: no {', '.join(missing)} in this installation (pycni plugins list: {', '.join(available)})"


@contextlib.contextmanager
def maybe_agent(run_dir: Path, wanted: bool) -> Iterator[lab.Agent | None]:
    if not wanted:
        yield None
        return
    with lab.running_agent(run_dir) as agent:
        yield agent


def phase_chain(run_dir: Path, params: dict[str, Any], available: list[str]) -> dict[str, Any]:
    usable, note = ours_usable(available, "chain")
    names = ["reference", "agent", "in-process"] if usable else ["reference"]
    chains = chains_for(run_dir, names, "c", 101)
    with maybe_agent(run_dir, usable) as agent:
        result: dict[str, Any] = {"variants": timed_rounds(chains, params["rounds"], 30000, "c"), "note": note}
        result["memory"] = launcher_memory(run_dir, chains, agent)
    return result


def launcher_memory(run_dir: Path, chains: dict[str, Chain], agent: lab.Agent | None) -> dict[str, Any]:
    """Peak RSS of every plugin process of one more ADD and DEL per variant, each run
    under bench/rss.py (which records its child's peak)."""
    out: dict[str, Any] = {}
    for name, chain in chains.items():
        record = run_dir / f"rss-{name}.txt"
        wrap_dir = run_dir / f"rss-{name}"
        wrap_dir.mkdir(exist_ok=True)
        for plugin in os.listdir(chain.variant.bin_dir):
            wrapper = wrap_dir / plugin
            real = chain.variant.bin_dir / plugin
            wrapper.write_text(f"#!/bin/sh\nexec {lab.PYTHON} -IS {lab.REPO / 'bench' / 'rss.py'} {record} {plugin} {real}\n")
            wrapper.chmod(0o755)
        measured = Chain(run_dir, lab.Variant(name, chain.variant.label, wrap_dir, chain.variant.env), _conf_of(chain))
        key = f"rss{name[0]}"
        try:
            measured.add(key, 39000)
        except CNIError as err:
            out[name] = {"error": str(err)}
        with contextlib.suppress(CNIError):
            measured.delete(key, 39000)
        if name in out:
            continue
        peaks: dict[str, int] = {}
        for line in record.read_text().splitlines():
            plugin, kib = line.split()
            peaks[plugin] = max(peaks.get(plugin, 0), int(kib))
        out[name] = {"peak_kib": max(peaks.values()), "by_plugin": peaks}
    if agent is not None:
        out["agent process"] = {"peak_kib": agent.peak_rss_kib(), "rss_kib": agent.rss_kib()}
    return out


def _conf_of(chain: Chain) -> dict[str, Any]:
    return {"cniVersion": chain.net.cni_version, "name": chain.net.name, "plugins": chain.net.plugins}


def phase_concurrent(run_dir: Path, params: dict[str, Any], available: list[str]) -> dict[str, Any]:
    usable, note = ours_usable(available, "concurrent")
    names = ["reference", "agent", "in-process"] if usable else ["reference"]
    all_variants = lab.variants(run_dir)
    out: dict[str, Any] = {}
    with maybe_agent(run_dir, usable):
        for index, name in enumerate(names):
            walls, duplicates, errors = [], 0, []
            for number in range(WARMUP + params["rounds"]):
                wall, addresses, failures = concurrent_adds(run_dir, all_variants[name], params["concurrency"], index, number)
                errors.extend(failures)
                duplicates += len(addresses) - len(set(addresses))
                if number >= WARMUP:
                    walls.append(wall)
            out[name] = lab.adds_summary(walls, duplicates, errors)
    return {"variants": out, "note": note}


def concurrent_adds(
    run_dir: Path, variant: lab.Variant, count: int, index: int, number: int
) -> tuple[float, list[str], list[str]]:
    """`count` host-local ADDs started at once into one fresh range; (wall seconds, addresses, errors)."""
    data_dir = run_dir / "conc" / f"{variant.name}-{number}"
    conf = {
        "cniVersion": "1.0.0",
        "name": f"pcconc{index}",
        "type": "bridge",
        "ipam": {
            "type": "host-local",
            # A /22: room for 256 ADDs and more (a /24 has 253 addresses).
            "ranges": [[{"subnet": f"10.{150 + index}.{number % 60 * 4}.0/22"}]],
            "dataDir": str(data_dir),
        },
    }
    stdin = json.dumps(conf).encode()
    barrier = threading.Barrier(count + 1)  # and this thread, which starts the clock
    addresses: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        env = {
            **os.environ,
            **variant.env,
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": f"conc-{number}-{i}",
            "CNI_NETNS": "/run/pycni-bench-none",  # host-local never enters it
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(variant.bin_dir),
        }
        barrier.wait()
        proc = subprocess.run([str(variant.bin_dir / "host-local")], input=stdin, capture_output=True, env=env, check=False)
        with lock:
            if proc.returncode == 0:
                addresses.extend(ip["address"] for ip in json.loads(proc.stdout)["ips"])
            else:
                errors.append(proc.stdout.decode(errors="replace").strip() or proc.stderr.decode(errors="replace"))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    lab.remove_tree(data_dir)
    return wall, addresses, errors


CALICO_POOL = "10.77.0.0/16"


def calico_chain(run_dir: Path, store: str, endpoints: str) -> dict[str, Any]:
    """The seed's 10-calico.conflist (calico, portmap, bandwidth), filled in for this machine."""
    calico: dict[str, Any] = {
        "type": "calico",
        "log_level": "info",
        "log_file_path": str(run_dir / "calico" / "cni.log"),
        "nodename_file": str(run_dir / "calico" / "nodename"),  # what calico/node writes
        "mtu": 1450,
        "ipam": {"type": "calico-ipam"},
        "policy": {"type": "k8s"},
        "kubernetes": {"kubeconfig": str(run_dir / "calico" / "kubeconfig")},
        "datastore_path": str(run_dir / "calico" / "calico.db"),
        "journal_dir": str(run_dir / "calico" / "journal"),
    }
    if store == "etcd":
        calico.update(datastore_type="etcdv3", etcd_endpoints=endpoints)
    else:
        calico["datastore_type"] = "embedded"
    return {
        "cniVersion": "1.0.0",
        "name": f"pccal{store}",
        "plugins": [
            calico,
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        ],
    }


@contextlib.contextmanager
def running_etcd(run_dir: Path) -> Iterator[str]:
    """Debian's etcd on this host namespace's loopback."""
    client, peer = "http://127.0.0.1:23790", "http://127.0.0.1:23800"
    argv = ["etcd", "--name", "bench", "--data-dir", str(run_dir / "etcd"), "--log-level", "error"]
    argv += ["--listen-client-urls", client, "--advertise-client-urls", client]
    argv += ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"bench={peer}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["etcdctl", "--endpoints", client, "endpoint", "health"], capture_output=True).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("etcd did not start")
            time.sleep(0.2)
        yield client
    finally:
        proc.terminate()
        proc.wait(30)


def phase_calico(run_dir: Path, params: dict[str, Any], available: list[str]) -> dict[str, Any]:
    usable, note = ours_usable(available, "calico")
    if not usable:
        return {"note": note + "; there is no Go calico to measure instead", "stores": {}}
    (run_dir / "calico").mkdir(exist_ok=True)
    (run_dir / "calico" / "kubeconfig").write_text("# not used: pycni has no Kubernetes API\n")
    (run_dir / "calico" / "nodename").write_text("bench-node")
    os.environ["CALICO_IPV4POOL_CIDR"] = CALICO_POOL  # the default pool calico-ipam creates
    all_variants = lab.variants(run_dir)
    stores: dict[str, Any] = {}
    with lab.running_agent(run_dir):
        for store in ("embedded", "etcd"):
            context = running_etcd(run_dir) if store == "etcd" else contextlib.nullcontext("")
            with context as endpoints:
                conf = calico_chain(run_dir, store, endpoints)
                args = [("K8S_POD_NAMESPACE", "bench"), ("K8S_POD_NAME", "pod-{key}"), ("K8S_POD_INFRA_CONTAINER_ID", "{key}")]
                chains = {name: Chain(run_dir, all_variants[name], conf, args) for name in ("agent", "in-process")}
                stores[store] = timed_rounds(chains, params["rounds"], 33000 + 1000 * len(stores), store[0])
    return {"stores": stores, "note": "there is no Go calico on this machine: ours through the agent against ours without it"}


PHASES: dict[str, Callable[[Path, dict[str, Any], list[str]], dict[str, Any]]] = {
    "chain": phase_chain,
    "scale": flatcost.phase_scale,
    "concurrent": phase_concurrent,
    "calico": phase_calico,
    "ondemand": ondemand.phase_ondemand,
}


# -- the orchestrator ------------------------------------------------------------------------


def run_phase(run_dir: Path, phase: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one phase in a fresh host namespace, and destroy that namespace after it."""
    host = lab.host_namespace(run_dir / "hosts" / f"{phase}-{params.get('impl', '')}")
    try:
        argv = [lab.PYTHON, __file__, "--phase", phase, "--run-dir", str(run_dir), "--params", json.dumps(params)]
        proc = subprocess.run(lab.in_namespace(host, argv), stdout=subprocess.PIPE, check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            lab.log(f"bench: the {phase} phase failed (exit {proc.returncode})")
            return {"error": f"the {phase} phase failed (exit {proc.returncode}): see the messages of the run"}
        return dict(json.loads(proc.stdout.decode().strip().splitlines()[-1]))
    finally:
        for mount in sorted((run_dir / "ns").glob("*/*")):
            lab.drop_netns(mount)
        lab.drop_netns(host)
        lab.remove_tree(run_dir / "ns")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--attachments", default="500,2000", help="comma-separated sizes of the scale scenario")
    parser.add_argument("--scale-chains", default=",".join(flatcost.IMPLS), help="scale: which of reference,ours,calico")
    parser.add_argument("--profile", default="", help="scale: profile the agent's calls into this directory (bench/flatcost.py)")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--smoke", action="store_true", help="one round, 3 attachments, 4 concurrent ADDs: does it run?")
    parser.add_argument("--no-readme", action="store_true", help="print the table only")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.phase:  # inside a host namespace, started by the orchestrator below
        params = json.loads(opts.params)
        result = PHASES[opts.phase](Path(opts.run_dir), params, params["available"])
        print(lab.dump(result))
        return 0
    if os.geteuid() != 0:
        print("bench: run as root (it creates namespaces, bridges and firewall rules)", file=sys.stderr)
        return 1
    if opts.smoke:
        opts.rounds, opts.attachments, opts.concurrency = 1, "3", 4
    wanted = [s for s in opts.only.split(",") if s]
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    run_dir = Path(tempfile.mkdtemp(prefix="pycni-bench-", dir="/run"))
    available = lab.our_plugins()
    sizes = [int(n) for n in opts.attachments.split(",") if n]
    params = {"rounds": opts.rounds, "sizes": sizes, "concurrency": opts.concurrency, "available": available}
    params["profile"] = opts.profile
    results: dict[str, Any] = {"machine": lab.machine(), "params": params, "scenarios": {}}
    started = time.monotonic()
    try:
        for scenario in wanted:
            lab.log(f"bench: {scenario}...")
            if scenario == "scale":
                results["scenarios"]["scale"] = {
                    impl: run_phase(run_dir, "scale", {**params, "impl": impl}) for impl in opts.scale_chains.split(",")
                }
            else:
                results["scenarios"][scenario] = run_phase(run_dir, scenario, params)
    finally:
        lab.remove_tree(run_dir)
    results["machine"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results["seconds"] = round(time.monotonic() - started)
    text = report.render(results)
    print(text)
    if not opts.no_readme:
        report.write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
