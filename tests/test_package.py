"""pycni as a user installs it: a wheel built from a copy of the checkout, installed with the
core dependencies only (requirements.lock's versions) into a fresh virtualenv outside the
checkout, the copy removed; then the seed's bridge walkthrough (`make demo`) and its calico
conflist (written from the seed's template by `pycni install-cni`) run from that virtualenv
alone, and what needs an extra says which."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .calico.test_acceptance import seed_conflist
from .conftest import run_plugin, unique, unique_subnet

ROOT = Path(__file__).resolve().parents[1]
PYTHON = os.path.realpath(sys.executable)
CHECKOUT = ("src", "pyproject.toml", "README.md", "LICENSE")


def _run(argv: list[Any], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env={**env, **kwargs.pop("env", {})}, capture_output=True,
                          text=True, timeout=600, check=False, **kwargs)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The directory holding `venv` (pycni from its wheel, core dependencies only)."""
    base = tmp_path_factory.mktemp("package")
    checkout = base / "checkout"
    checkout.mkdir()
    for name in CHECKOUT:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, checkout / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", base / "dist", checkout], base)
    shutil.rmtree(checkout)
    (wheel,) = (base / "dist").glob("pycni-*.whl")
    _run([PYTHON, "-m", "venv", base / "venv"], base)
    # Offline (the tests' namespace has no network): the core dependencies' wheels `make setup`
    # fetched at requirements.lock's versions.
    pip = [base / "venv" / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "--no-index"]
    _run([*pip, "--find-links", ROOT / ".venv" / "wheelhouse", "-c", ROOT / "requirements.lock", wheel], base)
    yield base


def test_the_core_needs_only_pyroute2_and_nftables(installed: Path) -> None:
    listing = "import importlib.metadata as m, json; print(json.dumps([d.metadata['Name'] for d in m.distributions()]))"
    listed = _run([installed / "venv" / "bin" / "python", "-c", listing], installed).stdout
    names = {name.lower() for name in json.loads(listed)} - {"pip", "setuptools"}
    assert names == {"pycni", "pyroute2", "pip-nftables"}
    bin_dir = installed / "bin"
    _run([installed / "venv" / "bin" / "pycni", "plugins", "install", bin_dir], installed)
    launcher = (bin_dir / "bridge").read_text()
    assert str(installed / "venv") in launcher and str(ROOT) not in launcher


def test_the_seed_bridge_walkthrough_runs_from_the_installed_package(installed: Path) -> None:
    """`make demo`'s script, with its `.venv` the fresh virtualenv, in a stand-in host of its own."""
    demo = installed / "demo"
    (demo / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "demo.sh", demo / "scripts" / "demo.sh")
    (demo / ".venv").symlink_to(installed / "venv")
    out = _run([ROOT / "scripts" / "in-netns.sh", "bash", demo / "scripts" / "demo.sh"], installed).stdout
    for expected in ('"address": "10.22.0.2/16"', "3 packets transmitted, 3 received", "(CHECK passed", "demo finished"):
        assert expected in out, out


def test_the_seed_calico_conflist_runs_from_the_installed_package(installed: Path, make_netns: Any, tmp_path: Path) -> None:
    venv_bin = installed / "venv" / "bin"
    node = unique("node-", 12)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "nodename").write_text(node)  # as calico-node writes them
    (tmp_path / "lib" / "mtu").write_text("1450")
    net_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    # The seed's template, on the embedded store, with every path in tmp_path.
    embedded = {"datastore_type": "embedded", "datastore_path": str(tmp_path / "calico.db")}
    embedded |= {"nodename_file": str(tmp_path / "lib" / "nodename"), "mtu_file": str(tmp_path / "lib" / "mtu")}
    embedded |= {"journal_dir": str(tmp_path / "journal"), "ipam_lock_file": str(tmp_path / "ipam.lock")}
    template = seed_conflist()["raw"].replace('"datastore_type": "kubernetes",', json.dumps(embedded)[1:-1] + ",")
    (tmp_path / "template").write_text(template)
    install = {"CNI_NETWORK_CONFIG_FILE": str(tmp_path / "template"), "CNI_NET_DIR": str(net_dir)}
    install["CALICO_VAR_LIB_DIR"] = str(tmp_path / "lib")
    _run([venv_bin / "pycni", "install-cni", "--cni-bin-dir", bin_dir], installed, env=install)
    calico = json.loads((net_dir / "10-calico.conflist").read_text())["plugins"][0]
    assert (calico["nodename"], calico["mtu"], calico["datastore_type"]) == (node, 1450, "embedded")
    env = {"NETCONFPATH": str(net_dir), "CNI_PATH": str(bin_dir), "CNI_CACHE_DIR": str(tmp_path / "cache")}
    env |= {"CALICO_IPV4POOL_CIDR": unique_subnet(24), "PYCNI_LOG_FILE": str(tmp_path / "pycni.log")}
    env |= {"CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=x"}
    env["CAP_ARGS"] = json.dumps({"portMappings": [{"hostPort": 28080, "containerPort": 80, "protocol": "tcp"}]})
    ns = make_netns()
    added = json.loads(_run([venv_bin / "pycni", "add", "k8s-pod-network", ns.path], installed, env=env).stdout)
    assert added["ips"][0]["address"].endswith("/32")
    _run([venv_bin / "pycni", "del", "k8s-pod-network", ns.path], installed, env=env)
    assert ns.run("ip", "link", "show", "eth0", check=False).returncode != 0
    # What needs an extra says which.
    yaml = subprocess.run([venv_bin / "calicoctl", "get", "ippool", "-o", "yaml"], capture_output=True, text=True,
                          env={"DATASTORE_PATH": str(tmp_path / "calico.db")}, check=False)  # fmt: skip
    assert yaml.returncode == 1 and "pip install 'pycni[calico]'" in yaml.stderr, yaml.stderr
    conf = {**calico, "cniVersion": "1.0.0", "name": "pctetcd"}
    conf.update(datastore_type="etcdv3", etcd_endpoints="http://127.0.0.1:2379")
    etcd = run_plugin(bin_dir / "calico", "ADD", conf, netns=ns.path, env={"PYCNI_LOG_FILE": str(tmp_path / "pycni.log")})
    assert etcd.returncode == 1 and etcd.json["code"] == 7 and "pip install 'pycni[etcd]'" in etcd.json["msg"], etcd.stdout
    agent = [venv_bin / "pycni", "agent", "--socket", tmp_path / "a.sock", "--metrics-address", "127.0.0.1:9", "--log-file"]
    metrics = subprocess.run([*agent, tmp_path / "a.log"], capture_output=True, text=True, check=False, timeout=60)
    assert metrics.returncode == 1 and "pip install 'pycni[metrics]'" in metrics.stderr, metrics.stderr
    assert not (tmp_path / "a.sock").exists()
