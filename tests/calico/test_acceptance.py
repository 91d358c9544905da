"""The seed's 10-calico.conflist, run through `pycni add` with its portmap and bandwidth chain.

Placeholders filled (mtu 1450, a node name, a kubeconfig path), datastore_type switched
to the embedded store, and every path pointed into tmp_path. portmap and bandwidth are
Debian's Go reference plugins for now.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..conftest import SHARED, NetNS, unique, unique_subnet

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"


def seed_conflist() -> dict[str, Any]:
    """The conflist as the seed chapter prints it, placeholders and all."""
    text = (SHARED / "seed" / "000_857aebd49d814bb9.txt").read_text()
    start = text.index('"name": "k8s-pod-network"') - 2
    depth, end = 0, start
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            break
    return {"raw": text[start : end + 1]}


def filled_conflist(tmp: Path, node: str) -> dict[str, Any]:
    raw = seed_conflist()["raw"]
    raw = raw.replace("__KUBERNETES_NODE_NAME__", node).replace("__CNI_MTU__", "1450")
    raw = raw.replace("__KUBECONFIG_FILEPATH__", str(tmp / "calico-kubeconfig"))
    conf = json.loads(raw)
    calico = conf["plugins"][0]
    assert calico["datastore_type"] == "kubernetes" and calico["mtu"] == 1450
    calico.update(
        datastore_type="embedded",
        datastore_path=str(tmp / "calico.db"),
        log_file_path=str(tmp / "log" / "cni.log"),
        nodename_file=str(tmp / "nodename"),
        journal_dir=str(tmp / "journal"),
        ipam_lock_file=str(tmp / "ipam.lock"),
        mtu_file=str(tmp / "mtu"),
    )
    return conf


def pycni(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "pycni"), *argv], capture_output=True, text=True, env=env, check=False, timeout=60)


def calicoctl(env: dict[str, str], *argv: str) -> str:
    out = subprocess.run([str(VENV_BIN / "calicoctl"), *argv], capture_output=True, text=True, env=env, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.reference
def test_seed_conflist_gives_working_pods(plugin_dir: Path, reference_dir: Path, make_netns: Any, tmp_path: Path) -> None:
    node = unique("node-", 12)
    (tmp_path / "nodename").write_text(node)
    (tmp_path / "calico-kubeconfig").write_text("# not used: pycni has no Kubernetes API\n")
    netdir = tmp_path / "net.d"
    netdir.mkdir()
    (netdir / "10-calico.conflist").write_text(json.dumps(filled_conflist(tmp_path, node), indent=2))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("calico", "calico-ipam"):
        os.symlink(plugin_dir / name, bin_dir / name)
    for name in ("portmap", "bandwidth"):
        os.symlink(reference_dir / name, bin_dir / name)
    pool = unique_subnet(24)
    base = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "NETCONFPATH": str(netdir),
        "CNI_PATH": str(bin_dir),
        "CNI_CACHE_DIR": str(tmp_path / "cache"),
        "CALICO_IPV4POOL_CIDR": pool,
        "DATASTORE_PATH": str(tmp_path / "calico.db"),
        "PYCNI_LOG_FILE": str(tmp_path / "pycni.log"),
    }
    pods: list[tuple[NetNS, str, dict[str, Any]]] = []
    host_link = unique("pcth", 12)
    host_ip = pool.rsplit(".", 1)[0] + ".250"  # inside our own subnet: traffic never leaves the machine
    try:
        for i, port in enumerate((unique_port(), unique_port())):
            ns = make_netns()
            env = dict(
                base,
                CNI_ARGS=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-{i};K8S_POD_INFRA_CONTAINER_ID=x",
                CAP_ARGS=json.dumps(
                    {
                        "portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}],
                        "bandwidth": {
                            "ingressRate": 10_000_000,
                            "ingressBurst": 100_000,
                            "egressRate": 10_000_000,
                            "egressBurst": 100_000,
                        },
                    }
                ),
            )
            out = pycni(env, "add", "k8s-pod-network", ns.path)
            assert out.returncode == 0, out.stderr
            pods.append((ns, f"web-{i}", json.loads(out.stdout)))
        # The host: an address of its own on a link of ours.
        subprocess.run(["ip", "link", "add", host_link, "type", "veth", "peer", "name", host_link + "p"], check=True)
        subprocess.run(["ip", "addr", "add", f"{host_ip}/32", "dev", host_link], check=True)
        subprocess.run(["ip", "link", "set", host_link, "up"], check=True)
        (a_ns, _, a_res), (_, _, b_res) = pods
        b_ip = b_res["ips"][0]["address"].split("/")[0]
        assert a_res["ips"][0]["address"].endswith("/32")
        assert a_ns.run("ping", "-c", "1", "-W", "2", host_ip, check=False).returncode == 0, "pod cannot reach the host"
        assert a_ns.run("ping", "-c", "1", "-W", "2", b_ip, check=False).returncode == 0, "pod cannot reach the other pod"
        # bandwidth shaped the host veth the calico result names.
        host_veth = a_res["interfaces"][1]["name"]
        qdisc = subprocess.run(["tc", "qdisc", "show", "dev", host_veth], capture_output=True, text=True, check=True).stdout
        assert "tbf" in qdisc
        # calicoctl shows the block and both endpoints.
        blocks = calicoctl(base, "ipam", "show", "--show-blocks")
        block_rows = [line for line in blocks.splitlines() if line.startswith("| Block")]
        assert len(block_rows) == 1 and "2 (" in block_rows[0], blocks
        assert f"| IP Pool  | {pool}" in blocks
        weps = calicoctl(base, "get", "workloadendpoint", "-A", "-o", "wide")
        lines = weps.splitlines()
        assert re.split(r"\s{3,}", lines[0].strip()) == [
            "NAMESPACE", "NAME", "WORKLOAD", "NODE", "NETWORKS", "INTERFACE", "PROFILES", "NATS",
        ]  # fmt: skip
        for _, pod, res in pods:
            name = f"{node.replace('-', '--')}-k8s-{pod.replace('-', '--')}-eth0"
            row = next(line for line in lines if name in line)
            cells = re.split(r"\s{3,}", row.strip())
            assert cells == ["default", name, pod, node, res["ips"][0]["address"], res["interfaces"][1]["name"], "kns.default"]
        log = (tmp_path / "log" / "cni.log").read_text()
        assert "Calico CNI ADD" in log and "Added veth" in log
    finally:
        subprocess.run(["ip", "link", "del", host_link], capture_output=True, check=False)
        for ns, pod, _ in pods:
            env = dict(base, CNI_ARGS=f"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID=x", CAP_ARGS="{}")
            out = pycni(env, "del", "k8s-pod-network", ns.path)
            assert out.returncode == 0, out.stderr
    after = [line for line in calicoctl(base, "ipam", "show", "--show-blocks").splitlines() if line.startswith("| Block")]
    assert len(after) == 1 and "| 0 (0%)" in after[0]  # the node keeps its (empty) affine block
    assert calicoctl(base, "get", "workloadendpoint", "-A").splitlines()[1:] == [""]


def unique_port() -> int:
    import secrets

    return 20000 + secrets.randbelow(20000)
