"""Our plugins as containerd's CNI: Debian's containerd 1.6 with its CRI plugin runs pod
sandboxes with port mappings and bandwidth annotations on the seed's chains.

containerd's CRI passes capabilities as Go structs without JSON tags spell them
(`{"HostPort": 8080, "ContainerPort": 80, ...}`, `{"IngressRate": ..., "IngressBurst":
4294967295, ...}`), which the reference plugins read through encoding/json's
case-insensitive keys. containerd runs in this test run's private namespace (scripts/
in-netns.sh, where /run/containerd, /run/netns and /var/lib/cni are private), with its
root, state, socket and CNI directories under the test's temporary directory, our
launchers as its CNI bin directory, and a pause image made here from busybox-static;
the CRI client is tests/interop/cri.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pycni.plugins.meta.bandwidth import ifb_name

from ..conftest import NetNS, delete_link, unique, unique_subnet, unique_subnet6
from ..plugins.main.test_calico import calico_conf, endpoints, pool_env
from ..plugins.meta.conftest import ask, bridge_conf, free_port, links, nft_mentions
from .cri import RuntimeClient

pytestmark = pytest.mark.reference

BUSYBOX = "/bin/busybox"
PAUSE_IMAGE = "docker.io/pycni/pause:test"
RATE = 1_000_000  # "1M" in the bandwidth annotations: bits per second
MAX_UINT32 = 4294967295  # containerd's burst when the pod names none


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def pause_image(path: Path) -> None:
    """An OCI image archive whose one process sleeps (busybox-static), named PAUSE_IMAGE."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        tar.add(BUSYBOX, arcname="bin/busybox")
        info = tarfile.TarInfo("bin/sleep")
        info.type, info.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(info)
    blobs: dict[str, bytes] = {}
    layer_desc = _blob(blobs, layer.getvalue())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = _blob(blobs, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer_desc}],
    }
    manifest_desc = _blob(blobs, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "annotations": {"io.containerd.image.name": PAUSE_IMAGE, "org.opencontainers.image.ref.name": "test"},
            }
        ],
    }
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(), "index.json": json.dumps(index).encode()}
    files.update({f"blobs/sha256/{d.split(':')[1]}": data for d, data in blobs.items()})
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@dataclass
class Containerd:
    base: Path
    socket: str
    conf_dir: Path
    proc: subprocess.Popen[bytes]
    cri: RuntimeClient

    def shims(self) -> list[int]:
        """The shim processes this containerd started (they name its socket)."""
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"containerd-shim-runc-v2") and self.socket.encode() in cmdline:
                found.append(int(pid))
        return found


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory, plugin_dir: Path) -> Iterator[Containerd]:
    if not shutil.which("containerd") or not os.path.exists(BUSYBOX):
        pytest.fail("containerd and busybox-static are needed: run `make test`, which installs them")
    base = tmp_path_factory.mktemp("containerd")
    conf_dir = base / "net.d"
    conf_dir.mkdir()
    socket = str(base / "containerd.sock")
    (base / "config.toml").write_text(
        f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  enable_unprivileged_icmp = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{plugin_dir}"
    conf_dir = "{conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
"""
    )
    env = dict(os.environ, PYCNI_LOG_FILE=str(base / "plugins.log"), **pool_env(unique_subnet(24), unique_subnet6()))
    env["CALICO_IPV6POOL_CIDR"] = env["CALICO_IPV6POOL_CIDR"].replace("/64", "/48")
    log = open(base / "containerd.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=log, stderr=log, env=env)
    cri = RuntimeClient(socket)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                cri.call("Version", version="v1", timeout=2)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((base / "containerd.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        archive = base / "pause.tar"
        pause_image(archive)
        subprocess.run(
            ["ctr", "--address", socket, "--namespace", "k8s.io", "images", "import", "--snapshotter", "native", str(archive)],
            check=True,
            capture_output=True,
        )
        yield Containerd(base, socket, conf_dir, proc, cri)
    finally:
        cri.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for pid in Containerd(base, socket, conf_dir, proc, cri).shims():  # none after RemovePodSandbox
            os.kill(pid, signal.SIGKILL)


META = [{"type": "portmap", "capabilities": {"portMappings": True}}, {"type": "bandwidth", "capabilities": {"bandwidth": True}}]


def calico_conflist(name: str, state: Path) -> dict[str, Any]:
    main = calico_conf(state, log_level="info")
    del main["cniVersion"], main["name"]
    return {"cniVersion": "1.0.0", "name": name, "plugins": [main, *META]}


def qdiscs(dev: str) -> list[dict[str, Any]]:
    out = subprocess.run(["tc", "-j", "qdisc", "show", "dev", dev], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out or "[]"))


@pytest.mark.parametrize("chain", ["bridge", "calico"])
def test_containerd_runs_pods_with_port_mappings_and_bandwidth(
    chain: str, containerd: Containerd, tmp_path: Path, client_ns: Callable[[], Any], tcp_server: Callable[..., Any]
) -> None:
    name, bridge = unique("pct-ctrd-", 20), unique("pctbr")
    state = tmp_path / "calico"
    state.mkdir()
    if chain == "bridge":
        conf = bridge_conf(name, bridge, unique_subnet(), None, tmp_path / "ipam", META)
    else:
        conf = calico_conflist(name, state)
    conflist = containerd.conf_dir / "10-pycni.conflist"
    conflist.write_text(json.dumps(conf))
    client = client_ns()
    host_port = free_port()
    pod_config = {
        "metadata": {"name": unique("web-", 12), "uid": unique("uid-", 20), "namespace": "default", "attempt": 0},
        "hostname": "web",
        "port_mappings": [{"protocol": 0, "container_port": 80, "host_port": host_port}],
        "annotations": {"kubernetes.io/ingress-bandwidth": "1M", "kubernetes.io/egress-bandwidth": "1M"},
        "linux": {"security_context": {"namespace_options": {"network": 0, "pid": 0, "ipc": 0}}},
    }
    sandbox = ""
    try:
        # containerd loads the configuration when it changes: the first pods may find none yet.
        deadline = time.monotonic() + 30
        while True:
            try:
                sandbox = containerd.cri.call("RunPodSandbox", config=pod_config).pod_sandbox_id
                break
            except Exception as exc:
                if "cni config" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        status = containerd.cri.call("PodSandboxStatus", pod_sandbox_id=sandbox, verbose=True)
        assert status.status.state == 0, status  # SANDBOX_READY
        pod_ip = status.status.network.ip
        info = json.loads(status.info["info"])
        netns_path = next(n["path"] for n in info["runtimeSpec"]["linux"]["namespaces"] if n["type"] == "network")
        pod_ns = NetNS(os.path.basename(netns_path))
        # The pod got its address.
        addresses = [a["local"] for link in pod_ns.ip_json("addr", "show", "eth0") for a in link["addr_info"]]
        assert pod_ip in addresses, (pod_ip, addresses)
        # The host port forwards to the pod (containerd passed {"HostPort": ..., "ContainerPort": ...}).
        tcp_server(pod_ns, 80)
        assert ask(client.host_address, host_port, client.ns) == client.address
        # The limit applies: containerd passed {"IngressRate": 1000000, "IngressBurst": 4294967295, ...}.
        cni_result = info["cniResult"]["Interfaces"]
        host_veth = next(n for n, i in cni_result.items() if n not in ("eth0", "lo", bridge) and not n.startswith("bwp"))
        ifb = ifb_name(name, sandbox, "eth0")
        for dev in (host_veth, ifb):
            (tbf,) = [q for q in qdiscs(dev) if q["kind"] == "tbf"]
            assert tbf["options"]["rate"] == RATE // 8, (dev, tbf)
        assert ifb in links()
        # Stopping and removing the sandbox leaves nothing.
        containerd.cri.call("StopPodSandbox", pod_sandbox_id=sandbox)
        containerd.cri.call("RemovePodSandbox", pod_sandbox_id=sandbox)
        removed, sandbox = sandbox, ""
        assert not {host_veth, ifb} & links()
        assert not os.path.exists(netns_path)
        assert nft_mentions(removed) == []
        assert (
            not [f for f in os.listdir("/var/lib/cni/results") if removed in f] if os.path.isdir("/var/lib/cni/results") else True
        )
        if chain == "bridge":
            assert [f for f in os.listdir(tmp_path / "ipam" / name) if f[0].isdigit()] == []
        else:
            assert endpoints(state) == []
        assert containerd.cri.call("ListPodSandbox").items == []
        assert containerd.shims() == []
    finally:
        if sandbox:
            containerd.cri.call("StopPodSandbox", pod_sandbox_id=sandbox)
            containerd.cri.call("RemovePodSandbox", pod_sandbox_id=sandbox)
        conflist.unlink()
        delete_link(bridge)
